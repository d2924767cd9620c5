"""Benchmark the sharded memory on Ray against the local memory on the same cores.

A 2-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, one CPU per node, a shard
actor on each) against ``lifelong.memory.Memory`` in the driver using the same 2 cores. For each
memory size and batch: the time of one training step of the memory (lookup + loss + backward +
update, as benchmarks/bench_memory.py), queries per second, the ratio sharded / local, and whether the
merged top-k is identical to the local one. Ray's added cost per step is measured on a tiny
memory, where search costs little: the median step over many fresh batches, local and sharded
interleaved, together with a bare round trip to every shard.

Usage:
    python benchmarks/bench_sharded.py                                # 1M and 4M slots (minutes)
    python benchmarks/bench_sharded.py slots=[65536] batches=[16] repeats=3
    python benchmarks/bench_sharded.py key_dtype=bfloat16           # compact keys in the shards
    python benchmarks/bench_sharded.py slots=[65536] batches=[16] storage_dir=/dev/shm  # no disk
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from bench_memory import BenchConfig, best_time, make_memory, memory_step
from local_cluster import local_cluster
from lifelong.config import config_from_args
from lifelong.distributed import MemorySpec, create_memory, delete_memory


@dataclass(frozen=True)
class BenchShardedConfig:
    slots: tuple[int, ...] = (1048576, 4194304)
    batches: tuple[int, ...] = (16, 256)
    key_dim: int = 128
    choose_k: int = 256
    shards: int = 2
    repeats: int = 5
    overhead_slots: int = 4096   # the tiny memory for Ray's per-step cost
    overhead_steps: int = 400    # ... its median over this many steps per mode, interleaved
    key_dtype: str = "float32"   # or bfloat16 / float16: compact keys, local and sharded
    storage_dir: str = ""        # where the shards' snapshots and logs go ("": the system's temp
                                 # dir; /dev/shm: a log whose fsync costs nothing, to tell the
                                 # disk's share from the rest)
    out: str = "bench_sharded.json"

    def __post_init__(self):
        if not self.slots or not self.batches or min(self.slots + self.batches) <= 0:
            raise ValueError("slots and batches must be non-empty lists of positive ints")
        if self.repeats < 1 or self.shards < 1 or self.overhead_steps < 1:
            raise ValueError("repeats, shards and overhead_steps must be >= 1")


def sharded_like(local, name: str, cfg: BenchShardedConfig, storage: str):
    """A sharded memory holding the local memory's state."""
    spec = MemorySpec(name=name, key_dim=cfg.key_dim, num_slots=local.num_slots,
                      num_values=local.num_values, shards=cfg.shards, choose_k=cfg.choose_k,
                      storage=storage, snapshot_every=10**9, num_cpus=1,
                      key_dtype=local.key_dtype)
    memory = create_memory(spec)
    memory.load_state_dict(local.state_dict())
    return memory


def exact_match(local, sharded, q: torch.Tensor) -> bool:
    """Identical top-k slots and predictions for the same queries (no update)."""
    a, b = local.query(q), sharded.query(q)
    return bool(torch.equal(a.slots, b.slots) and torch.equal(a.values, b.values))


def inputs(batch: int, cfg: BenchShardedConfig, num_values: int):
    gen = torch.Generator().manual_seed(batch)
    return (torch.randn(batch, cfg.key_dim, generator=gen),
            torch.randint(0, num_values, (batch,), generator=gen))


def time_pairs(local, sharded, cfg: BenchShardedConfig) -> list[dict]:
    """Exactness for every batch size first (the timed steps write, with age noise, into the two
    memories differently), then the timings."""
    exact = {b: exact_match(local, sharded, inputs(b, cfg, local.num_values)[0])
             for b in cfg.batches}
    return [time_pair(local, sharded, b, cfg, exact[b]) for b in cfg.batches]


def time_pair(local, sharded, batch: int, cfg: BenchShardedConfig, exact: bool) -> dict:
    """Local vs sharded step, the sharded one pipelined (one round trip per step, what
    training uses) and, beside it, in two rounds (search, then apply)."""
    q, labels = inputs(batch, cfg, local.num_values)
    local_s = best_time(lambda: memory_step(local, q, labels), cfg.repeats)
    sharded.pipelined = True
    sharded_s = best_time(lambda: memory_step(sharded, q, labels), cfg.repeats)
    sharded.flush()
    sharded.pipelined = False
    two_rounds_s = best_time(lambda: memory_step(sharded, q, labels), cfg.repeats)
    return {"slots": local.num_slots, "batch": batch, "local_ms": local_s * 1e3,
            "sharded_ms": sharded_s * 1e3, "two_rounds_ms": two_rounds_s * 1e3,
            "ratio": sharded_s / local_s, "local_qps": batch / local_s,
            "sharded_qps": batch / sharded_s, "exact": exact}


