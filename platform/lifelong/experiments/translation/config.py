"""The translation experiment's configs: jobs/configs/train_translation.yaml and
evaluate_translation.yaml, validated on construction (the loader names every bad key by its
path)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lifelong.config import check_int
from lifelong.data.multi30k import SPLIT_SIZES
from lifelong.distributed.spec import SharedMemoryConfig
from lifelong.errors import ConfigError
from lifelong.memory import MemoryConfig
from lifelong.models.translator import TranslatorConfig
from lifelong.runtime.config import RayTrainConfig
from lifelong.tracking.config import TrackingConfig


@dataclass(frozen=True)
class TranslationData:
    """Section ``data``: vocabulary sizes, the longest training pair kept (in pieces), and
    optionally only the first ``max_pairs`` training pairs (quick tests).

    heldout_words: words whose two training pairs are held out of training for the one-shot
    evaluation (one shown, one asked; ``heldout.hold_out``), drawn among words held in
    2..heldout_max_count training sources, seeded by train.seed. 0: none.
    """

    vocab_size: int = 8000
    max_len: int = 64
    max_pairs: int | None = None
    root: str | None = None
    heldout_words: int = 0
    heldout_max_count: int = 7

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, minimum=8)
        check_int("max_len", self.max_len, minimum=2)
        check_int("heldout_words", self.heldout_words, minimum=0)
        check_int("heldout_max_count", self.heldout_max_count, minimum=2)
        if self.max_pairs is not None:
            check_int("max_pairs", self.max_pairs)


@dataclass(frozen=True)
class TranslationTrain:
    """Section ``train``: sentences per batch, bounds on steps and minutes, Adam.

    show_per_batch: with the memory, up to this many *other* training pairs holding a word of
    the batch that is rare in training (show_min_count..show_max_count source sentences) are
    written into the memory before each step, with no gradient: show-then-ask training, the
    one-shot protocol's situation (``lifelong.experiments.translation.showings``). 0: off. At the batch
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
            check_int(name, getattr(self, name))
        check_int("threads", self.threads, minimum=0)
        check_int("show_per_batch", self.show_per_batch, minimum=0)
        check_int("show_min_count", self.show_min_count, minimum=2)
        check_int("show_max_count", self.show_max_count, minimum=self.show_min_count)
        check_int("blind_max_count", self.blind_max_count, minimum=0)
        if not self.lr > 0 or not self.grad_clip > 0:
            raise ConfigError("and train.grad_clip must be > 0", key="lr")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError("must be > 0 or null", key="max_minutes")


@dataclass(frozen=True)
class TranslationJob:
    """jobs/configs/train_translation.yaml.

    ``memory`` holds the decoder memory's hyper-parameters (values: target subword ids);
    ``shared_memory`` its size, and with ``ray.enabled`` the named memory every worker shares.
    """

    data: TranslationData = field(default_factory=TranslationData)
    model: TranslatorConfig = field(default_factory=TranslatorConfig)
    memory: MemoryConfig = field(default_factory=lambda: MemoryConfig(choose_k=64))
    train: TranslationTrain = field(default_factory=TranslationTrain)
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="translation"))
    ray: RayTrainConfig = field(default_factory=lambda: RayTrainConfig(enabled=False))
    shared_memory: SharedMemoryConfig = field(
        default_factory=lambda: SharedMemoryConfig(name="translation-memory", num_slots=16384))
    output_dir: str = "runs/translation"

    def __post_init__(self) -> None:
        if self.shared_memory.num_values is not None:
            raise ConfigError("shared_memory.num_values is the target vocabulary "
                              "(data.vocab_size): leave it unset")
        if self.ray.enabled and self.train.batch_size % self.ray.num_workers:
            raise ConfigError(f"train.batch_size {self.train.batch_size} must split evenly "
                              f"over ray.num_workers {self.ray.num_workers}")


RARE_POOLS = ("test", "val", "heldout")  # where one-shot items are asked (``oneshot``)
ALL_SPLITS = "all"  # ``split: all``: every official test set (multi30k.TEST_SPLITS)


@dataclass(frozen=True)
class TranslationEvalJob:
    """Attributes:
        checkpoint: translator.pt written by ``lifelong train translation``.
        run_id: an MLflow run to log into (e.g. the training run; None: a new run).
        split: the split translated: one of Multi30k's (``TEST_SPLITS``: the four official
            test sets), or ``all``: each test set found (one BLEU line each); beam: beam size
            (1: greedy); max_sentences: a prefix of each split (None: all of it).
        rare_counts: the protocol's max_train_count values, one table each.
        rare_pools: where the one-shot items are asked (``oneshot``): ``test`` (the first
            split), ``val``, ``heldout`` (the held-out training pairs the checkpoint records).
        diagnose: print and log why shown words are not used (``diagnose``), for the largest
            of rare_counts.
    """

    checkpoint: str | None = None
    run_id: str | None = None
    split: str = "test_2016_flickr"
    beam: int = 5
    max_sentences: int | None = None
    rare_counts: tuple[int, ...] = (1, 5)
    rare_pools: tuple[str, ...] = RARE_POOLS
    diagnose: bool = True
    data_root: str | None = None
    threads: int = 0
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="translation"))

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ConfigError("give the translator: checkpoint=PATH (or --checkpoint)")
        valid = (*SPLIT_SIZES, ALL_SPLITS)
        if self.split not in valid:
            raise ConfigError(f"{self.split!r} is not a Multi30k split; valid: "
                              f"{', '.join(valid)}", key="split")
        check_int("beam", self.beam)
        check_int("threads", self.threads, minimum=0)
        if self.max_sentences is not None:
            check_int("max_sentences", self.max_sentences)
        object.__setattr__(self, "rare_counts", tuple(self.rare_counts))
        object.__setattr__(self, "rare_pools", tuple(self.rare_pools))
        for count in self.rare_counts:
            check_int("rare_counts", count, minimum=0)
        unknown = [p for p in self.rare_pools if p not in RARE_POOLS]
        if unknown or len(set(self.rare_pools)) != len(self.rare_pools):
            raise ConfigError(f"must be distinct names among {', '.join(RARE_POOLS)}, got "
                              f"{list(self.rare_pools)!r}", key="rare_pools")
