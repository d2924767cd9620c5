"""Where the time of one sharded memory step goes: Ray, serialisation, the shards' own work, the
client's merge, per round (issue 16, item 1).

The same steps run three ways side by side on one small memory (where search costs little, so
what is left is overhead): the local ``Memory``; a ``ShardedMemory`` over ``LocalShards`` in
this process, pipelined (the shards' own work, timed per part: search, plan, log append,
apply); and a ``ShardedMemory`` over Ray actors on a 2-node local cluster, in two rounds and
pipelined (each round timed from the client). Ray's cost = the pipelined Ray step - the same
step in process. Serialisation is timed separately (cloudpickle with protocol-5 out-of-band
buffers, as Ray serialises, on the arguments and answers of one round).

Usage:
    python benchmarks/profile_sharded.py                  # 4096 slots, batch 16, 2 shards
    python benchmarks/profile_sharded.py slots=65536 batch=256 steps=100
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from ray import cloudpickle

from bench_memory import BenchConfig, make_memory, memory_step
from local_cluster import local_cluster
from lifelong.config import config_from_args
from lifelong.distributed import MemorySpec, ShardedMemory, create_memory, delete_memory
from lifelong.distributed.client import LocalShards
from lifelong.distributed import shard as shard_module
from lifelong.distributed.shard import MemoryShard


@dataclass(frozen=True)
class ProfileConfig:
    slots: int = 4096
    batch: int = 16
    key_dim: int = 128
    choose_k: int = 256
    shards: int = 2
    steps: int = 200
    out: str = "profile_sharded.json"

    def __post_init__(self):
        if min(self.slots, self.batch, self.shards, self.steps) < 1 or self.batch > self.slots:
            raise ValueError("slots, batch, shards and steps must be >= 1, batch <= slots")


class Timer:
    """Sums of wall time per part over the timed steps, in seconds."""

    def __init__(self):
        self.total = defaultdict(float)

    @contextmanager
    def part(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.total[name] += time.perf_counter() - start

    def wrap(self, obj, method: str, name: str | None = None):
        real = getattr(obj, method)

        def timed(*args, **kwargs):
            with self.part(name or method):
                return real(*args, **kwargs)

        setattr(obj, method, timed)
        self.wrapped = getattr(self, "wrapped", []) + [(obj, method, real)]

    def unwrap(self):
        """Puts back what ``wrap`` replaced."""
        for obj, method, real in reversed(getattr(self, "wrapped", [])):
            setattr(obj, method, real)
        self.wrapped = []


def spec_for(cfg: ProfileConfig, name: str, storage: str) -> MemorySpec:
    return MemorySpec(name=name, key_dim=cfg.key_dim, num_slots=cfg.slots,
                      num_values=100_000, shards=cfg.shards, choose_k=cfg.choose_k,
                      storage=storage, snapshot_every=10**9, num_cpus=1)


def steps(memory, cfg: ProfileConfig, timer: Timer) -> float:
    """Mean ms per step of ``cfg.steps`` training steps (after 10 untimed)."""
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(cfg.batch, cfg.key_dim, generator=gen),
                torch.randint(0, 100_000, (cfg.batch,), generator=gen))
               for _ in range(cfg.steps + 10)]
    for q, y in batches[:10]:
        memory_step(memory, q, y)
    timer.total.clear()
    start = time.perf_counter()
    for q, y in batches[10:]:
        memory_step(memory, q, y)
    return (time.perf_counter() - start) / cfg.steps * 1e3


def in_process(cfg: ProfileConfig, local, storage: str) -> tuple[float, dict]:
    """The sharded step with the shards in this process, durable, each part of their work
    timed."""
    spec = spec_for(cfg, "in-process", storage)
    shards = [MemoryShard(spec, i) for i in range(cfg.shards)]
    memory = ShardedMemory(spec, LocalShards(shards), pipelined=True)
    memory.load_state_dict(local.state_dict())
    timer = Timer()
    timer.wrap(memory.shards, "call", "round")
    # The parts of MemoryShard.step: _apply (plan, log write, apply to slots), _search, then
    # the wait for the log sync (the group commit thread syncs while the search runs).
    timer.wrap(shard_module, "plan_update", "shard.plan")
    for s in shards:
        for method, name in (("_search", "search"), ("_apply", "apply"),
                             ("_apply_update", "apply_update")):
            timer.wrap(s, method, f"shard.{name}")
        for method in ("write", "sync"):
            timer.wrap(s.store, method, f"shard.log_{method}")
    try:
        ms = steps(memory, cfg, timer)
    finally:
        timer.unwrap()
    return ms, {k: v / cfg.steps * 1e3 for k, v in timer.total.items()}


def serialisation(memory, cfg: ProfileConfig) -> dict:
    """ms to serialise + deserialise one round's arguments and answers as Ray does (cloudpickle,
    protocol 5, numpy buffers out of band), and their bytes."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(cfg.batch, cfg.key_dim, generator=gen)
    y = torch.randint(0, 100_000, (cfg.batch,), generator=gen)
    captured = {}
    real_call = memory.shards.call

    def call(method, args):
        out = real_call(method, args)
        captured[method] = (args[0], out[0])
        return out

    memory.shards.call = call
    memory.query(q, y)
    memory.shards.call = real_call
    result = {}
    for method, (args, answer) in captured.items():
        for kind, value in (("args", args), ("answer", answer)):
            start = time.perf_counter()
            for _ in range(100):
                buffers = []
                blob = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
                cloudpickle.loads(blob, buffers=buffers)
            result[f"{method}.{kind}_ms"] = (time.perf_counter() - start) / 100 * 1e3
            result[f"{method}.{kind}_bytes"] = len(blob) + sum(b.raw().nbytes for b in buffers)
    return result


