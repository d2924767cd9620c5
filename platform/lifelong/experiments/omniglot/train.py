"""Episodic training of the Omniglot one-shot model (Kaiser et al. 2017, section 4.1).

A training step takes a batch of B episodes (N-way, each class shown ``presentations`` times).
The B episodes share one memory, cleared before the batch, with disjoint labels (episode b uses
b*N .. b*N + N - 1), and the memory has a slot for every image of the batch, so nothing is
evicted. The loss is the memory loss summed over the L = N * presentations steps.

Deviation from the reference code, for speed on CPUs: the reference runs the encoder and takes
an optimizer step per time step. Here the whole batch of L * B images is encoded in one forward
pass, the L memory steps then run one after another on the embeddings (each step sees the memory
as written by the steps before it, as in the paper), and one backward pass and one Adam step
follow per episode batch. One large forward pass is several times faster than L small ones.
Measured on the 2-core machine (800 images per batch): the small encoder trains at about
800 images/s (paper encoder: about 340), the 50 memory steps add about 0.15 s per batch.
``train.precision`` / ``channels_last`` / ``compile`` set how the encoder runs
(``runtime/fast_encoder.py``; bf16 + channels_last measured 2.5-4x the float32 rate on an
AVX512-BF16 CPU, benchmarks/bench_train_speed.py); the memory always runs in float32.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from lifelong import metrics
from lifelong.config import config_to_dict
from lifelong.data import EpisodeSampler, OmniglotSplit, load_omniglot
from lifelong.errors import ConfigError
from lifelong.experiments.omniglot.config import OmniglotTrainJob, TrainConfig
from lifelong.experiments.omniglot.evaluate import evaluate_encoder
from lifelong.memory import Memory, MemoryConfig
from lifelong.memory.protocol import KeyValueMemory
from lifelong.models import build_encoder
from lifelong.models.checkpoint import save_encoder
from lifelong.runtime.context import TrainContext
from lifelong.runtime.fast_encoder import FastEncoder
from lifelong.runtime.precision import resolve_precision
from lifelong.runtime.progress import TrainingProgress
from lifelong.runtime.threads import torch_threads


class StepLogger(Protocol):
    """Where training metrics go (an MLflow run, or nothing)."""

    def log_metrics(self, values: dict[str, float], step: int) -> None: ...


@dataclass
class TrainResult:
    """What a training run produced."""

    checkpoint: Path
    steps: int
    wall_s: float
    images_per_s: float
    last_metrics: dict[str, float]
    memory_tags: dict[str, str] = field(default_factory=dict)  # the named memory trained against


def split_validation(split: OmniglotSplit, characters: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Holds out whole characters (all their rotations) of the background split.

    Args:
        split: The background split, classes "Alphabet/characterNN/rotDDD".
        characters: How many characters to hold out (0: none).
        seed: Which ones (a seeded random choice).

    Returns:
        (training images [C_train, n, H, W], validation images [C_val, n, H, W]); the latter
        empty when characters is 0.
    """
    names = [name.rsplit("/rot", 1)[0] for name in split.class_names]
    unique = sorted(set(names))
    if characters >= len(unique):
        raise ConfigError(f"cannot hold out {characters} of {len(unique)} characters")
    held = set(np.random.default_rng(seed).permutation(len(unique))[:characters].tolist())
    held_names = {unique[i] for i in held}
    is_val = np.array([n in held_names for n in names])
    return split.images[~is_val], split.images[is_val]


