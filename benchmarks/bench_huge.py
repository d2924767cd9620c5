"""Benchmark a huge 2-shard memory: exact float32, exact bfloat16 and the approximate IVF index
(issue 17 item 4), side by side on the same keys and the same queries.

A 2-node local Ray cluster on this machine (one CPU per node, one shard actor on each, as
benchmarks/bench_sharded.py). The keys are made inside the shard actors by a seeded generator,
never sent through the driver or Ray's object store (16,777,216 x 128 float32 keys are 8 GiB).

Data model (stated, since IVF recall depends on it): keys are clustered like the embeddings of
classes: ``classes`` unit centres, each key ``normalise(centre + spread * g / sqrt(d))`` with
g ~ N(0, I) (spread 0.75: a key's cosine to its centre is about 0.8), its value the class. A
query is a stored key plus noise, ``normalise(key + query_noise * g / sqrt(d))`` (cosine about
0.96 to its key), labelled with the key's class: a memory is queried with things like what it
holds. Uniform random keys, IVF's worst case, are not what a memory of embeddings holds.

Variants, one after another (each freed before the next):
  * exact float32: the sharded memory with ``search=exact``; its answers to ``recall_queries``
    queries are the reference.
  * exact bfloat16: a sharded memory stores float32 keys only (MemorySpec refuses bfloat16),
    so this is a local ``Memory(key_dtype="bfloat16")`` of one shard's size holding shard 0's
    keys, on one thread (what one shard actor has), against shard 0's exact float32 answers.
  * ivf: ``search=ivf`` with ``nlist`` cells per shard, for each of ``nprobes``.

For each: the build time (keys made; for IVF also the index trained and filled), the step time
(lookup + loss + backward + update, pipelined: one round trip per step, as training runs) at
each batch, recall@1 and recall@k (k = choose_k) against exact float32 on the same queries,
and with ``restart``: the time a shard killed with SIGKILL takes to answer again (snapshot
load + log replay + index load), and whether its answers to the same queries are the same
(the IVF one is killed after further logged steps, mid-stream). The IVF floor is the bytes its
probed lists hold (the larger shard's) over the read bandwidth measured here.

Usage:
    python benchmarks/bench_huge.py                                  # 16M slots (~20 min, ~13 GiB)
    python benchmarks/bench_huge.py slots=1048576 nlist=256 repeats=2  # a quick look
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict

import numpy as np
import ray
import torch

from bench_memory import best_time, memory_step, read_bandwidth
from huge_shard import BenchHugeConfig, HugeShard, fill_keys
from local_cluster import local_cluster
from lifelong.config import config_from_args
from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.actor import MAX_CONCURRENCY, NAMESPACE, RayShards, actor_name
from lifelong.memory import Memory

def start_memory(cfg: BenchHugeConfig, storage: str, name: str, **search) -> ShardedMemory:
    spec = MemorySpec(name=name, key_dim=cfg.key_dim, num_slots=cfg.slots,
                      num_values=cfg.classes, shards=cfg.shards, choose_k=cfg.choose_k,
                      storage=storage, snapshot_every=10**9, num_cpus=1, age_noise=0.0, **search)
    handles = [ray.remote(HugeShard).options(
        name=actor_name(name, i), namespace=NAMESPACE, lifetime="detached", max_restarts=-1,
        max_task_retries=-1, num_cpus=1, max_concurrency=MAX_CONCURRENCY,
    ).remote(spec.to_json(), i) for i in range(cfg.shards)]
    memory = ShardedMemory(spec, RayShards(handles, timeout_s=1800.0, memory=name))
    memory.handles = handles
    return memory


def call(memory, method, *args):
    return ray.get([getattr(h, method).remote(*args) for h in memory.handles])


def stop(memory) -> None:
    for h in memory.handles:
        ray.kill(h, no_restart=True)
    time.sleep(2)  # the processes exit and give their memory back


def answers(memory, q: torch.Tensor) -> np.ndarray:
    """[Q, k] global slots of the top-k of each query (no update), in batches of 256."""
    return torch.cat([memory.query(part).slots for part in q.split(256)]).numpy()


def recall(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """recall@1 (same top-1 slot) and recall@k (share of the true top-k found), averaged."""
    at1 = float((found[:, 0] == truth[:, 0]).mean())
    atk = float(np.mean([len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, (t >= 0).sum())
                         for f, t in zip(found, truth)]))
    return at1, atk


def steps(memory, q: torch.Tensor, labels: torch.Tensor, cfg: BenchHugeConfig) -> dict:
    """Best ms per pipelined training step at each batch."""
    memory.pipelined = True
    out = {}
    for b in cfg.batches:
        out[b] = 1e3 * best_time(lambda: memory_step(memory, q[:b], labels[:b]), cfg.repeats)
    memory.flush()
    memory.pipelined = False
    return out


def restart(memory, q: torch.Tensor, labels: torch.Tensor, k: int) -> dict:
    """Snapshot, a few logged steps, then shard 0 killed (SIGKILL) mid-stream: seconds until it
    answers again, and whether its answers to the same queries are the same. Shard 1 is
    stopped first, so that a restart's peak (the snapshot read beside the slots) fits."""
    start = time.perf_counter()
    call(memory, "snapshot")
    snapshot_s = time.perf_counter() - start
    for i in range(3):  # logged after the snapshot: replayed at the restart
        memory.query(q[16 * i:16 * (i + 1)], labels[16 * i:16 * (i + 1)])
    shard0 = memory.handles[0]

    def shard0_answers():
        return ray.get(shard0.search.remote(q.numpy(), None, k)).slots

    before = shard0_answers()
    pid = ray.get(shard0.status.remote())["pid"]
    ray.kill(memory.handles[1], no_restart=True)
    time.sleep(2)
    os.kill(pid, signal.SIGKILL)
    start = time.perf_counter()
    while True:
        try:
            status = ray.get(shard0.status.remote(), timeout=1800)
            break
        except ray.exceptions.RayActorError:
            time.sleep(0.5)
    restart_s = time.perf_counter() - start
    after = shard0_answers()
    return {"snapshot_s": snapshot_s, "restart_s": restart_s, "new_pid": status["pid"] != pid,
            "replayed": status["replayed"], "same_answers": bool(np.array_equal(before, after)),
            "search": status.get("search")}


