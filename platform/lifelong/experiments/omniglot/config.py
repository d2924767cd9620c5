"""The Omniglot experiment's configs: jobs/configs/train_omniglot.yaml and
evaluate_omniglot.yaml, validated on construction (the loader names every bad key by its path)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lifelong.config import check_int
from lifelong.distributed.spec import SharedMemoryConfig
from lifelong.errors import ConfigError
from lifelong.experiments.omniglot.evaluate import EvalSettings
from lifelong.experiments.omniglot.retention import RetentionSettings
from lifelong.memory import MemoryConfig
from lifelong.models import ENCODER_NAMES
from lifelong.runtime.config import RayTrainConfig
from lifelong.runtime.precision import PRECISIONS
from lifelong.tracking.config import TrackingConfig


@dataclass(frozen=True)
class ModelConfig:
    """Encoder choice. dropout is the drop probability (the paper keeps 0.3: dropout 0.7)."""

    encoder: str = "paper"
    key_dim: int = 128
    dropout: float = 0.7

    def __post_init__(self) -> None:
        if self.encoder not in ENCODER_NAMES:
            raise ConfigError(f"model.encoder must be one of {ENCODER_NAMES}, "
                              f"got {self.encoder!r}")
        check_int("key_dim", self.key_dim)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"must lie in [0, 1), got {self.dropout!r}", key="dropout")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Attributes:
        mode: "episodic" (the paper's protocol: a memory cleared before every episode batch,
            each rank its own) or "lifelong" (one memory, never cleared, labels are class ids;
            under Ray Train the named shared memory every worker writes into).
        episodes_per_batch: B episodes per step, over all workers (each samples
            B / num_workers); in episodic mode they share one memory with disjoint labels.
        way: N classes per training episode.
        presentations: Times each class is shown per episode (L = way * presentations).
        steps: Upper bound on optimizer steps (episode batches).
        max_minutes: Upper bound on wall time of the loop (None: no bound); the learning-rate
            schedule runs on whichever of steps and time is used up faster.
        lr, adam_eps, grad_clip: Adam and clipping at this global gradient norm.
        lr_schedule: "constant" or "cosine" (decays to lr * lr_final_fraction).
        lr_final_fraction: Final learning rate as a fraction of lr under "cosine".
        validation_characters: Background characters (with their 4 rotations) held out for
            validation; 0 trains on all of them.
        val_every: Steps between validations (0: none); val_episodes N-way episodes each for
            every way in val_ways.
        checkpoint_every: Steps between checkpoints (0: only at the end).
        log_every: Steps between metric logs.
        threads: torch intra-op threads (0: leave torch's default).
        seed: Seeds torch, the episode sampler and the validation split.
        precision: The encoder's forward/backward: "float32", "bfloat16" (CPU/CUDA autocast;
            the memory and its loss stay float32) or "auto" (bfloat16 where the CPU flags name
            avx512_bf16 or amx_bf16, or on a CUDA device with bf16; float32 elsewhere).
        channels_last: Run the encoder's convolutions in the channels_last memory format.
        compile: Run the encoder through torch.compile (compiled on the first step, which
            takes that much longer; benchmarks/bench_train_speed.py says whether it pays).
    """

    mode: str = "episodic"
    episodes_per_batch: int = 16
    way: int = 5
    presentations: int = 10
    steps: int = 100_000
    max_minutes: float | None = None
    lr: float = 1e-3
    adam_eps: float = 1e-4
    grad_clip: float = 5.0
    lr_schedule: str = "cosine"
    lr_final_fraction: float = 0.05
    validation_characters: int = 50
    val_every: int = 500
    val_episodes: int = 200
    val_ways: tuple[int, ...] = (5, 20)
    checkpoint_every: int = 500
    log_every: int = 20
    threads: int = 0
    seed: int = 0
    precision: str = "float32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"must be one of {PRECISIONS}, got {self.precision!r}",
                              key="precision")
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"must be true or false, got {getattr(self, name)!r}", key=name)
        if self.mode not in ("episodic", "lifelong"):
            raise ConfigError(f"must be 'episodic' or 'lifelong', got {self.mode!r}", key="mode")
        for name in ("episodes_per_batch", "way", "presentations", "steps", "val_episodes",
                     "log_every"):
            check_int(name, getattr(self, name))
        for name in ("validation_characters", "val_every", "checkpoint_every", "threads", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        if self.presentations < 2:
            raise ConfigError("must be >= 2 (one-shot needs a second sight)", key="presentations")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"must be > 0 or null, got {self.max_minutes!r}", key="max_minutes")
        for name in ("lr", "adam_eps", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"train.lr_schedule must be 'constant' or 'cosine', "
                              f"got {self.lr_schedule!r}")
        if not 0 <= self.lr_final_fraction <= 1:
            raise ConfigError("must lie in [0, 1]", key="lr_final_fraction")
        if not self.val_ways or any(isinstance(w, bool) or not isinstance(w, int) or w < 2
                                    for w in self.val_ways):
            raise ConfigError(f"must be ints >= 2, got {self.val_ways!r}", key="val_ways")


@dataclass(frozen=True)
class DataConfig:
    """Where the Omniglot archives and the preprocessed cache are (None: env / defaults)."""

    root: str | None = None
    cache_dir: str | None = None


@dataclass(frozen=True)
class OmniglotTrainJob:
    """The whole training job's configuration (jobs/configs/train_omniglot.yaml)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluation: EvalSettings = field(default_factory=lambda: EvalSettings(episodes=0))
    retention: RetentionSettings = field(
        default_factory=lambda: RetentionSettings(enabled=False))
    ray: RayTrainConfig = field(default_factory=lambda: RayTrainConfig(enabled=False))
    shared_memory: SharedMemoryConfig = field(default_factory=SharedMemoryConfig)
    output_dir: str = "runs/omniglot"

    def __post_init__(self) -> None:
        if self.ray.enabled and self.train.episodes_per_batch % self.ray.num_workers:
            raise ConfigError(f"train.episodes_per_batch ({self.train.episodes_per_batch}) must "
                              f"be a multiple of ray.num_workers ({self.ray.num_workers})")


@dataclass(frozen=True)
class OmniglotEvaluateJob:
    """Evaluation of a trained encoder (jobs/configs/evaluate_omniglot.yaml).

    Exactly one of ``checkpoint`` (a ``.pt`` file) and ``run_id`` (an MLflow run that logged
    an encoder) names the encoder. With ``run_id`` the results join that run.
    """

    checkpoint: str | None = None
    run_id: str | None = None
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="omniglot-eval"))
    threads: int = 0

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.run_id is None):
            raise ConfigError("give exactly one of checkpoint=PATH and run_id=ID")
        if self.evaluation.episodes < 1:
            raise ConfigError("evaluation.episodes must be >= 1")
        check_int("threads", self.threads, minimum=0)
