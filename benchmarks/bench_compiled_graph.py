"""Ray Compiled Graphs vs ordinary actor calls for one client driving its shards (issue 16).

A 2-shard memory on a 2-node local Ray cluster (one CPU per node, as bench_sharded.py). The same
search of both shards, answered side by side in this run: ordinary calls (``handle.search.remote``
on each shard, one ``ray.get``) and a compiled graph of the two searches
(``experimental_compile``, shared-memory channels). Prints ms per search of both shards.

Usage:
    python benchmarks/bench_compiled_graph.py
    python benchmarks/bench_compiled_graph.py --slots 65536 --calls 500
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np
import ray
import torch
from ray.dag import InputNode, MultiOutputNode

from lifelong.distributed import MemorySpec, create_memory, delete_memory
from local_cluster import local_cluster


def per_call_ms(fn, calls: int) -> float:
    for _ in range(20):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def time_calls(args, storage: str) -> dict:
    """ms per search of both shards: ordinary actor calls, then a compiled graph."""
    memory = create_memory(MemorySpec(
        name="cgraph", key_dim=128, num_slots=args.slots, num_values=100_000, shards=2,
        choose_k=256, storage=storage, snapshot_every=10**9, num_cpus=1))
    gen = torch.Generator().manual_seed(0)
    memory.query(torch.randn(args.slots // 2, 128, generator=gen),
                 torch.randint(0, 100_000, (args.slots // 2,), generator=gen))
    q = torch.nn.functional.normalize(torch.randn(args.batch, 128, generator=gen), dim=1)
    q = q.numpy()
    y = np.random.default_rng(0).integers(0, 100_000, args.batch).astype(np.int64)
    handles = memory.shards.handles
    result = {"calls": per_call_ms(
        lambda: ray.get([h.search.remote(q, y, 256) for h in handles]), args.calls)}
    with InputNode() as inp:
        dag = MultiOutputNode([h.search.bind(inp[0], inp[1], inp[2]) for h in handles])
    compiled = dag.experimental_compile()
    try:
        result["compiled"] = per_call_ms(lambda: ray.get(compiled.execute(q, y, 256)),
                                         args.calls)
    finally:
        compiled.teardown()
    delete_memory("cgraph", storage)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=4096, help="memory size (default 4096)")
    parser.add_argument("--batch", type=int, default=16, help="queries per search")
    parser.add_argument("--calls", type=int, default=300, help="timed calls per variant")
    args = parser.parse_args(argv)
    storage = tempfile.mkdtemp(prefix="bench-cgraph-")
    try:
        with local_cluster(2, cpus_per_node=1, prefix="bench-cgraph-ray-"):
            result = time_calls(args, storage)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    print(f"\nsearch of both shards, {args.slots} slots, batch {args.batch}, ms per call")
    print(f"ordinary actor calls   {result['calls']:8.3f}")
    print(f"compiled graph         {result['compiled']:8.3f}   "
          f"(ratio {result['compiled'] / result['calls']:.2f})")
    return result


if __name__ == "__main__":
    main()