def step_medians(local, sharded, batch: int, cfg: BenchShardedConfig) -> dict:
    """Median ms per step of the local memory, the sharded one pipelined and the sharded one
    in two rounds, each over ``cfg.overhead_steps`` steps of fresh batches (inserts, as in a
    life-long run), interleaved in rounds of 25 steps per mode so that the machine's drift
    touches all three alike."""
    gen = torch.Generator().manual_seed(batch)
    times = {"local": [], "pipelined": [], "two_rounds": []}
    for _ in range(-(-cfg.overhead_steps // 25)):
        for mode, memory in (("local", local), ("pipelined", sharded),
                             ("two_rounds", sharded)):
            if memory is sharded:
                sharded.flush()
                sharded.pipelined = mode == "pipelined"
            for _ in range(25):
                q = torch.randn(batch, cfg.key_dim, generator=gen)
                labels = torch.randint(0, local.num_values, (batch,), generator=gen)
                start = time.perf_counter()
                memory_step(memory, q, labels)
                times[mode].append(time.perf_counter() - start)
    sharded.flush()
    return {mode: statistics.median(t) * 1e3 for mode, t in times.items()}


def cases(cfg: BenchShardedConfig, storage: str) -> tuple[list[dict], dict]:
    """Ray's cost per step on the tiny memory, then every size, on the connected cluster."""
    rows, overhead = [], {}
    bench_cfg = BenchConfig(key_dim=cfg.key_dim, choose_k=cfg.choose_k, batches=(1,))
    tiny = make_memory(cfg.overhead_slots, bench_cfg, cfg.key_dtype)
    tiny_sharded = sharded_like(tiny, "overhead", cfg, storage)
    handles = tiny_sharded.shards
    round_trip = best_time(lambda: handles.call("ping", [()] * cfg.shards), 20)
    # exactness for every batch first: the timed steps write, with age noise, into the two
    # memories differently
    exact = {b: exact_match(tiny, tiny_sharded, inputs(b, cfg, tiny.num_values)[0])
             for b in cfg.batches}
    for batch in cfg.batches:
        for _ in range(3):  # warm-up: compiled kernels, connections, caches
            memory_step(tiny, *inputs(batch, cfg, tiny.num_values))
            memory_step(tiny_sharded, *inputs(batch, cfg, tiny.num_values))
        m = step_medians(tiny, tiny_sharded, batch, cfg)
        overhead[batch] = {"local_ms": m["local"], "sharded_ms": m["pipelined"],
                           "two_rounds_ms": m["two_rounds"],
                           "added_ms": m["pipelined"] - m["local"],
                           "two_rounds_added_ms": m["two_rounds"] - m["local"],
                           "round_trip_ms": round_trip * 1e3, "exact": exact[batch]}
    delete_memory("overhead", storage)  # frees the nodes' CPUs for the next memory
    for n in tqdm(cfg.slots, desc="bench_sharded"):
        local = make_memory(n, bench_cfg, cfg.key_dtype)
        sharded = sharded_like(local, f"bench-{n}", cfg, storage)
        rows += time_pairs(local, sharded, cfg)
        delete_memory(f"bench-{n}", storage)
        del local, sharded
    return rows, overhead


def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_args(BenchShardedConfig, __doc__, argv, "benchmarks/configs/bench_sharded.yaml")
    storage = tempfile.mkdtemp(prefix="bench-sharded-", dir=cfg.storage_dir or None)
    try:
        with local_cluster(cfg.shards, cpus_per_node=1):
            rows, overhead = cases(cfg, storage)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    print_table(rows, overhead, cfg)
    result = {"config": asdict(cfg), "cases": rows, "ray_overhead": overhead}
    with open(cfg.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {cfg.out}")
    return result


def print_table(rows: list[dict], overhead: dict, cfg: BenchShardedConfig) -> None:
    print(f"\n{cfg.shards} shards on {cfg.shards} Ray nodes of 1 CPU vs local Memory, same cores; "
          f"the shards' logs under {cfg.storage_dir or tempfile.gettempdir()}")
    header = (f"{'slots':>9} {'batch':>5} {'local ms':>9} {'sharded ms':>10} {'ratio':>6} "
              f"{'2 rounds ms':>11} {'local q/s':>10} {'sharded q/s':>11} {'exact':>5}")
    print("sharded: pipelined (one round trip per step); 2 rounds: search, then apply")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['slots']:>9} {r['batch']:>5} {r['local_ms']:>9.1f} {r['sharded_ms']:>10.1f} "
              f"{r['ratio']:>6.2f} {r['two_rounds_ms']:>11.1f} {r['local_qps']:>10.0f} "
              f"{r['sharded_qps']:>11.0f} {str(r['exact']):>5}")
    for batch, o in overhead.items():
        print(f"Ray's cost per step at batch {batch} ({cfg.overhead_slots} slots, median of "
              f"{cfg.overhead_steps} steps each): {o['added_ms']:.2f} ms pipelined, "
              f"{o['two_rounds_added_ms']:.2f} ms in two rounds ({o['local_ms']:.2f} local, "
              f"{o['sharded_ms']:.2f} sharded); top-k identical: {o['exact']}; bare Ray round "
              f"trip to all shards {o['round_trip_ms']:.2f} ms")


if __name__ == "__main__":
    main()
