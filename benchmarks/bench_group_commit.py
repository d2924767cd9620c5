"""Several writers of one durable 2-shard memory: shard actors that run one call at a time
(every update its own log sync) vs threaded ones (``MAX_CONCURRENCY``: updates that arrive
together share a sync, group commit), side by side in one run (issue 16, items 4 and 5).

A 2-node Ray cluster on this machine (one CPU per node, a shard actor on each, as
benchmarks/bench_sharded.py). W writers (threads of this driver, each a ``ShardedMemory`` client
with its own writer id, pipelined as training and the stream job are) each make ``steps``
memory steps at once; the table gives updates per second over all writers, each writer's
median step, and the shards' log syncs per update.

Usage:
    python benchmarks/bench_group_commit.py
    python benchmarks/bench_group_commit.py writers=[1,4] steps=100
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

import ray
import torch

from lifelong.config import config_from_args
from local_cluster import local_cluster
from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.actor import MAX_CONCURRENCY, RayShards, ShardActor


@dataclass(frozen=True)
class GroupCommitConfig:
    writers: tuple[int, ...] = (1, 4, 8)
    steps: int = 60
    slots: int = 4096
    batch: int = 16
    key_dim: int = 128
    choose_k: int = 256
    rounds: int = 3  # each case this many times, interleaved; the best round counts
    out: str = "bench_group_commit.json"

    def __post_init__(self):
        if not self.writers or min(self.writers) < 1 or min(self.steps, self.slots,
                                                            self.batch, self.rounds) < 1:
            raise ValueError("writers, steps, slots, batch and rounds must be >= 1")


def start_memory(name: str, cfg: GroupCommitConfig, storage: str,
                 concurrency: int) -> tuple[MemorySpec, RayShards]:
    spec = MemorySpec(name=name, key_dim=cfg.key_dim, num_slots=cfg.slots, num_values=1000,
                      shards=2, choose_k=cfg.choose_k, storage=storage, num_cpus=1,
                      snapshot_every=10**9, device="cpu")
    actor = ray.remote(ShardActor)
    handles = [actor.options(max_concurrency=concurrency, num_cpus=1,
                             scheduling_strategy="SPREAD").remote(spec.to_json(), i)
               for i in range(spec.shards)]
    ray.get([h.ping.remote() for h in handles])
    return spec, RayShards(handles, memory=name)


def run_writers(spec: MemorySpec, shards: RayShards, writers: int,
                cfg: GroupCommitConfig) -> dict:
    """``writers`` clients writing at once; updates/s, median step ms, syncs per update."""
    syncs_before = sum(s["log_syncs"] for s in shards.call("status", [()] * spec.shards))
    barrier = threading.Barrier(writers + 1)
    steps: list[float] = []
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            client = ShardedMemory(spec, shards, pipelined=True)
            gen = torch.Generator().manual_seed(w)
            data = [(torch.randn(cfg.batch, cfg.key_dim, generator=gen),
                     torch.randint(0, spec.num_values, (cfg.batch,), generator=gen))
                    for _ in range(cfg.steps)]
            barrier.wait()
            for q, y in data:
                start = time.perf_counter()
                client.query(q, y)
                steps.append(time.perf_counter() - start)
            client.flush()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    updates = writers * cfg.steps
    syncs = sum(s["log_syncs"] for s in shards.call("status", [()] * spec.shards)) - syncs_before
    return {"writers": writers, "updates_per_s": updates / wall,
            "median_step_ms": statistics.median(steps) * 1e3,
            "syncs_per_update": syncs / (updates * spec.shards)}


def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_args(GroupCommitConfig, __doc__, argv,
                           "benchmarks/configs/bench_group_commit.yaml")
    storage = tempfile.mkdtemp(prefix="bench-group-commit-", dir=os.getcwd())
    variants = {"one call at a time": 1, f"threaded ({MAX_CONCURRENCY})": MAX_CONCURRENCY}
    best: dict[tuple[str, int], dict] = {}
    try:
        with local_cluster(2, cpus_per_node=2):
            memories = {name: start_memory(f"gc-{c}", cfg, storage, c)
                        for name, c in variants.items()}
            for spec, shards in memories.values():  # warm-up, not counted
                run_writers(spec, shards, 1, cfg)
            for _ in range(cfg.rounds):
                for w in cfg.writers:
                    for name, (spec, shards) in memories.items():
                        row = run_writers(spec, shards, w, cfg)
                        key = (name, w)
                        if key not in best or \
                                row["updates_per_s"] > best[key]["updates_per_s"]:
                            best[key] = {"variant": name, **row}
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    rows = [best[(name, w)] for w in cfg.writers for name in variants]
    print_table(rows, cfg)
    result = {"config": asdict(cfg), "cases": rows}
    with open(cfg.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {cfg.out}")
    return result


def print_table(rows: list[dict], cfg: GroupCommitConfig) -> None:
    print(f"\n{cfg.slots} slots, 2 durable shards on 2 Ray nodes, batch {cfg.batch}, "
          f"{cfg.steps} pipelined steps per writer, best of {cfg.rounds} rounds")
    header = (f"{'writers':>7} {'shard actors':<22} {'updates/s':>10} {'step ms p50':>11} "
              f"{'syncs/update':>12} {'vs one at a time':>16}")
    print(header)
    print("-" * len(header))
    base = {r["writers"]: r["updates_per_s"] for r in rows if r["variant"] ==
            "one call at a time"}
    for r in rows:
        print(f"{r['writers']:>7} {r['variant']:<22} {r['updates_per_s']:>10.0f} "
              f"{r['median_step_ms']:>11.2f} {r['syncs_per_update']:>12.2f} "
              f"{r['updates_per_s'] / base[r['writers']]:>15.2f}x")


if __name__ == "__main__":
    main()
