"""The stream job's configuration (jobs/configs/stream.yaml), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from lifelong.config import check_int
from lifelong.distributed.spec import SharedMemoryConfig, check_name
from lifelong.errors import ConfigError, MemoryNameError
from lifelong.memory import MemoryConfig
from lifelong.tracking.config import TrackingConfig


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
            raise ConfigError("is required: the segment folder or URI", key="source")
        try:
            check_name(self.name)
        except MemoryNameError as exc:
            raise ConfigError(str(exc), key="name") from None
        for name in ("batch_size", "log_every", "plot_every", "max_shot"):
            check_int(name, getattr(self, name))
        if self.max_examples is not None:
            check_int("max_examples", self.max_examples)
        if not self.poll_s > 0:
            raise ConfigError(f"must be > 0, got {self.poll_s!r}", key="poll_s")
        if self.idle_timeout_s is not None and not self.idle_timeout_s >= 0:
            raise ConfigError("must be >= 0 or null", key="idle_timeout_s")
        windows, shots = tuple(self.windows), tuple(self.shots)
        object.__setattr__(self, "windows", windows)
        object.__setattr__(self, "shots", shots)
        if not windows or any(not isinstance(w, int) or w < 1 for w in windows):
            raise ConfigError(f"must be ints >= 1, got {list(windows)}", key="windows")
        if any(not isinstance(k, int) or not 0 <= k <= self.max_shot for k in shots):
            raise ConfigError(f"must lie in [0, max_shot={self.max_shot}]", key="shots")


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder of image payloads (section ``encoder``): a checkpoint path or MLflow model
    URI (``models:/name/version``, ``runs:/id/encoder``), or an MLflow run that logged one;
    vectors need neither."""

    checkpoint: str | None = None
    run_id: str | None = None

    def __post_init__(self) -> None:
        if self.checkpoint is not None and self.run_id is not None:
            raise ConfigError("give at most one of encoder.checkpoint and encoder.run_id")


@dataclass(frozen=True)
class StreamJob:
    """jobs/configs/stream.yaml: ``lifelong stream run``.

    Attributes:
        memory: The memory's hyper-parameters (of a memory the job creates).
        shared_memory: The named memory the stream feeds; created when missing with these
            sizes (the key size is the encoder's, or a vector stream's), attached to by name
            otherwise. ``num_values`` is its label range [0, V).
        ray_address: The cluster holding the memory (None: $RAY_ADDRESS, else an embedded
            local Ray whose shards stop with the job; the memory's files keep its state).
        threads: Torch threads for the encoder (0: torch's default).
    """

    stream: StreamSettings = field(default_factory=StreamSettings)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    shared_memory: SharedMemoryConfig = field(default_factory=lambda: SharedMemoryConfig(
        name="omniglot-stream", num_values=2636))  # the evaluation characters x4 rotations
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="stream"))
    ray_address: str | None = None
    threads: int = 0

    def __post_init__(self) -> None:
        check_int("threads", self.threads, minimum=0)
