"""One-shot evaluation with the paper's protocol: N-way episodes, the memory cleared per episode.

Each episode shows every one of its N classes ``presentations`` times (a fresh random order per
round, another drawer each time). Before each step the model predicts the label from memory, then
the memory is updated with the true label. The accuracy at steps where the class was seen k
times before is the "k-shot" accuracy. The mean over episodes comes with a 95% confidence
interval 1.96 * std / sqrt(episodes) over the per-episode accuracies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lifelong.config import check_int
from lifelong.data import EpisodeSampler
from lifelong.errors import ConfigError
from lifelong.memory import Memory, MemoryConfig
from lifelong.runtime.threads import torch_threads


@dataclass(frozen=True)
class EvalSettings:
    """Which evaluation to run on the evaluation characters.

    Attributes:
        ways: N of each N-way evaluation.
        presentations: Times each class is shown per episode (6 gives 0- to 5-shot).
        episodes: Episodes per way (0: no evaluation).
        seed: Seed of the episode sampler (equal seeds give equal episodes).
        episodes_per_chunk: Episodes encoded per batch of forward passes.
        protocols: "standard" (the paper's N-way episodes over all evaluation characters)
            and/or "within-alphabet" (20-way 1-shot episodes inside one alphabet, Lake et
            al.'s harder protocol: ``within_alphabet.py``, ``episodes`` of them).
    """

    ways: tuple[int, ...] = (5, 20)
    presentations: int = 6
    episodes: int = 1000
    seed: int = 1
    episodes_per_chunk: int = 50
    protocols: tuple[str, ...] = ("standard",)

    def __post_init__(self) -> None:
        if not self.ways or any(isinstance(w, bool) or not isinstance(w, int) or w < 2
                                for w in self.ways):
            raise ConfigError(f"must be ints >= 2, got {self.ways!r}", key="ways")
        known = ("standard", "within-alphabet")
        if not self.protocols or any(p not in known for p in self.protocols) or \
                len(set(self.protocols)) != len(self.protocols):
            raise ConfigError(f"must be distinct names among {', '.join(known)}, got "
                              f"{self.protocols!r}", key="protocols")
        for name, minimum in (("presentations", 2), ("episodes", 0), ("seed", 0),
                              ("episodes_per_chunk", 1)):
            check_int(name, getattr(self, name), minimum)


@dataclass(frozen=True)
class ShotAccuracy:
    """Per-episode, per-shot accuracies of one N-way evaluation.

    Attributes:
        way: Classes per episode (N).
        per_episode: [episodes, presentations] float64; entry [e, k] is the fraction of the N
            queries of episode e that were the class's (k+1)-th presentation and were right.
    """

    way: int
    per_episode: np.ndarray = field(repr=False)

    @property
    def episodes(self) -> int:
        return self.per_episode.shape[0]

    @property
    def presentations(self) -> int:
        return self.per_episode.shape[1]

    def mean(self, shot: int) -> float:
        """Mean k-shot accuracy over episodes."""
        return float(self.per_episode[:, shot].mean())

    def ci95(self, shot: int) -> float:
        """Half-width of the 95% interval over episodes (see ``ci95``)."""
        return ci95(self.per_episode[:, shot])


def ci95(samples: np.ndarray) -> float:
    """Half-width of the 95% interval of a mean: 1.96 * std / sqrt(n) (population std)."""
    return float(1.96 * samples.std() / math.sqrt(len(samples)))


@torch.no_grad()
def embed_episodes(encoder: nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Encodes a batch of episodes in chunks.

    Args:
        x: [L, B, 1, H, W] float32 images.
        chunk: Images per forward pass.

    Returns:
        [L, B, key_dim] float32 embeddings.
    """
    flat = x.reshape(-1, *x.shape[2:])
    out = torch.cat([encoder(flat[i:i + chunk]) for i in range(0, flat.shape[0], chunk)])
    return out.reshape(x.shape[0], x.shape[1], -1)


@torch.no_grad()
def evaluate_encoder(encoder: nn.Module, images: np.ndarray, *, way: int, presentations: int,
                     episodes: int, seed: int = 0, memory: MemoryConfig = MemoryConfig(),
                     episodes_per_chunk: int = 50, progress: bool = True,
                     desc: str | None = None) -> ShotAccuracy:
    """Runs ``episodes`` N-way episodes, each against a freshly cleared memory.

    The encoder runs in eval mode (no dropout, batch-norm running statistics); its training
    mode is restored afterwards.

    Args:
        encoder: Maps [n, 1, H, W] images to [n, key_dim] embeddings.
        images: [C, n, H, W] uint8 class-major images (e.g. the evaluation split).
        way: N, classes per episode.
        presentations: Times each class is shown (k-shot needs presentations >= k + 1).
        episodes: Number of episodes.
        seed: Seed of the episode sampler.
        memory: The memory's settings; it gets one slot per step, so nothing is evicted.
        episodes_per_chunk: Episodes encoded per batch of forward passes.
        progress: Show a progress bar.

    Returns:
        The per-episode, per-shot accuracies.
    """
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes!r}")
    was_training = encoder.training
    encoder.eval()
    sampler = EpisodeSampler(images, way, presentations, seed)
    length = way * presentations
    mem: Memory | None = None
    per_episode = np.zeros((episodes, presentations))
    done = 0
    try:
        with tqdm(total=episodes, desc=desc or f"eval {way}-way", unit="ep",
                  disable=not progress, leave=False) as bar:
            while done < episodes:
                batch = min(episodes_per_chunk, episodes - done)
                ep = sampler.sample(batch)
                emb = embed_episodes(encoder, ep.x)  # [L, b, d]
                if mem is None:
                    mem = memory.build(key_dim=emb.shape[2], num_slots=length, num_values=way,
                                       seed=seed)
                with torch_threads(1):
                    _run_episodes(mem, emb, ep.y, ep.shot, way, per_episode[done:done + batch])
                done += batch
                bar.update(batch)
    finally:
        encoder.train(was_training)
    return ShotAccuracy(way=way, per_episode=per_episode)


def _run_episodes(mem: Memory, emb: torch.Tensor, y: torch.Tensor, shot: torch.Tensor, way: int,
                  out: np.ndarray) -> None:
    """Plays episodes one by one against a cleared memory; writes per-shot accuracies.

    Args:
        mem: A memory with at least L slots and ``way`` values.
        emb: [L, b, d] embeddings; y: [L, b] labels (episode e offset by e * way); shot: [L, b].
        out: [b, presentations] receives the fraction right per shot.
    """
    length, batch = y.shape
    presentations = out.shape[1]
    for b in range(batch):
        mem.clear()
        labels = y[:, b] - b * way  # [L], back to 0 .. way-1
        correct = torch.empty(length, dtype=torch.bool)
        for t in range(length):
            correct[t] = mem.query(emb[t, b:b + 1], labels[t:t + 1]).correct[0]
        counts = torch.zeros(presentations).index_add_(0, shot[:, b], correct.float())
        out[b] = (counts / way).numpy()


def accuracy_table(results: list[ShotAccuracy], shots: tuple[int, ...] | None = None) -> str:
    """A markdown table: one row per N-way evaluation, one column per shot, mean +- ci95 in %.

    Args:
        results: Evaluations to show.
        shots: Shot columns; default all presentations of the longest evaluation.
    """
    if shots is None:
        shots = tuple(range(max(r.presentations for r in results)))
    head = "| | " + " | ".join(f"{k}-shot" for k in shots) + " | episodes |"
    rule = "| --- " * (len(shots) + 2) + "|"
    rows = [head, rule]
    for r in results:
        cells = [f"{100 * r.mean(k):.2f} ± {100 * r.ci95(k):.2f}" if k < r.presentations
                 else "" for k in shots]
        rows.append(f"| {r.way}-way | " + " | ".join(cells) + f" | {r.episodes} |")
    return "\n".join(rows)
