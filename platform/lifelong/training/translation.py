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

from lifelong.config import check_int
from lifelong.data import load_multi30k
from lifelong.errors import ConfigError
from lifelong.memory import Memory
from lifelong.models.translator import Translator, TranslatorConfig
from lifelong.models.vocab import PAD, SubwordVocab
from lifelong.training.cluster_config import RayTrainConfig, SharedMemoryConfig
from lifelong.training.context import TrainContext
from lifelong.training.omniglot import TrackingConfig
from lifelong.training.showings import Showings


@dataclass(frozen=True)
class TranslationData:
    """Section ``data``: vocabulary sizes, the longest training pair kept (in pieces), and
    optionally only the first ``max_pairs`` training pairs (quick tests)."""

    vocab_size: int = 8000
    max_len: int = 64
    max_pairs: int | None = None
    root: str | None = None

    def __post_init__(self) -> None:
        check_int("data.vocab_size", self.vocab_size, minimum=8)
        check_int("data.max_len", self.max_len, minimum=2)
        if self.max_pairs is not None:
            check_int("data.max_pairs", self.max_pairs)


@dataclass(frozen=True)
class TranslationMemory:
    """Section ``memory``: the decoder's memory (values: target subword ids)."""

    num_slots: int = 16384
    choose_k: int = 64
    alpha: float = 0.1
    age_noise: float = 8.0

    def __post_init__(self) -> None:
        check_int("memory.num_slots", self.num_slots)
        check_int("memory.choose_k", self.choose_k)
        if not self.alpha > 0 or not self.age_noise >= 0:
            raise ConfigError("memory.alpha must be > 0 and age_noise >= 0")


@dataclass(frozen=True)
class TranslationTrain:
    """Section ``train``: sentences per batch, bounds on steps and minutes, Adam.

    show_per_batch: with the memory, up to this many *other* training pairs holding a word of
    the batch that is rare in training (show_min_count..show_max_count source sentences) are
    written into the memory before each step, with no gradient: show-then-ask training, the
    one-shot protocol's situation (``lifelong.training.showings``). 0: off. At the batch
    sentence's target tokens the shown target also holds and that occur in at most
    blind_max_count training targets, the decoder is blind to the true token (0: never).
    """

    batch_size: int = 64
    steps: int = 100_000
    max_minutes: float | None = 60.0
    lr: float = 1e-3
    grad_clip: float = 5.0
    log_every: int = 50
    threads: int = 0
    seed: int = 0
    show_per_batch: int = 16
    show_min_count: int = 2
    show_max_count: int = 20
    blind_max_count: int = 50

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "log_every"):
            check_int(f"train.{name}", getattr(self, name))
        check_int("train.threads", self.threads, minimum=0)
        check_int("train.show_per_batch", self.show_per_batch, minimum=0)
        check_int("train.show_min_count", self.show_min_count, minimum=2)
        check_int("train.show_max_count", self.show_max_count, minimum=self.show_min_count)
        check_int("train.blind_max_count", self.blind_max_count, minimum=0)
        if not self.lr > 0 or not self.grad_clip > 0:
            raise ConfigError("train.lr and train.grad_clip must be > 0")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError("train.max_minutes must be > 0 or null")


@dataclass(frozen=True)
class TranslationJob:
    """jobs/configs/train_translation.yaml."""

    data: TranslationData = field(default_factory=TranslationData)
    model: TranslatorConfig = field(default_factory=TranslatorConfig)
    memory: TranslationMemory = field(default_factory=TranslationMemory)
    train: TranslationTrain = field(default_factory=TranslationTrain)
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="translation"))
    ray: RayTrainConfig = field(default_factory=lambda: RayTrainConfig(enabled=False))
    shared_memory: SharedMemoryConfig = field(
        default_factory=lambda: SharedMemoryConfig(name="translation-memory", num_slots=16384))
    output_dir: str = "runs/translation"

    def __post_init__(self) -> None:
        if self.ray.enabled and self.train.batch_size % self.ray.num_workers:
            raise ConfigError(f"train.batch_size {self.train.batch_size} must split evenly "
                              f"over ray.num_workers {self.ray.num_workers}")


