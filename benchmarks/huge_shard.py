"""The shard actor of benchmarks/bench_huge.py, in a module of its own so that Ray's workers import
it by name (a class defined in the benchmark's ``__main__`` would be pickled with torch's
globals, which cannot be): it makes its keys itself from a seeded generator (``fill``), so the
8 GiB of keys never pass through the driver or the object store, and exposes its search's knobs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lifelong.distributed.actor import ShardActor

CHUNK = 1 << 18  # keys made at a time


@dataclass(frozen=True)
class BenchHugeConfig:
    slots: int = 16_777_216
    key_dim: int = 128
    shards: int = 2
    batches: tuple[int, ...] = (16, 256)
    choose_k: int = 256
    classes: int = 262_144
    spread: float = 0.75
    query_noises: tuple[float, ...] = (0.1, 0.2)
    recall_queries: int = 256
    nlist: int = 16384
    nprobes: tuple[int, ...] = (2, 4, 8, 16)
    variants: tuple[str, ...] = ("exact", "bfloat16", "ivf")
    repeats: int = 3
    restart: bool = True
    seed: int = 0
    out: str = "bench_huge.json"

    def __post_init__(self):
        if min(self.slots, self.key_dim, self.shards, self.classes, self.nlist, self.repeats) < 1 \
                or not self.batches or min(self.batches) < 1:
            raise ValueError("slots, key_dim, shards, classes, nlist, repeats and batches must "
                             "be positive")
        if self.recall_queries < max(max(self.batches), 48) or self.recall_queries % self.shards:
            raise ValueError("recall_queries must cover the largest batch and 48 (the restart's "
                             "steps), and split evenly over the shards")
        if not self.nprobes or not 1 <= min(self.nprobes) <= max(self.nprobes) <= self.nlist:
            raise ValueError("nprobes must lie in [1, nlist]")
        if set(self.variants) - {"exact", "bfloat16", "ivf"} or not self.query_noises:
            raise ValueError("variants are exact, bfloat16 and ivf; query_noises non-empty")


def fill_keys(keys: torch.Tensor, values: torch.Tensor, shard: int, cfg: BenchHugeConfig) -> None:
    """Shard ``shard``'s clustered keys [n, d] and their classes [n] (the data model above)."""
    d = cfg.key_dim
    centres = F.normalize(torch.randn(cfg.classes, d,
                                      generator=torch.Generator().manual_seed(cfg.seed)), dim=1)
    gen = torch.Generator().manual_seed(cfg.seed + 1 + shard)
    for start in range(0, keys.shape[0], CHUNK):
        stop = min(keys.shape[0], start + CHUNK)
        labels = torch.randint(0, cfg.classes, (stop - start,), generator=gen)
        x = centres[labels] + cfg.spread / d ** 0.5 * torch.randn(stop - start, d, generator=gen)
        keys[start:stop] = F.normalize(x, dim=1)
        values[start:stop] = labels


class HugeShard(ShardActor):
    """A shard actor that makes its own keys (``fill``) and exposes its search's knobs."""

    def fill(self, cfg_json: str) -> float:
        cfg = BenchHugeConfig(**json.loads(cfg_json))
        start = time.perf_counter()
        shard = self.shard
        with shard.lock, torch.no_grad():
            mem = shard.memory
            fill_keys(mem.keys, mem.values, shard.index, cfg)
            mem.write_time.zero_()
            mem.clock.fill_(1)
            mem.insert_order.invalidate()
            mem.reset_search()
        return time.perf_counter() - start

    def build_index(self) -> float:
        """Seconds until the search answers once (an IVF index is trained and filled)."""
        mem, start = self.shard.memory, time.perf_counter()
        with self.shard.lock, torch.no_grad():
            mem.search.search(F.normalize(mem.keys[:1].float(), dim=1), mem.keys, mem.values, 1)
        return time.perf_counter() - start

    def set_nprobe(self, nprobe: int) -> None:
        self.shard.memory.search.nprobe = nprobe

    def scanned_bytes(self, q: np.ndarray) -> int:
        """Bytes of keys one search of q [B, d] reads here (IVF: its probed lists)."""
        search, mem = self.shard.memory.search, self.shard.memory
        if not hasattr(search, "centroids") or search.centroids is None:
            return mem.keys.numel() * mem.keys.element_size()
        probes = (torch.from_numpy(q) @ search.centroids.T).topk(search.nprobe, dim=1).indices
        cells = probes.unique().numpy()
        return int(search.lists.length[cells].sum()) * mem.keys.shape[1] * 4

    def sample(self, count: int, cfg_json: str, noise: float) -> tuple[np.ndarray, np.ndarray]:
        """``count`` queries near stored keys (the data model), with their classes (the same
        keys and directions of noise whatever ``noise``)."""
        cfg = BenchHugeConfig(**json.loads(cfg_json))
        gen = torch.Generator().manual_seed(cfg.seed + 100 + self.shard.index)
        mem = self.shard.memory
        slots = torch.randint(0, mem.num_slots, (count,), generator=gen)
        noise = torch.randn(count, cfg.key_dim, generator=gen) * noise / cfg.key_dim ** 0.5
        q = F.normalize(mem.keys[slots].float() + noise, dim=1)
        return q.numpy(), mem.values[slots].numpy()
