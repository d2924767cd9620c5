"""Training the Multi30k English-German translator with (or without) the life-long memory.

``jobs/train_translation.py`` / ``lifelong train translation``. Subword vocabularies are trained
on the training split only and saved in the checkpoint with the model and the memory's state.
Batches hold sentences of similar length (shuffled pools sorted by length). The memory is never
cleared: every training step writes its target tokens into it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lifelong import metrics
from lifelong.data import load_multi30k
from lifelong.experiments.translation.config import TranslationJob
from lifelong.experiments.translation.heldout import held_out_pairs, hold_out
from lifelong.experiments.translation.showings import Showings
from lifelong.models.checkpoint import TRANSLATOR_FILE, TranslationModel
from lifelong.models.translator import Translator
from lifelong.models.vocab import PAD, SubwordVocab
from lifelong.runtime.context import TrainContext
from lifelong.runtime.progress import TrainingProgress


def pad_batch(ids: list[list[int]]) -> torch.Tensor:
    """Token id lists -> [B, max length] int64, PAD-padded."""
    out = torch.full((len(ids), max(map(len, ids))), PAD, dtype=torch.long)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   pool: int = 50) -> list[np.ndarray]:
    """One epoch of batches of indices: shuffled, pooled by ``pool`` batches, each pool
    sorted by length (little padding), the batches shuffled again."""
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), pool * batch_size):
        chunk = order[start:start + pool * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def build(job: TranslationJob, progress: bool = True):
    """Vocabularies (training split only), the training pairs kept (encoded, and their source
    texts), model, memory and the held-out words (``heldout``: their pairs are neither in the
    vocabularies' text nor trained on)."""
    train = load_multi30k("train", root=job.data.root, progress=progress)
    sources, targets = train.source[:job.data.max_pairs], train.target[:job.data.max_pairs]
    heldout = hold_out(sources, job.data.heldout_words, job.data.heldout_max_count,
                       job.train.seed)
    removed = held_out_pairs(heldout)
    trained = [i for i in range(len(sources)) if i not in removed]
    sources, targets = [sources[i] for i in trained], [targets[i] for i in trained]
    sv = SubwordVocab.train(sources, job.data.vocab_size)
    tv = SubwordVocab.train(targets, job.data.vocab_size)
    src, tgt = sv.encode(sources), tv.encode(targets)
    keep = [i for i in range(len(src)) if max(len(src[i]), len(tgt[i])) <= job.data.max_len]
    torch.manual_seed(job.train.seed)
    model = Translator(len(sv), len(tv), job.model, source_word_starts=sv.word_starts())
    memory = None
    if job.model.use_memory:
        memory = job.memory.build(key_dim=job.model.key_dim,
                                  num_slots=job.shared_memory.num_slots, num_values=len(tv),
                                  seed=job.train.seed)
    return (TranslationModel(model, sv, tv, memory), [src[i] for i in keep],
            [tgt[i] for i in keep], [sources[i] for i in keep], heldout)


@dataclass
class TranslationTrainResult:
    checkpoint: Path
    steps: int
    wall_s: float
    sentences_per_s: float
    memory_tags: dict[str, str] = field(default_factory=dict)  # the named memory trained against


def train_translation(job: TranslationJob, logger=None, progress: bool = True,
                      ctx: TrainContext | None = None) -> TranslationTrainResult | None:
    """Trains until train.steps or train.max_minutes.

    Alone (``ctx`` None) it writes ``<output_dir>/translator.pt`` and returns where. As one
    rank of a Ray Train group (``ctx`` from the runtime's driver, ``on_ray``) each rank takes every
    world_size-th batch of the same shuffled order (batch_size / world_size sentences each),
    the model is DDP-wrapped, the memory is the shared one, and the final state goes to
    ``ctx.save``; it returns None.
    """
    ctx = ctx or TrainContext()
    t = job.train
    if t.threads:
        torch.set_num_threads(t.threads)
    tm, src, tgt, texts, heldout = build(job, progress and ctx.rank == 0)
    memory = ctx.shared_memory if ctx.shared_memory is not None else tm.memory
    showings = Showings(texts, tgt, t.show_min_count, t.show_max_count, t.blind_max_count) \
        if memory is not None and t.show_per_batch else None
    model = ctx.prepare_model(tm.model)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    rng = np.random.default_rng(t.seed)
    lengths = np.asarray([len(s) + len(g) for s, g in zip(src, tgt)])
    per_rank = t.batch_size // ctx.world_size
    deadline = time.monotonic() + 60 * t.max_minutes if t.max_minutes else None
    start, step, sentences, epoch = time.perf_counter(), 0, 0, 0
    sums = {"nll": 0.0, "memory_loss": 0.0, "tokens": 0}
    model.train()
    bar = TrainingProgress(t.steps, t.max_minutes, desc="train translation",
                           disable=not progress or ctx.rank != 0)
    shown: dict[str, object] = {}
    stop = False
    while not stop:
        for idx in length_batches(lengths, t.batch_size, rng):
            idx = idx[ctx.rank * per_rank:(ctx.rank + 1) * per_rank]
            if len(idx) == 0:
                idx = np.asarray([0])  # the last short batch: every rank must step
            src_batch = pad_batch([src[i] for i in idx])
            tgt_batch = pad_batch([tgt[i] for i in idx])
            blind = None
            if showings is not None:
                plan = showings.plan(idx, t.show_per_batch, rng)
                if plan:
                    tm.model.remember(pad_batch([src[j] for _, j in plan]),
                                      pad_batch([tgt[j] for _, j in plan]), memory)
                    blind = showings.blind(idx, plan, tuple(tgt_batch.shape))
            out = model(src_batch, tgt_batch, memory, blind=blind)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            step, sentences = step + 1, sentences + len(idx) * ctx.world_size
            sums["nll"] += out.nll.item() * out.tokens
            sums["memory_loss"] += out.memory_loss.item() * out.tokens
            sums["tokens"] += out.tokens
            bar.update(step, time.perf_counter() - start, **shown)
            if step % t.log_every == 0:
                n = sums["tokens"]
                values = {metrics.TRAIN_NLL: sums["nll"] / n,
                          metrics.TRAIN_MEMORY_LOSS: sums["memory_loss"] / n,
                          metrics.TRAIN_EPOCH: epoch,
                          metrics.TRAIN_SENTENCES_PER_S: sentences / (time.perf_counter() - start)}
                shown = {"nll": f"{values[metrics.TRAIN_NLL]:.3f}", "epoch": epoch}
                if logger is not None:
                    logger.log_metrics(values, step=step)
                sums = {"nll": 0.0, "memory_loss": 0.0, "tokens": 0}
            stop = ctx.any_rank(step >= t.steps or
                                (deadline is not None and time.monotonic() >= deadline))
            if stop:
                break
        epoch += 1
    bar.close()
    wall = time.perf_counter() - start
    extra = {"steps": step, "wall_s": wall, "epochs": epoch,
             "heldout": [h.to_list() for h in heldout]}
    if ctx.save is not None:
        ctx.save(step, {"model": tm.model.state_dict(), "optimizer": opt.state_dict(),
                        "step": step, "elapsed_s": wall, "meta": extra,
                        "source_vocab": tm.source_vocab.model,
                        "target_vocab": tm.target_vocab.model},
                 {metrics.TRAIN_STEPS: step})
        return None
    path = tm.save(Path(job.output_dir) / TRANSLATOR_FILE, extra=extra)
    return TranslationTrainResult(path, step, wall, sentences / wall)
