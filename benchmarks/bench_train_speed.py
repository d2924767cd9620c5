"""Episodic Omniglot training speed in each precision / layout / compile mode, against this
machine's measured floor, side by side in one run (issue 18, item 1).

Per mode, the same real Omniglot episode batches (seeded) are trained: ``warmup`` steps, then
``steps`` timed steps of the full training step (encode the batch, the L memory steps, backward,
clipping, Adam). Training images/s x the encoder's FLOPs per image (forward + backward, counted
by torch.utils.flop_counter) gives the achieved GFLOP/s, set against the peak measured in the
same run for that mode's dtype: the best of a large matmul and the encoder's own convolution
shapes (contiguous and channels_last), float32 and bfloat16. bf16 modes run only where torch
has oneDNN and a bf16 matmul measurably beats float32; elsewhere they are skipped. The same
batches then run through the encoder alone (forward + backward): the gap between the two rates
is the memory steps, the optimizer and the episode sampling.

Modes are "float32" or "bfloat16", optionally with "+channels_last" and "+compile"
(torch.compile; its compile time, the warm-up, is reported separately, and a mode whose
compilation fails is reported as failed).

Usage:
    python benchmarks/bench_train_speed.py                      # benchmarks/configs/bench_train_speed.yaml
    python benchmarks/bench_train_speed.py encoder=paper steps=4
    python benchmarks/bench_train_speed.py modes=[float32,bfloat16+channels_last]
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if importlib.util.find_spec("lifelong") is None:  # no `pip install -e .`: the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import torch
import torch.nn.functional as F

from bench_memory import best_time
from lifelong.config import check_int, config_from_args
from lifelong.data import EpisodeSampler, load_omniglot
from lifelong.errors import ConfigError, LifelongError
from lifelong.experiments.omniglot.train import train_step
from lifelong.memory import MemoryConfig
from lifelong.models import ENCODER_NAMES, build_encoder
from lifelong.models.flops import encoder_flops
from lifelong.runtime.fast_encoder import FastEncoder
from lifelong.runtime.precision import cpu_has_bf16

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
OPTIONS = ("channels_last", "compile")


@dataclass(frozen=True)
class BenchConfig:
    """What to train and measure (benchmarks/configs/bench_train_speed.yaml)."""

    encoder: str = "small"
    key_dim: int = 128
    modes: tuple[str, ...] = ("float32", "float32+channels_last", "bfloat16",
                              "bfloat16+channels_last", "bfloat16+channels_last+compile")
    episodes_per_batch: int = 16
    way: int = 5
    presentations: int = 10
    warmup: int = 2
    steps: int = 8
    lr: float = 3e-3
    threads: int = 2  # 0: torch's default
    matmul_size: int = 2048
    repeats: int = 3
    seed: int = 0
    cold_compile: bool = True  # torch.compile into a fresh cache: warm-up s = a first compile

    def __post_init__(self) -> None:
        if not isinstance(self.cold_compile, bool):
            raise ConfigError(f"must be true or false, got {self.cold_compile!r}",
                              key="cold_compile")
        if self.encoder not in ENCODER_NAMES:
            raise ConfigError(f"must be one of {ENCODER_NAMES}, got {self.encoder!r}",
                              key="encoder")
        for name in ("key_dim", "episodes_per_batch", "way", "presentations", "steps",
                     "matmul_size", "repeats"):
            check_int(name, getattr(self, name))
        for name in ("warmup", "threads", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        if not self.modes:
            raise ConfigError("must name at least one mode", key="modes")
        for mode in self.modes:
            parse_mode(mode)


def parse_mode(mode: str) -> tuple[str, bool, bool]:
    """``"bfloat16+channels_last"`` -> (precision, channels_last, compile)."""
    precision, *options = str(mode).split("+")
    if precision not in DTYPES or any(o not in OPTIONS for o in options):
        raise ConfigError(f"{mode!r} is not <float32|bfloat16>[+channels_last][+compile]",
                          key="modes")
    return precision, "channels_last" in options, "compile" in options


def conv_shapes(encoder: torch.nn.Module, batch: int) -> list[tuple[tuple, torch.nn.Conv2d]]:
    """(input shape, layer) of every convolution of ``encoder`` on a batch of 28x28 images."""
    shapes, hooks = [], []
    for layer in encoder.modules():
        if isinstance(layer, torch.nn.Conv2d):
            hooks.append(layer.register_forward_hook(
                lambda m, args, out: shapes.append((tuple(args[0].shape), m))))
    with torch.no_grad():
        encoder(torch.zeros(batch, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    return shapes


def measure_peaks(cfg: BenchConfig, encoder: torch.nn.Module, batch: int) -> dict[str, dict]:
    """Best GFLOP/s per dtype: a large matmul and each conv shape of the encoder (both layouts).

    Returns:
        {dtype name: {"matmul": GFLOP/s, "conv": best conv GFLOP/s, "peak": the larger}}.
    """
    n = cfg.matmul_size
    shapes = conv_shapes(encoder, batch)
    out = {}
    for name, dtype in DTYPES.items():
        if name == "bfloat16" and not torch.backends.mkldnn.is_available():
            continue
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        matmul = 2 * n**3 / best_time(lambda: a @ b, cfg.repeats) / 1e9
        conv = 0.0
        for shape, layer in shapes:
            x = torch.rand(shape, dtype=dtype)
            w = layer.weight.detach().to(dtype)
            side_out = shape[2] * shape[3]  # 'same' convolutions
            flops = 2 * shape[0] * side_out * w.numel()
            for fmt in (torch.contiguous_format, torch.channels_last):
                xf, wf = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
                seconds = best_time(lambda: F.conv2d(xf, wf, padding=layer.padding),
                                    cfg.repeats)
                conv = max(conv, flops / seconds / 1e9)
        out[name] = {"matmul": matmul, "conv": conv, "peak": max(matmul, conv)}
    return out


def bf16_pays(peaks: dict[str, dict]) -> bool:
    """bf16 only where torch runs it on this CPU and it beats float32 on the matmul."""
    return "bfloat16" in peaks and peaks["bfloat16"]["matmul"] > peaks["float32"]["matmul"]


def train_mode(cfg: BenchConfig, mode: str, images) -> dict:
    """Trains ``warmup`` + ``steps`` episode batches in ``mode``; times the last ``steps``."""
    precision, channels_last, compile = parse_mode(mode)
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg.encoder, cfg.key_dim, dropout=0.0)
    runner = FastEncoder(encoder, precision, channels_last, compile)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=cfg.lr, eps=1e-4)
    length, batch = cfg.way * cfg.presentations, cfg.episodes_per_batch
    memory = MemoryConfig().build(key_dim=cfg.key_dim, num_slots=length * batch,
                                  num_values=cfg.way * batch, seed=cfg.seed)
    sampler = EpisodeSampler(images, cfg.way, cfg.presentations, cfg.seed)
    episodes = [sampler.sample(batch) for _ in range(cfg.warmup + cfg.steps)]
    encoder.train()

    def step(ep) -> float:
        loss, _ = train_step(runner, memory, ep.x, ep.y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 5.0)
        optimizer.step()
        return float(loss.detach()) / length

    start = time.perf_counter()
    for ep in episodes[:cfg.warmup]:
        step(ep)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    losses = [step(ep) for ep in episodes[cfg.warmup:]]
    seconds = time.perf_counter() - start
    # The encoder alone on the same batches (forward + backward, no memory, no optimizer).
    start = time.perf_counter()
    for ep in episodes[cfg.warmup:]:
        runner(ep.x.reshape(length * batch, *ep.x.shape[2:])).sum().backward()
    encoder_s = time.perf_counter() - start
    images = cfg.steps * length * batch
    return {"mode": mode, "precision": precision, "warmup_s": warmup_s, "seconds": seconds,
            "images_per_s": images / seconds, "encoder_images_per_s": images / encoder_s,
            "last_loss": losses[-1]}


def print_table(cfg: BenchConfig, rows: list[dict], peaks: dict[str, dict], flops) -> None:
    batch = cfg.episodes_per_batch * cfg.way * cfg.presentations
    print(f"\nencoder {cfg.encoder}: {flops.forward / 1e6:.1f} MFLOP forward + "
          f"{flops.backward / 1e6:.1f} backward = {flops.total / 1e6:.1f} MFLOP per training "
          f"image; {batch} images per step, {cfg.steps} timed steps after {cfg.warmup} "
          f"warm-up; {torch.get_num_threads()} threads; CPU bf16 flags: {cpu_has_bf16()}")
    print("\n| dtype | matmul GFLOP/s | best encoder conv GFLOP/s | peak GFLOP/s |")
    print("|---|---|---|---|")
    for name, p in peaks.items():
        print(f"| {name} | {p['matmul']:.0f} | {p['conv']:.0f} | {p['peak']:.0f} |")
    base = next((r["images_per_s"] for r in rows if r["mode"] == "float32" and "error" not in r),
                None)
    print("\n| mode | warm-up s | images/s | GFLOP/s | of float32 peak | of bf16 peak | "
          "speed-up vs float32 | encoder alone images/s | loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['mode']} | - | {r['error']} | | | | | | |")
            continue
        gflops = flops.total * r["images_per_s"] / 1e9
        fp32 = f"{gflops / peaks['float32']['peak']:.1%}"
        bf16 = f"{gflops / peaks['bfloat16']['peak']:.1%}" if "bfloat16" in peaks else "-"
        speedup = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        print(f"| {r['mode']} | {r['warmup_s']:.1f} | {r['images_per_s']:.0f} | {gflops:.1f} | "
              f"{fp32} | {bf16} | {speedup} | {r['encoder_images_per_s']:.0f} | "
              f"{r['last_loss']:.3f} |")
    cache = "a fresh cache" if cfg.cold_compile else "torch's cache (may be warm)"
    print("\nencoder alone = the same batches through the encoder's forward + backward only "
          "(no memory steps, no optimizer): the part of a step the FLOPs count.")
    print(f"warm-up s = the {cfg.warmup} warm-up steps, with torch.compile's compilation "
          f"into {cache} in +compile modes; peak = the best of the matmul and the encoder's "
          "conv shapes measured above in this run.")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(BenchConfig, __doc__, argv,
                               "benchmarks/configs/bench_train_speed.yaml")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.cold_compile:  # read when inductor first compiles, after this
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-")
        background = load_omniglot("background", progress=False)
        encoder = build_encoder(cfg.encoder, cfg.key_dim, dropout=0.0)
        flops = encoder_flops(encoder)
        batch = cfg.episodes_per_batch * cfg.way * cfg.presentations
        peaks = measure_peaks(cfg, encoder, batch)
        use_bf16 = bf16_pays(peaks)
        rows = []
        for mode in cfg.modes:
            if parse_mode(mode)[0] == "bfloat16" and not use_bf16:
                rows.append({"mode": mode, "error": "skipped: no fast bf16 here"})
                continue
            try:
                rows.append(train_mode(cfg, mode, background.images))
            except LifelongError:
                raise
            except Exception as exc:  # torch.compile failing (no compiler, unsupported op)
                rows.append({"mode": mode, "error": f"failed: {type(exc).__name__}"})
            print(f"done {mode}", file=sys.stderr, flush=True)
    except LifelongError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print_table(cfg, rows, peaks, flops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
