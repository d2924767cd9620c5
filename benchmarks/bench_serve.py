"""Benchmark the online service (``lifelong serve``) over real HTTP against the memory's own
step time, in one run.

A bounded load: ``clients`` threads send ``requests`` requests in all (each thread its share,
then it stops), each request ``examples`` examples, a ``learn_fraction`` of them ``/learn``
(fresh request ids, random labels), the rest ``/predict``, to a service in front of a fresh
named memory prefilled with ``prefill`` keys (float32 keys, or Omniglot images through an
encoder with ``checkpoint``). Then, in the same process, the memory's own steps through a
direct client at the batch sizes Serve formed: a read-only query (what a predict batch costs)
and a query + update (what a learn batch costs). The table sets each route's throughput,
p50/p99 latency and the batches Serve formed (from the ``X-Lifelong-Batch-*`` headers) beside
those step times.

Usage:
    python benchmarks/bench_serve.py --config benchmarks/configs/bench_serve.yaml
    python benchmarks/bench_serve.py requests=2000 clients=8 checkpoint=tests/data/serve_encoder.pt
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import lifelong  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import numpy as np
import torch

from lifelong.config import config_from_args, config_from_dict
from lifelong.service.config import ServeJob


@dataclass(frozen=True)
class BenchServeConfig:
    requests: int = 600
    clients: int = 4
    examples: int = 2
    learn_fraction: float = 0.3
    key_dim: int = 128
    slots: int = 65536
    shards: int = 2
    values: int = 10_000
    prefill: int = 4096
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.005
    max_concurrent_batches: int = 2
    replicas: int = 1
    step_repeats: int = 30
    checkpoint: str | None = None   # images through this encoder (else float32 keys)
    ray_temp_dir: str | None = None  # null: a fresh temp dir
    seed: int = 0
    out: str = "bench_serve.json"

    def __post_init__(self):
        if min(self.requests, self.clients, self.examples, self.slots, self.shards,
               self.max_batch_size, self.replicas, self.step_repeats) < 1:
            raise ValueError("requests, clients, examples, slots, shards, max_batch_size, "
                             "replicas and step_repeats must be >= 1")
        if not 0 <= self.learn_fraction <= 1:
            raise ValueError("learn_fraction must lie in [0, 1]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_job(cfg: BenchServeConfig, storage: str, port: int) -> ServeJob:
    serve = {"name": "bench", "port": port, "num_cpus": 0, "min_replicas": cfg.replicas,
             "max_replicas": cfg.replicas, "max_batch_size": cfg.max_batch_size,
             "batch_wait_timeout_s": cfg.batch_wait_timeout_s,
             "max_concurrent_batches": cfg.max_concurrent_batches,
             "max_examples": max(cfg.examples, 1)}
    if cfg.checkpoint is None:
        serve["payload_format"] = f"float32[{cfg.key_dim}]"
    return config_from_dict(ServeJob, {
        "serve": serve, "encoder": {"checkpoint": cfg.checkpoint},
        "shared_memory": {"name": "bench-serve", "storage": storage, "num_slots": cfg.slots,
                          "shards": cfg.shards, "num_values": cfg.values, "num_cpus": 0.5,
                          "seed": cfg.seed}})


def payload_source(cfg: BenchServeConfig, rng: np.random.Generator):
    """A function giving n payloads as base64 strings, and the keys' size."""
    if cfg.checkpoint is None:
        def keys(n):
            return [base64.b64encode(k.tobytes()).decode() for k in
                    rng.standard_normal((n, cfg.key_dim)).astype(np.float32)]
        return keys
    from lifelong.data import load_omniglot

    images = load_omniglot("evaluation", progress=False).images
    flat = images.reshape(-1, *images.shape[2:])

    def drawings(n):
        return [base64.b64encode(flat[i].tobytes()).decode()
                for i in rng.integers(0, len(flat), n)]
    return drawings