def run_exact(cfg, storage, bandwidth):
    """The reference: its row, its answers per query noise (global [Q, k], and shard 0's
    local ones) and the queries every variant is asked (near keys of both shards,
    interleaved), per query noise."""
    memory = start_memory(cfg, storage, "huge-exact")
    build = max(call(memory, "fill", json.dumps(asdict(cfg))))
    queries, truth, shard0 = {}, {}, {}
    for noise in cfg.query_noises:
        parts = call(memory, "sample", -(-cfg.recall_queries // cfg.shards),
                     json.dumps(asdict(cfg)), noise)
        q = torch.from_numpy(np.stack([p[0] for p in parts], 1).reshape(-1, cfg.key_dim))
        labels = torch.from_numpy(np.stack([p[1] for p in parts], 1).reshape(-1))
        queries[noise] = (q, labels)
        truth[noise] = answers(memory, q)
        shard0[noise] = ray.get(memory.handles[0].search.remote(q.numpy(), None,
                                                               cfg.choose_k)).slots
    shard_bytes = -(-cfg.slots // cfg.shards) * cfg.key_dim * 4
    q, labels = queries[cfg.query_noises[0]]
    row = {"variant": "exact float32", "build_s": build, "step_ms": steps(memory, q, labels, cfg),
           "recall@1": {n: 1.0 for n in cfg.query_noises},
           "recall@k": {n: 1.0 for n in cfg.query_noises},
           "scanned_mb": {b: shard_bytes / 2**20 for b in cfg.batches},
           "floor_ms": {b: 1e3 * shard_bytes / bandwidth for b in cfg.batches}}
    if cfg.restart:
        row["restart"] = restart(memory, q, labels, cfg.choose_k)
    stop(memory)
    return row, truth, shard0, queries


def run_bfloat16(cfg, queries, shard0_truth) -> dict:
    """One shard's keys in a local bfloat16 Memory on one thread (see the docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    size = -(-cfg.slots // cfg.shards)
    start = time.perf_counter()
    memory = Memory(key_dim=cfg.key_dim, num_slots=size, num_values=cfg.classes,
                    choose_k=cfg.choose_k, age_noise=0.0, key_dtype="bfloat16")
    with torch.no_grad():
        fill_keys(memory.keys, memory.values, 0, cfg)
        memory.clock.fill_(1)
        memory.insert_order.invalidate()
    build = time.perf_counter() - start
    at1, atk = {}, {}
    for noise, (q, _) in queries.items():
        found = torch.cat([memory.query(part).slots for part in q.split(256)]).numpy()
        at1[noise], atk[noise] = recall(found, shard0_truth[noise])
    q, labels = queries[cfg.query_noises[0]]
    row = {"variant": "exact bfloat16 (local, one shard's size, 1 thread)", "build_s": build,
           "step_ms": {b: 1e3 * best_time(lambda: memory_step(memory, q[:b], labels[:b]),
                                          cfg.repeats) for b in cfg.batches},
           "recall@1": at1, "recall@k": atk, "reference": "shard 0's exact float32 top-k"}
    del memory
    torch.set_num_threads(threads)
    return row


def run_ivf(cfg, storage, queries, truth, bandwidth) -> list[dict]:
    memory = start_memory(cfg, storage, "huge-ivf", search="ivf", nlist=cfg.nlist,
                          nprobe=max(cfg.nprobes))
    fill = max(call(memory, "fill", json.dumps(asdict(cfg))))
    index = max(call(memory, "build_index"))
    rows = []
    for nprobe in cfg.nprobes:  # every recall before any step writes
        call(memory, "set_nprobe", nprobe)
        found = {n: recall(answers(memory, q), truth[n]) for n, (q, _) in queries.items()}
        at1, atk = {n: f[0] for n, f in found.items()}, {n: f[1] for n, f in found.items()}
        q, labels = queries[cfg.query_noises[0]]
        scanned = {b: max(call(memory, "scanned_bytes", q[:b].numpy())) for b in cfg.batches}
        rows.append({"variant": f"ivf nlist={cfg.nlist} nprobe={nprobe}", "nprobe": nprobe,
                     "build_s": fill + index, "index_build_s": index, "recall@1": at1,
                     "recall@k": atk, "scanned_mb": {b: s / 2**20 for b, s in scanned.items()},
                     "floor_ms": {b: 1e3 * s / bandwidth for b, s in scanned.items()}})
    for row in rows:
        call(memory, "set_nprobe", row["nprobe"])
        row["step_ms"] = steps(memory, q, labels, cfg)
    if cfg.restart:  # at the spec's nprobe, which a restarted shard takes from its spec
        call(memory, "set_nprobe", max(cfg.nprobes))
        row = next(r for r in rows if r["nprobe"] == max(cfg.nprobes))
        row["restart"] = restart(memory, q, labels, cfg.choose_k)
    stop(memory)
    return rows


def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_args(BenchHugeConfig, __doc__, argv, "benchmarks/configs/bench_huge.yaml")
    storage = tempfile.mkdtemp(prefix="bench-huge-")
    here = os.path.dirname(os.path.abspath(__file__))  # the nodes' workers import huge_shard
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH"))
                                               if p)
    bandwidth = read_bandwidth(3)
    rows = []
    try:
        with local_cluster(cfg.shards, cpus_per_node=1):
            row, truth, shard0, queries = run_exact(cfg, storage, bandwidth)
            rows.append(row)
            if "bfloat16" in cfg.variants:
                rows.append(run_bfloat16(cfg, queries, shard0))
            if "ivf" in cfg.variants:
                rows += run_ivf(cfg, storage, queries, truth, bandwidth)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    result = {"config": asdict(cfg), "read_bandwidth_gb_s": bandwidth / 1e9, "rows": rows}
    print_table(result)
    with open(cfg.out, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    print(f"wrote {cfg.out}")
    return result


def print_table(result: dict) -> None:
    cfg = result["config"]
    noises, batches = cfg["query_noises"], cfg["batches"]
    print(f"\n{cfg['slots']} slots x {cfg['key_dim']} in {cfg['shards']} shards (1 CPU each); "
          f"read bandwidth {result['read_bandwidth_gb_s']:.1f} GB/s; recall against exact "
          f"float32 on {cfg['recall_queries']} queries per query noise, k = {cfg['choose_k']}; "
          f"steps with query noise {noises[0]}; ms per step, floor = bytes scanned / bandwidth")
    header = (f"{'variant':<26} {'build s':>7} "
              + " ".join(f"{'step@' + str(b):>8} {'floor@' + str(b):>9}" for b in batches)
              + " " + " ".join(f"{'r@1 n=' + str(n):>9} {'r@k n=' + str(n):>9}" for n in noises)
              + f" {'restart s':>9} {'same':>5}")
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        cols = " ".join(f"{r['step_ms'][b]:>8.1f} {r.get('floor_ms', {}).get(b, float('nan')):>9.2f}"
                        for b in batches)
        rec = " ".join(f"{r['recall@1'][n]:>9.4f} {r['recall@k'][n]:>9.4f}" for n in noises)
        rs = r.get("restart", {})
        print(f"{r['variant'][:26]:<26} {r['build_s']:>7.1f} {cols} {rec} "
              f"{rs.get('restart_s', float('nan')):>9.1f} {str(rs.get('same_answers', '-')):>5}")


if __name__ == "__main__":
    main()