def train_step(encoder: torch.nn.Module, memory: Memory, x: torch.Tensor,
               y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward pass of one episode batch: encode everything, then L memory steps.

    Args:
        encoder: [n, 1, H, W] -> [n, key_dim].
        memory: A Memory with at least L * B slots; cleared here.
        x: [L, B, 1, H, W] images; y: [L, B] labels (disjoint per episode).

    Returns:
        (loss: scalar, summed over steps; correct: [L, B] bool predictions before each update)
    """
    memory.clear()
    return lifelong_step(encoder, memory, x, y)


def lifelong_step(encoder: torch.nn.Module, memory: KeyValueMemory, x: torch.Tensor,
                  y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``train_step`` without clearing: the memory (local or shared) keeps what it holds.

    Args:
        memory: Any memory (``Memory`` or ``ShardedMemory``).
        y: [L, B] labels: class ids, the same for a class in every episode and step.
    """
    length, batch = y.shape
    # float32 for the memory whatever precision the encoder ran in (FastEncoder casts already)
    emb = encoder(x.reshape(length * batch, *x.shape[2:])).reshape(length, batch, -1).float()
    losses = []
    correct = torch.empty(length, batch, dtype=torch.bool)
    with torch_threads(1):
        for t in range(length):
            out = memory.query(emb[t], y[t])
            losses.append(out.loss)
            correct[t] = out.correct
    return torch.stack(losses).sum(), correct


def _lr_factor(cfg: TrainConfig, progress: float) -> float:
    if cfg.lr_schedule == "constant":
        return 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr_final_fraction + (1 - cfg.lr_final_fraction) * cosine


def _build_memory(job: OmniglotTrainJob, ctx: TrainContext, batch: int, num_classes: int):
    cfg = job.train
    if cfg.mode == "episodic":  # B episodes with disjoint labels: no eviction within a batch
        return job.memory.build(key_dim=job.model.key_dim,
                                num_slots=cfg.way * cfg.presentations * batch,
                                num_values=cfg.way * batch, seed=cfg.seed + ctx.rank)
    if ctx.shared_memory is not None:
        return ctx.shared_memory
    return job.memory.build(key_dim=job.model.key_dim, num_slots=job.shared_memory.num_slots,
                            num_values=num_classes, seed=cfg.seed)


def train_omniglot(job: OmniglotTrainJob, logger: StepLogger | None = None,
                   background: OmniglotSplit | None = None, progress: bool = True,
                   ctx: TrainContext | None = None) -> TrainResult:
    """Trains an encoder with the memory loss on Omniglot background episodes.

    Args:
        job: The configuration; ``job.train.mode`` "episodic" clears a local memory per episode
            batch, "lifelong" trains against one memory that is never cleared (labels are
            class ids).
        logger: Receives metrics by step (e.g. an MLflow run); None logs nothing.
        background: The background split (loaded from job.data when None; tests pass
            synthetic ones).
        progress: Show a tqdm bar with the loss and running 1-shot accuracy.
        ctx: How this rank is wired (DDP, shared memory, checkpoints, resume); None: alone.

    Returns:
        Where the final checkpoint is and how the run went.
    """
    cfg = job.train
    ctx = ctx or TrainContext()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if background is None:
        background = load_omniglot("background", root=job.data.root,
                                   cache_dir=job.data.cache_dir, progress=progress)
    train_images, val_images = split_validation(background, cfg.validation_characters, cfg.seed)
    if cfg.episodes_per_batch % ctx.world_size:
        raise ConfigError(f"train.episodes_per_batch ({cfg.episodes_per_batch}) must be a "
                          f"multiple of the {ctx.world_size} workers")
    batch = cfg.episodes_per_batch // ctx.world_size
    encoder = build_encoder(job.model.encoder, job.model.key_dim, job.model.dropout)
    resume = ctx.resume or {}
    if resume:
        encoder.load_state_dict(resume["encoder"])
    if cfg.channels_last:  # before DDP wraps it: DDP's gradient buckets follow the layout
        encoder = encoder.to(memory_format=torch.channels_last)
    model = ctx.prepare_model(encoder)
    device = "cuda" if next(encoder.parameters()).is_cuda else "cpu"
    precision = resolve_precision(cfg.precision, device)
    runner = FastEncoder(model, precision, cfg.channels_last, cfg.compile, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
    step, elapsed_before = resume.get("step", 0), resume.get("elapsed_s", 0.0)
    # Each rank its own episodes; a resumed run draws new ones (seeded by the step it resumes at).
    sampler = EpisodeSampler(train_images, cfg.way, cfg.presentations,
                             cfg.seed + 1_000_003 * ctx.rank + step)
    memory = _build_memory(job, ctx, batch, train_images.shape[0])
    length = cfg.way * cfg.presentations
    images_per_step = length * cfg.episodes_per_batch
    checkpoint = Path(job.output_dir) / "encoder.pt"
    meta = {"config": config_to_dict(job)}

    def save(step: int, stats: dict[str, float]) -> None:
        if ctx.save is not None:
            ctx.save(step, {"encoder": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                            "step": step, "elapsed_s": elapsed_before + time.perf_counter() - start,
                            "meta": meta}, stats)
        elif ctx.rank == 0:
            save_encoder(checkpoint, encoder, encoder_name=job.model.encoder,
                         key_dim=job.model.key_dim, dropout=job.model.dropout,
                         extra={**meta, "step": step})

    max_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
    start = time.perf_counter()
    ema: dict[str, float] = {}
    last: dict[str, float] = {}
    model.train()
    # Minutes of the budget when there is one, else steps; into a log file (a background or Ray
    # job) the bar is redrawn every 30 s, not 10 times a second.
    bar = TrainingProgress(cfg.steps, cfg.max_minutes, step=step, elapsed_s=elapsed_before,
                           desc="train", disable=not progress or ctx.rank != 0)
    try:
        while step < cfg.steps:
            elapsed = elapsed_before + time.perf_counter() - start
            if ctx.any_rank(elapsed >= max_s):
                break
            lr = cfg.lr * _lr_factor(cfg, max(step / cfg.steps, elapsed / max_s))
            for group in optimizer.param_groups:
                group["lr"] = lr
            ep = sampler.sample(batch)
            if cfg.mode == "episodic":
                loss, correct = train_step(runner, memory, ep.x, ep.y)
            else:
                loss, correct = lifelong_step(runner, memory, ep.x, ep.classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            optimizer.step()
            step += 1
            stats = {metrics.TRAIN_LOSS: float(loss.detach()) / length}
            for k in (0, 1, 2):
                if k < cfg.presentations:
                    stats[metrics.shot_metric(metrics.TRAIN, None, k)] = \
                        float(correct[ep.shot == k].float().mean())
            for key, value in stats.items():  # smoothed for the bar and the logs
                ema[key] = value if key not in ema else 0.95 * ema[key] + 0.05 * value
            bar.update(step, elapsed_before + time.perf_counter() - start,
                       loss=f"{ema[metrics.TRAIN_LOSS]:.4f}",
                       acc1=f"{ema[metrics.shot_metric(metrics.TRAIN, None, 1)]:.3f}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter() - start
                last = {**ema, metrics.TRAIN_LR: lr, metrics.TRAIN_GRAD_NORM: grad_norm,
                        metrics.TRAIN_ELAPSED_S: elapsed_before + now,
                        metrics.TRAIN_IMAGES_PER_S: (step - resume.get("step", 0))
                        * images_per_step / now}
                if logger is not None:
                    logger.log_metrics(last, step)
            if cfg.val_every and len(val_images) and step % cfg.val_every == 0 and ctx.rank == 0:
                val = validate(encoder, val_images, cfg, job.memory)
                last.update(val)
                bar.write(f"step {step} " + " ".join(f"{k}={v:.4f}" for k, v in val.items()))
                if logger is not None:
                    logger.log_metrics(val, step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save(step, last)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    save(step, last)
    done = step - resume.get("step", 0)
    return TrainResult(checkpoint=checkpoint, steps=step, wall_s=wall,
                       images_per_s=done * images_per_step / max(wall, 1e-9), last_metrics=last)


def validate(encoder: torch.nn.Module, images: np.ndarray, cfg: TrainConfig,
             memory: MemoryConfig) -> dict[str, float]:
    """1-shot accuracy on held-out background classes, val_episodes per way in val_ways."""
    out: dict[str, float] = {}
    for way in cfg.val_ways:
        if way > images.shape[0]:
            continue
        acc = evaluate_encoder(encoder, images, way=way, presentations=2,
                               episodes=cfg.val_episodes, seed=cfg.seed + 1, memory=memory,
                               progress=False)
        out[metrics.shot_metric(metrics.VAL, way, 1)] = acc.mean(1)
    return out