def on_ray(cfg: ProfileConfig, local, storage: str, pipelined: bool) -> tuple[float, dict]:
    memory = create_memory(spec_for(cfg, "profiled", storage))
    memory.load_state_dict(local.state_dict())
    memory.pipelined = pipelined
    timer = Timer()
    real = memory.shards.call

    def call(method, args):
        with timer.part(f"round.{method}"):
            return real(method, args)

    memory.shards.call = call
    ms = steps(memory, cfg, timer)
    parts = {k: v / cfg.steps * 1e3 for k, v in timer.total.items()}
    start = time.perf_counter()
    for _ in range(100):
        real("ping", [()] * cfg.shards)
    parts["bare_round_trip"] = (time.perf_counter() - start) / 100 * 1e3
    memory.shards.call = real
    memory.flush()
    memory.pipelined = False
    parts.update(serialisation(memory, cfg))
    delete_memory("profiled", storage)
    return ms, parts


def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_args(ProfileConfig, __doc__, argv, "benchmarks/configs/profile_sharded.yaml")
    torch.set_num_threads(1)
    storage = tempfile.mkdtemp(prefix="profile-sharded-")
    try:
        with local_cluster(cfg.shards, cpus_per_node=1, prefix="profile-ray-"):
            local = make_memory(cfg.slots, BenchConfig(key_dim=cfg.key_dim,
                                                       choose_k=cfg.choose_k, batches=(1,)))
            local_ms = steps(local, cfg, Timer())
            process_ms, process = in_process(cfg, local, storage)
            ray_ms, remote = on_ray(cfg, local, storage, pipelined=False)
            piped_ms, piped = on_ray(cfg, local, storage, pipelined=True)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    result = {"config": asdict(cfg), "local_ms": local_ms, "in_process_ms": process_ms,
              "ray_ms": ray_ms, "pipelined_ms": piped_ms, "in_process": process,
              "ray": remote, "pipelined": piped}
    print_table(result)
    with open(cfg.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {cfg.out}")
    return result


def print_table(r: dict) -> None:
    cfg, p, q = r["config"], r["in_process"], r["ray"]
    print(f"\none step, {cfg['slots']} slots, batch {cfg['batch']}, {cfg['shards']} shards, "
          f"ms (mean of {cfg['steps']} steps)")
    o = r["pipelined"]
    rows = [("local Memory step", r["local_ms"]),
            ("sharded step, shards in process (pipelined)", r["in_process_ms"]),
            ("sharded step on Ray, two rounds", r["ray_ms"]),
            ("  search round", q.get("round.search", 0)),
            ("  apply round", q.get("round.apply", 0)),
            ("  client work (step - rounds)",
             r["ray_ms"] - q.get("round.search", 0) - q.get("round.apply", 0)),
            ("sharded step on Ray, pipelined", r["pipelined_ms"]),
            ("  step round (apply t + search t+1)", o.get("round.step", 0)),
            ("  client work (step - round)", r["pipelined_ms"] - o.get("round.step", 0)),
            ("  Ray added (pipelined Ray - in process)", r["pipelined_ms"] - r["in_process_ms"]),
            ("bare round trip to all shards", q["bare_round_trip"]),
            ("in process: the step round", p.get("round", 0)),
            ("  shard.search (all shards)", p.get("shard.search", 0)),
            ("  shard.apply (all shards)", p.get("shard.apply", 0)),
            ("    of which plan", p.get("shard.plan", 0)),
            ("    of which log write", p.get("shard.log_write", 0)),
            ("    of which apply to slots", p.get("shard.apply_update", 0)),
            ("  wait for the log sync, after the search", p.get("shard.log_sync", 0))]
    for key in sorted(k for k in q if k.endswith("_ms")):
        rows.append((f"  serialise {key[:-3]} ({q[key[:-3] + '_bytes']} B)", q[key]))
    for name, ms in rows:
        print(f"{name:<48} {ms:8.3f}")


if __name__ == "__main__":
    main()
