"""Benchmark one memory step against this machine's floors, measured side by side in one run.

A step is what training does per batch: lookup (exact search over all slots) + margin loss +
backward to the query + memory update, on a full memory with key size 128 and choose_k 256.

Each case is timed three ways in the same run: the float32 memory with the BLAS product
(``ExactSearch(kernel="blas")``, the step before the fused kernel), with ``kernel="auto"`` (the
fused kernel at small batches, BLAS at large ones) and with compact keys (``compact``, e.g.
bfloat16, kernel auto).

Floors, the machine's limits, measured in the same run:
  * bandwidth: streaming the float32 keys once (N * d * 4 bytes) at the best read rate this
    machine reaches (a reduction over a 512 MiB array, best of torch and numpy);
  * matmul: the FLOPs of the similarity product (2 B d N) at the best matmul rate this machine
    reaches at ANY batch size (``peak_batches``, torch or numpy, both layouts), not the rate
    BLAS reaches at this batch (reported beside it as ``blas_at_batch_ms``).
  floor = max(bandwidth floor, matmul floor); ratio = step / floor. Compact keys have a floor
  of their own (``compact_floor_ms``: half the bytes, the same FLOPs): ``ratio_compact``.

``kernel="auto"`` runs the fused kernel (lifelong.memory.fused_kernel: 8 key rows x 16 queries
in <16 x float> fma chains, keys prefetched ahead) at batches 16 to 32 and BLAS otherwise;
``auto_kernel`` in each row says which ran.

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
from lifelong.memory import ExactSearch, Memory
from lifelong.memory.bf16_kernel import has_bfloat16_dot

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
    compact: str = "bfloat16"  # the compact key_dtype also timed ("" for none)
    peak_batches: tuple[int, ...] = (16, 64, 256, 512)  # where the peak matmul rate is sought
    peak_slots: int = 131072  # keys of the peak-rate products
    out: str = "bench_memory.json"

    def __post_init__(self):
        if not self.slots or not self.batches or min(self.slots + self.batches) <= 0:
            raise ValueError("slots and batches must be non-empty lists of positive ints")
        if max(self.batches) > min(self.slots):
            raise ValueError("every batch must fit in the smallest memory")
        if self.repeats < 1 or self.key_dim < 1 or self.choose_k < 1 or self.threads < 0:
            raise ValueError("repeats, key_dim and choose_k must be >= 1, threads >= 0")
        if self.compact not in ("", "bfloat16", "float16"):
            raise ValueError("compact must be '', bfloat16 or float16")
        if not self.peak_batches or min(self.peak_batches) <= 0 or self.peak_slots <= 0:
            raise ValueError("peak_batches must be positive ints, peak_slots positive")


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


def peak_matmul_rate(cfg: BenchConfig) -> tuple[float, str]:
    """The best FLOP/s of the similarity product at any of ``peak_batches`` (and the batches of
    the cases), over torch / numpy and both layouts; with the variant that reached it."""
    gen = torch.Generator().manual_seed(2)
    keys = F.normalize(torch.randn(cfg.peak_slots, cfg.key_dim, generator=gen), dim=1)
    best, where = 0.0, ""
    for batch in sorted(set(cfg.peak_batches) | set(cfg.batches)):
        q = F.normalize(torch.randn(batch, cfg.key_dim, generator=gen), dim=1)
        flops = 2.0 * batch * cfg.key_dim * cfg.peak_slots
        for name, fn in product_variants(keys, q).items():
            rate = flops / best_time(fn, cfg.repeats)
            if rate > best:
                best, where = rate, f"{name} at batch {batch}"
    return best, where


def make_memory(num_slots: int, cfg: BenchConfig, key_dtype: str = "float32",
                kernel: str = "auto") -> Memory:
    """A full memory (steady state of a life-long run) with random keys and values."""
    memory = Memory(key_dim=cfg.key_dim, num_slots=num_slots, num_values=100_000,
                    choose_k=cfg.choose_k, key_dtype=key_dtype,
                    search=ExactSearch(kernel=kernel))
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


def time_step(num_slots: int, batch: int, cfg: BenchConfig, key_dtype: str,
              kernel: str) -> float:
    """Best seconds of one memory step (the memory is freed before the next is built)."""
    memory = make_memory(num_slots, cfg, key_dtype, kernel)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(batch, cfg.key_dim, generator=gen)
    labels = torch.randint(0, 100_000, (batch,), generator=gen)
    return best_time(lambda: memory_step(memory, q, labels), cfg.repeats)


def run_case(num_slots: int, batch: int, cfg: BenchConfig, bandwidth: float,
             peak_rate: float) -> dict:
    step_blas = time_step(num_slots, batch, cfg, "float32", "blas")
    step = time_step(num_slots, batch, cfg, "float32", "auto")
    step_compact = time_step(num_slots, batch, cfg, cfg.compact, "auto") if cfg.compact \
        else None
    # bfloat16 arithmetic as well, where the CPU has it (ExactSearch(kernel="bf16"))
    step_bf16 = time_step(num_slots, batch, cfg, "bfloat16", "bf16") \
        if cfg.compact == "bfloat16" and has_bfloat16_dot() else None
    memory = make_memory(num_slots, cfg)
    auto_kernel = "fused" if memory.search.uses_fused(batch, memory.keys) else "blas"
    qn = F.normalize(torch.randn(batch, cfg.key_dim, generator=torch.Generator().manual_seed(1)),
                     dim=1)
    products = {name: best_time(fn, cfg.repeats)
                for name, fn in product_variants(memory.keys, qn).items()}
    del memory
    best_product = min(products, key=products.get)
    flops = 2.0 * batch * cfg.key_dim * num_slots
    bandwidth_floor = num_slots * cfg.key_dim * 4 / bandwidth
    matmul_floor = flops / peak_rate
    floor = max(bandwidth_floor, matmul_floor)
    compact_floor = max(bandwidth_floor / 2, matmul_floor)  # bfloat16 / float16: 2 bytes
    return {
        "slots": num_slots, "batch": batch,
        "step_ms": step * 1e3,
        "step_blas_ms": step_blas * 1e3,
        "step_compact_ms": step_compact * 1e3 if step_compact else None,
        "step_bf16_dot_ms": step_bf16 * 1e3 if step_bf16 else None,
        "bf16_dot_vs_float32": step_bf16 / step if step_bf16 else None,
        "bandwidth_floor_ms": bandwidth_floor * 1e3,
        "matmul_floor_ms": matmul_floor * 1e3,
        "blas_at_batch_ms": products[best_product] * 1e3,
        "matmul_best": best_product,
        "matmul_gflops": {name: flops / t / 1e9 for name, t in products.items()},
        "floor_ms": floor * 1e3,
        "compact_floor_ms": compact_floor * 1e3,
        "auto_kernel": auto_kernel,
        "ratio": step / floor,
        "ratio_compact": step_compact / compact_floor if step_compact else None,
        "ratio_blas": step_blas / floor,
        "compact_vs_float32": step_compact / step if step_compact else None,
        "paper_code_ms": PAPER_CODE_MS.get((num_slots, batch)),
    }


def print_table(rows: list[dict], bandwidth: float, peak_rate: float, peak_where: str,
                compact: str) -> None:
    print(f"\nread bandwidth: {bandwidth / 1e9:.1f} GB/s; peak matmul: {peak_rate / 1e9:.1f} "
          f"GFLOP/s ({peak_where}); threads: {torch.get_num_threads()}")
    header = (f"{'slots':>9} {'batch':>5} {'bw floor':>9} {'mm floor':>9} {'blas@B':>9} "
              f"{'step blas':>9} {'step auto':>9} {'auto':>5} {'step ' + (compact or '-'):>14} "
              f"{'blas/fl':>7} {'auto/fl':>7} {'cmp/cfl':>7} {'cmp/auto':>8} {'bf16dot':>8} "
              f"{'dot/auto':>8} {'paper':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        paper = f"{r['paper_code_ms']:.1f}" if r["paper_code_ms"] else "-"
        comp = f"{r['step_compact_ms']:.2f}" if r["step_compact_ms"] else "-"
        comp_ratio = f"{r['compact_vs_float32']:.2f}" if r["compact_vs_float32"] else "-"
        comp_floor = f"{r['ratio_compact']:.2f}" if r["ratio_compact"] else "-"
        dot = f"{r['step_bf16_dot_ms']:.2f}" if r.get("step_bf16_dot_ms") else "-"
        dot_ratio = f"{r['bf16_dot_vs_float32']:.2f}" if r.get("bf16_dot_vs_float32") else "-"
        print(f"{r['slots']:>9} {r['batch']:>5} {r['bandwidth_floor_ms']:>9.2f} "
              f"{r['matmul_floor_ms']:>9.2f} {r['blas_at_batch_ms']:>9.2f} "
              f"{r['step_blas_ms']:>9.2f} {r['step_ms']:>9.2f} {r['auto_kernel']:>5} {comp:>14} "
              f"{r['ratio_blas']:>7.2f} {r['ratio']:>7.2f} {comp_floor:>7} {comp_ratio:>8} "
              f"{dot:>8} {dot_ratio:>8} {paper:>7}")
    print("ms per step; floor = max(bw floor, mm floor): bw = float32 keys streamed once, mm = "
          "the product's FLOPs at the peak matmul rate (any batch); blas@B = the best product "
          "at this batch; auto = the kernel auto ran; ratio = step / floor; cmp/cfl = compact "
          "keys' step / their floor (half the bytes); cmp/auto = compact keys' step / float32's; "
          "bf16dot = bfloat16 keys and queries by the CPU's bfloat16 dot product (AVX512-BF16 "
          "only), dot/auto = its step / float32's; "
          "'paper' = the reference TensorFlow code on this machine, as given in issue 2.")


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = config_from_args(BenchConfig, __doc__, argv, "benchmarks/configs/bench_memory.yaml")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bandwidth = read_bandwidth(cfg.repeats)
    peak_rate, peak_where = peak_matmul_rate(cfg)
    cases = [(n, b) for n in cfg.slots for b in cfg.batches]
    rows = [run_case(n, b, cfg, bandwidth, peak_rate)
            for n, b in tqdm(cases, desc="bench_memory")]
    print_table(rows, bandwidth, peak_rate, peak_where, cfg.compact)
    result = {"config": asdict(cfg), "read_bandwidth_gbs": bandwidth / 1e9,
              "peak_matmul_gflops": peak_rate / 1e9, "peak_matmul_where": peak_where,
              "threads": torch.get_num_threads(), "machine": platform.processor() or
              platform.machine(), "cases": rows}
    with open(cfg.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {cfg.out}")
    return rows


if __name__ == "__main__":
    main()