@dataclass
class TranslationModel:
    """What a checkpoint holds: the model, both vocabularies and the memory (or None)."""

    model: Translator
    source_vocab: SubwordVocab
    target_vocab: SubwordVocab
    memory: Memory | None

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        c = self.model.config
        payload = {"format_version": 1, "model_config": c.__dict__,
                   "source_vocab": self.source_vocab.model,
                   "target_vocab": self.target_vocab.model,
                   "state_dict": self.model.state_dict(),
                   "memory": self.memory.state_dict() if self.memory is not None else None,
                   "memory_config": _memory_args(self.memory), "extra": extra or {}}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TranslationModel":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"translator checkpoint {path} does not exist")
        p = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(p, dict) or p.get("format_version") != 1:
            raise ConfigError(f"{path} is not a translator checkpoint")
        sv, tv = SubwordVocab(p["source_vocab"]), SubwordVocab(p["target_vocab"])
        # checkpoints from before query_source / gate_on_memory had neither
        config = {"query_source": False, "gate_on_memory": False, **p["model_config"]}
        model = Translator(len(sv), len(tv), TranslatorConfig(**config))
        model.load_state_dict(p["state_dict"])
        model.eval()
        memory = None
        if p["memory"] is not None:
            memory = Memory(**p["memory_config"])
            memory.load_state_dict(p["memory"])
        return cls(model, sv, tv, memory)


def _memory_args(memory: Memory | None) -> dict | None:
    if memory is None:
        return None
    if not isinstance(memory, Memory):  # a ShardedMemory: its spec
        s = memory.spec
        return {"key_dim": s.key_dim, "num_slots": s.num_slots, "num_values": s.num_values,
                "choose_k": s.choose_k, "alpha": s.alpha, "age_noise": s.age_noise}
    return {"key_dim": memory.key_dim, "num_slots": memory.num_slots,
            "num_values": memory.num_values, "choose_k": memory.choose_k,
            "alpha": memory.alpha, "age_noise": memory.age_noise}


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
    texts), model and memory."""
    train = load_multi30k("train", root=job.data.root, progress=progress)
    sources, targets = train.source[:job.data.max_pairs], train.target[:job.data.max_pairs]
    sv = SubwordVocab.train(sources, job.data.vocab_size)
    tv = SubwordVocab.train(targets, job.data.vocab_size)
    src, tgt = sv.encode(sources), tv.encode(targets)
    keep = [i for i in range(len(src)) if max(len(src[i]), len(tgt[i])) <= job.data.max_len]
    torch.manual_seed(job.train.seed)
    model = Translator(len(sv), len(tv), job.model)
    memory = None
    if job.model.use_memory:
        m = job.memory
        memory = Memory(key_dim=job.model.key_dim, num_slots=m.num_slots, num_values=len(tv),
                        choose_k=m.choose_k, alpha=m.alpha, age_noise=m.age_noise,
                        seed=job.train.seed)
    return (TranslationModel(model, sv, tv, memory), [src[i] for i in keep],
            [tgt[i] for i in keep], [sources[i] for i in keep])


@dataclass
class TranslationTrainResult:
    checkpoint: Path
    steps: int
    wall_s: float
    sentences_per_s: float


def train_translation(job: TranslationJob, logger=None, progress: bool = True,
                      ctx: TrainContext | None = None) -> TranslationTrainResult | None:
    """Trains until train.steps or train.max_minutes.

    Alone (``ctx`` None) it writes ``<output_dir>/translator.pt`` and returns where. As one
    rank of a Ray Train group (``ctx`` from ``translation_ray``) each rank takes every
    world_size-th batch of the same shuffled order (batch_size / world_size sentences each),
    the model is DDP-wrapped, the memory is the shared one, and the final state goes to
    ``ctx.save``; it returns None.
    """
    from tqdm import tqdm

    ctx = ctx or TrainContext()
    t = job.train
    if t.threads:
        torch.set_num_threads(t.threads)
    tm, src, tgt, texts = build(job, progress and ctx.rank == 0)
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
    bar = tqdm(total=t.steps, desc="train translation", unit="step",
               disable=not progress or ctx.rank != 0)
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
            bar.update(1)
            if step % t.log_every == 0:
                n = sums["tokens"]
                values = {"train.nll": sums["nll"] / n, "train.memory_loss":
                          sums["memory_loss"] / n, "train.epoch": epoch,
                          "train.sentences_per_s": sentences / (time.perf_counter() - start)}
                bar.set_postfix(nll=f"{values['train.nll']:.3f}", epoch=epoch)
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
    extra = {"steps": step, "wall_s": wall, "epochs": epoch}
    if ctx.save is not None:
        ctx.save(step, {"model": tm.model.state_dict(), "optimizer": opt.state_dict(),
                        "step": step, "elapsed_s": wall, "meta": extra,
                        "source_vocab": tm.source_vocab.model,
                        "target_vocab": tm.target_vocab.model},
                 {"train.steps": step})
        return None
    path = tm.save(Path(job.output_dir) / "translator.pt", extra=extra)
    return TranslationTrainResult(path, step, wall, sentences / wall)
