"""The stream job's configuration (jobs/configs/stream.yaml), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from lifelong.config import check_int
from lifelong.distributed.spec import check_name
from lifelong.errors import ConfigError, MemoryNameError
from lifelong.training.omniglot import TrackingConfig


def _name(section: str, name: object) -> None:
    try:
        check_name(name)
    except MemoryNameError as exc:
        raise ConfigError(f"{section}.name: {exc}") from None


@dataclass(frozen=True)
class StreamSettings:
    """How the job reads and scores the stream (section ``stream``).

    Attributes:
        source: The segment folder or pyarrow filesystem URI.
        name: The job's name: its writer id at the memory is ``stream:<name>`` and its commit
            record lives under ``state``. Jobs feeding one memory need distinct names.
        state: Folder (or URI) of the commit record (None: ``<memory>/streams/<name>``, beside
            the memory's own files).
        quarantine: Where bad segments are copied with their reason (None: ``<state>/quarantine``).
        payload_format: The format segments must have (None: the first segment's).
        batch_size: Examples per micro-batch (one query and one write round trip).
        poll_s: Seconds between looks for new segments when the job has caught up.
        idle_timeout_s: Stop after this long without a new segment (None: run forever).
        max_examples: Stop once this many examples were applied in all (None: no limit).
        log_every: Examples between MLflow log points (and k-shot intervals).
        plot_every: Examples between updates of the k-shot plot artifact (also at the end).
        windows: Sliding windows of the prequential accuracy, in examples.
        shots: k of the k-shot accuracies logged and plotted.
        max_shot: Appearances counted apart (more are pooled).
    """

    source: str | None = None
    name: str = "stream"
    state: str | None = None
    quarantine: str | None = None
    payload_format: str | None = None
    batch_size: int = 64
    poll_s: float = 1.0
    idle_timeout_s: float | None = None
    max_examples: int | None = None
    log_every: int = 1000
    plot_every: int = 20_000
    windows: tuple[int, ...] = (1000, 10_000)
    shots: tuple[int, ...] = (0, 1, 2, 3, 5, 10)
    max_shot: int = 10

    def __post_init__(self) -> None:
        if not self.source:
            raise ConfigError("stream.source is required: the segment folder or URI")
        _name("stream", self.name)
        for name in ("batch_size", "log_every", "plot_every", "max_shot"):
            check_int(f"stream.{name}", getattr(self, name))
        if self.max_examples is not None:
            check_int("stream.max_examples", self.max_examples)
        if not self.poll_s > 0:
            raise ConfigError(f"stream.poll_s must be > 0, got {self.poll_s!r}")
        if self.idle_timeout_s is not None and not self.idle_timeout_s >= 0:
            raise ConfigError("stream.idle_timeout_s must be >= 0 or null")
        windows, shots = tuple(self.windows), tuple(self.shots)
        object.__setattr__(self, "windows", windows)
        object.__setattr__(self, "shots", shots)
        if not windows or any(not isinstance(w, int) or w < 1 for w in windows):
            raise ConfigError(f"stream.windows must be ints >= 1, got {list(windows)}")
        if any(not isinstance(k, int) or not 0 <= k <= self.max_shot for k in shots):
            raise ConfigError(f"stream.shots must lie in [0, max_shot={self.max_shot}]")


@dataclass(frozen=True)
class StreamMemoryConfig:
    """The named memory the stream feeds (section ``memory``); created when missing with
    these sizes (the key size is the encoder's), attached to by name otherwise.

    Attributes:
        name, storage: The memory (storage None: ``$LIFELONG_MEMORY_STORAGE`` or
            ~/.lifelong/memories).
        create: Create the memory when it does not exist (False: it must).
        num_slots, shards, num_values: Its size, shard actors and label range [0, V).
        choose_k, alpha, age_noise, snapshot_every, num_cpus, seed: As ``MemorySpec``.
    """

    name: str = "omniglot-stream"
    storage: str | None = None
    create: bool = True
    num_slots: int = 65536
    shards: int = 2
    num_values: int = 2636  # the Omniglot evaluation characters x4 rotations
    choose_k: int = 256
    alpha: float = 0.1
    age_noise: float = 8.0
    snapshot_every: int = 1000
    num_cpus: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        _name("memory", self.name)
        for name in ("num_slots", "shards", "num_values", "choose_k", "snapshot_every"):
            check_int(f"memory.{name}", getattr(self, name))
        check_int("memory.seed", self.seed, minimum=0)
        if not self.alpha > 0 or not self.age_noise >= 0 or not self.num_cpus >= 0:
            raise ConfigError("memory.alpha must be > 0, age_noise and num_cpus >= 0")


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder of image payloads (section ``encoder``): a checkpoint path or an MLflow run
    that logged one; vectors need neither."""

    checkpoint: str | None = None
    run_id: str | None = None

    def __post_init__(self) -> None:
        if self.checkpoint is not None and self.run_id is not None:
            raise ConfigError("give at most one of encoder.checkpoint and encoder.run_id")


@dataclass(frozen=True)
class StreamJob:
    """jobs/configs/stream.yaml: ``lifelong stream run``.

    Attributes:
        ray_address: The cluster holding the memory (None: $RAY_ADDRESS, else an embedded
            local Ray whose shards stop with the job; the memory's files keep its state).
        threads: Torch threads for the encoder (0: torch's default).
    """

    stream: StreamSettings = field(default_factory=StreamSettings)
    memory: StreamMemoryConfig = field(default_factory=StreamMemoryConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="stream"))
    ray_address: str | None = None
    threads: int = 0

    def __post_init__(self) -> None:
        check_int("threads", self.threads, minimum=0)