def load(cfg: BenchServeConfig, url: str) -> tuple[list[dict], float]:
    """Runs the bounded load; returns one record per request and the wall time."""
    import requests

    records, lock = [], threading.Lock()
    shares = [cfg.requests // cfg.clients + (i < cfg.requests % cfg.clients)
              for i in range(cfg.clients)]

    def client(index: int) -> None:
        rng = np.random.default_rng(cfg.seed + 1 + index)
        payloads = payload_source(cfg, rng)
        session = requests.Session()
        for n in range(shares[index]):
            learn = rng.random() < cfg.learn_fraction
            body = {"examples": payloads(cfg.examples)}
            if learn:
                body.update(request_id=f"bench-{index}-{n}",
                            labels=rng.integers(0, cfg.values, cfg.examples).tolist())
            start = time.perf_counter()
            r = session.post(f"{url}/{'learn' if learn else 'predict'}", json=body, timeout=120)
            seconds = time.perf_counter() - start
            with lock:
                records.append({"route": "learn" if learn else "predict",
                                "status": r.status_code, "seconds": seconds,
                                "batch_requests": int(r.headers.get("X-Lifelong-Batch-Requests", 0)),
                                "batch_examples": int(r.headers.get("X-Lifelong-Batch-Examples", 0))})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(cfg.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records, time.perf_counter() - start


def step_ms(memory, batch: int, update: bool, repeats: int, gen) -> float:
    """Median ms of the memory's own step at ``batch`` rows (a read-only query, or a query
    with labels that writes), through a direct client."""
    times = []
    for _ in range(repeats):
        q = torch.randn(batch, memory.key_dim, generator=gen)
        labels = torch.randint(0, memory.num_values, (batch,), generator=gen) if update else None
        start = time.perf_counter()
        memory.query(q, labels, update=update)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main(argv=None) -> int:
    cfg = config_from_args(BenchServeConfig, __doc__, argv, "benchmarks/configs/bench_serve.yaml")
    import ray
    from ray import serve

    from lifelong.distributed import attach
    from lifelong.service.launch import start_service

    storage = tempfile.mkdtemp(prefix="bench-serve-mem-")
    ray.init(num_cpus=4, include_dashboard=False, namespace="lifelong", log_to_driver=False,
             _temp_dir=cfg.ray_temp_dir or tempfile.mkdtemp(prefix="bench-serve-ray-"))
    try:
        url = start_service(service_job(cfg, storage, free_port()))
        memory = attach("bench-serve", storage)
        gen = torch.Generator().manual_seed(cfg.seed)
        for start in range(0, cfg.prefill, 256):
            n = min(256, cfg.prefill - start)
            memory.query(torch.randn(n, memory.key_dim, generator=gen),
                         torch.randint(0, cfg.values, (n,), generator=gen))
        warm = BenchServeConfig(**{**asdict(cfg), "requests": 2 * cfg.clients})
        load(warm, url)
        records, wall = load(cfg, url)
        rows = []
        for route in ("predict", "learn"):
            mine = [r for r in records if r["route"] == route]
            if not mine:
                continue
            ok = [r for r in mine if r["status"] == 200]
            lat = np.array([r["seconds"] for r in ok]) * 1000
            breq = np.array([r["batch_requests"] for r in ok])
            bex = np.array([r["batch_examples"] for r in ok])
            typical = int(np.median(bex)) if len(bex) else cfg.examples
            rows.append({
                "route": route, "requests": len(mine), "errors": len(mine) - len(ok),
                "requests_per_s": len(ok) / wall, "examples_per_s": len(ok) * cfg.examples / wall,
                "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                "batch_requests_mean": float(breq.mean()), "batch_requests_max": int(breq.max()),
                "batch_examples_median": typical,
                "step_ms_at_batch": step_ms(memory, typical, route == "learn",
                                            cfg.step_repeats, gen),
                "step_ms_at_1": step_ms(memory, 1, route == "learn", cfg.step_repeats, gen)})
    finally:
        serve.shutdown()
        ray.shutdown()
    kind = f"images through {cfg.checkpoint}" if cfg.checkpoint else \
        f"float32[{cfg.key_dim}] keys"
    print(f"\n## bench_serve: {cfg.requests} requests of {cfg.examples} examples ({kind}) from "
          f"{cfg.clients} clients, {100 * cfg.learn_fraction:.0f}% learn; memory "
          f"{cfg.slots:,} slots in {cfg.shards} shards, prefilled {cfg.prefill:,}; "
          f"{cfg.replicas} replica(s), max_batch_size {cfg.max_batch_size}, max_concurrent_batches "
          f"{cfg.max_concurrent_batches}; {wall:.1f} s\n")
    print("| route | requests (errors) | requests/s | examples/s | p50 ms | p99 ms | Serve batch: "
          "requests mean / max | examples per batch (median) | memory step at that batch, ms "
          "| memory step at 1 example, ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['route']} | {r['requests']} ({r['errors']}) | {r['requests_per_s']:.1f} | "
              f"{r['examples_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['batch_requests_mean']:.2f} / {r['batch_requests_max']} | "
              f"{r['batch_examples_median']} | {r['step_ms_at_batch']:.1f} | "
              f"{r['step_ms_at_1']:.1f} |")
    Path(cfg.out).write_text(json.dumps({"config": asdict(cfg), "wall_s": wall, "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
