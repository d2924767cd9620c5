"""Benchmark one memory step against this machine's floors, measured side by side in one run.

A step is what training does per batch: lookup (exact search over all slots) + margin loss +
backward to the query + memory update, on a full memory with key size 128 and choose_k 256.

Floors, measured in the same run:
  * bandwidth: streaming the keys once (N * d * 4 bytes) at the best read rate this machine
    reaches (a reduction over a 512 MiB array, best of torch and numpy);
  * matmul: the similarity product [B, d] x [d, N] at the best rate this machine reaches for
    that shape, whichever library and layout gives it (torch or numpy, keys @ q.T or q @ keys.T).
  floor = max(bandwidth floor, matmul floor); ratio = step / floor.

Usage:
    python benchmarks/bench_memory.py                       # the full table (a few minutes)
    python benchmarks/bench_memory.py slots=[8192] batches=[16] repeats=3
    python benchmarks/bench_memory.py --config benchmarks/configs/bench_memory.yaml out=bench.json
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lifelong.config import config_from_args
from lifelong.memory import Memory

# The paper's own TensorFlow code on this 2-core machine (figures given in issue 2, ms per step).
PAPER_CODE_MS = {(8192, 16): 2.1, (1048576, 16): 118.0, (1048576, 256): 826.0}


@dataclass(frozen=True)
class BenchConfig:
    slots: tuple[int, ...] = (8192, 65536, 1048576)
    batches: tuple[int, ...] = (16, 256)
    key_dim: int = 128
    choose_k: int = 256
    repeats: int = 5
    threads: int = 0  # 0: torch's default
    out: str = "bench_memory.json"

    def __post_init__(self):
        if not self.slots or not self.batches or min(self.slots + self.batches) <= 0:
            raise ValueError("slots and batches must be non-empty lists of positive ints")
        if max(self.batches) > min(self.slots):
            raise ValueError("every batch must fit in the smallest memory")
        if self.repeats < 1 or self.key_dim < 1 or self.choose_k < 1 or self.threads < 0:
            raise ValueError("repeats, key_dim and choose_k must be >= 1, threads >= 0")


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def read_bandwidth(repeats: int) -> float:
    """Best bytes/s for streaming a 512 MiB float32 array once (torch and numpy reductions)."""
    data = torch.rand(2**27)
    array = data.numpy()
    seconds = min(best_time(lambda: data.sum(), repeats),
                  best_time(lambda: np.add.reduce(array), repeats))
    return data.numel() * 4 / seconds


def product_variants(keys: torch.Tensor, q: torch.Tensor) -> dict:
    """The similarity product in each library and layout; all compute the same numbers."""
    kn, qn = keys.numpy(), q.numpy()
    return {
        "torch q@K.T": lambda: q @ keys.T,
        "torch K@q.T": lambda: keys @ q.T,
        "numpy q@K.T": lambda: qn @ kn.T,
        "numpy K@q.T": lambda: kn @ qn.T,
    }


def make_memory(num_slots: int, cfg: BenchConfig) -> Memory:
    """A full memory (steady state of a life-long run) with random keys and values."""
    memory = Memory(key_dim=cfg.key_dim, num_slots=num_slots, num_values=100_000,
                    choose_k=cfg.choose_k)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        memory.keys.copy_(F.normalize(torch.randn(num_slots, cfg.key_dim, generator=gen), dim=1))
        memory.values.copy_(torch.randint(0, 100_000, (num_slots,), generator=gen))
        memory.write_time.copy_(torch.randint(0, 1000, (num_slots,), generator=gen))
        memory.clock.fill_(1000)
    return memory


def memory_step(memory: Memory, q: torch.Tensor, labels: torch.Tensor) -> None:
    """One training step of the memory: lookup + loss + backward to the query + update."""
    query = q.clone().requires_grad_(True)
    out = memory.query(query, labels)
    out.loss.backward()


def run_case(num_slots: int, batch: int, cfg: BenchConfig, bandwidth: float) -> dict:
    memory = make_memory(num_slots, cfg)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(batch, cfg.key_dim, generator=gen)
    labels = torch.randint(0, 100_000, (batch,), generator=gen)
    step = best_time(lambda: memory_step(memory, q, labels), cfg.repeats)
    qn = F.normalize(q, dim=1)
    products = {name: best_time(fn, cfg.repeats)
                for name, fn in product_variants(memory.keys, qn).items()}
    best_product = min(products, key=products.get)
    flops = 2.0 * batch * cfg.key_dim * num_slots
    bandwidth_floor = num_slots * cfg.key_dim * 4 / bandwidth
    floor = max(bandwidth_floor, products[best_product])
    return {
        "slots": num_slots, "batch": batch,
        "step_ms": step * 1e3,
        "bandwidth_floor_ms": bandwidth_floor * 1e3,
        "matmul_floor_ms": products[best_product] * 1e3,
        "matmul_best": best_product,
        "matmul_gflops": {name: flops / t / 1e9 for name, t in products.items()},
        "floor_ms": floor * 1e3,
        "ratio": step / floor,
        "paper_code_ms": PAPER_CODE_MS.get((num_slots, batch)),
    }


def print_table(rows: list[dict], bandwidth: float) -> None:
    print(f"\nread bandwidth: {bandwidth / 1e9:.1f} GB/s; threads: {torch.get_num_threads()}")
    header = (f"{'slots':>9} {'batch':>5} {'step ms':>9} {'bw floor':>9} {'mm floor':>9} "
              f"{'GFLOP/s':>8} {'ratio':>6} {'paper code':>10} {'speed-up':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        gflops = max(r["matmul_gflops"].values())
        paper = r["paper_code_ms"]
        speedup = f"{paper / r['step_ms']:.1f}x" if paper else "-"
        paper = f"{paper:.1f}" if paper else "-"
        print(f"{r['slots']:>9} {r['batch']:>5} {r['step_ms']:>9.2f} "
              f"{r['bandwidth_floor_ms']:>9.2f} {r['matmul_floor_ms']:>9.2f} {gflops:>8.1f} "
              f"{r['ratio']:>6.2f} {paper:>10} {speedup:>8}")
    print("ratio = step / max(bandwidth floor, matmul floor); 'paper code' = the reference "
          "TensorFlow code on this machine, as given in issue 2.")


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = config_from_args(BenchConfig, __doc__, argv, "benchmarks/configs/bench_memory.yaml")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bandwidth = read_bandwidth(cfg.repeats)
    cases = [(n, b) for n in cfg.slots for b in cfg.batches]
    rows = [run_case(n, b, cfg, bandwidth) for n, b in tqdm(cases, desc="bench_memory")]
    print_table(rows, bandwidth)
    result = {"config": asdict(cfg), "read_bandwidth_gbs": bandwidth / 1e9,
              "threads": torch.get_num_threads(), "machine": platform.processor() or
              platform.machine(), "cases": rows}
    with open(cfg.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {cfg.out}")
    return rows


if __name__ == "__main__":
    main()
