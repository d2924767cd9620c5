"""The online service's configuration (jobs/configs/serve.yaml), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from lifelong.config import check_int
from lifelong.distributed.spec import SharedMemoryConfig, check_name
from lifelong.errors import ConfigError, MemoryNameError
from lifelong.memory import MemoryConfig
from lifelong.streaming.config import EncoderConfig
from lifelong.streaming.segments import check_format
from lifelong.tracking.config import TrackingConfig


@dataclass(frozen=True)
class ServeSettings:
    """How the service answers (section ``serve``).

    Attributes:
        name: The service's name: its Serve application and the tag of its metrics.
        host, port: Where Serve's HTTP proxy listens (127.0.0.1: this machine only).
        route_prefix: The path the application is served under (``/``: ``/predict`` ...).
        payload_format: The examples' format, as in a stream segment: ``uint8[H,W]`` images
            (need an encoder) or ``float32[D]`` keys (D the memory's key size; no encoder).
            None: ``uint8[28,28]`` with an encoder, else ``float32[<key size>]``.
        state: Folder of the record of request ids (None: ``<memory>/serve/<name>``, beside
            the memory's files). A local path: records are created exclusively by hard links.
        neighbours: Neighbours' labels returned per example by default (at most choose_k).
        max_examples: Examples one request may hold (more: HTTP 413).
        max_body_bytes: Bytes one request body may hold (more: HTTP 413).
        max_batch_size: Requests Serve batches into one memory call (``@serve.batch``).
        batch_wait_timeout_s: How long a batch waits for more requests.
        max_concurrent_batches: Batches of one route a replica runs at once (learn batches
            are independent writers, so they may overlap their syncs).
        shard_timeout_s: How long a call waits for the shards before it is answered 503.
        retry_after_s: The ``Retry-After`` of a 503.
        claim_timeout_s: A request id claimed this long ago whose batch was never saved (its
            replica died in between) may be taken over by a retry.
        recover_every_s: How often a replica sweeps the open batches older than
            ``claim_timeout_s`` (and once at start) to send what a dead replica left.
        min_replicas, max_replicas, target_ongoing_requests: Serve's autoscaling config.
        max_ongoing_requests: Requests one replica holds at once (more wait in the proxy).
        num_cpus: CPUs each replica reserves.
        threads: Torch threads of a replica's encoder (0: torch's default).
    """

    name: str = "lifelong"
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    payload_format: str | None = None
    state: str | None = None
    neighbours: int = 5
    max_examples: int = 256
    max_body_bytes: int = 8 << 20
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    max_concurrent_batches: int = 2
    shard_timeout_s: float = 10.0
    retry_after_s: int = 1
    claim_timeout_s: float = 60.0
    recover_every_s: float = 30.0
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int = 64
    num_cpus: float = 1.0
    threads: int = 1

    def __post_init__(self) -> None:
        try:
            check_name(self.name)
        except MemoryNameError as exc:
            raise ConfigError(str(exc), key="name") from None
        if not self.host:
            raise ConfigError("must be a host name or address", key="host")
        check_int("port", self.port, minimum=0)
        if not self.port <= 65535:
            raise ConfigError(f"must be <= 65535, got {self.port}", key="port")
        if not isinstance(self.route_prefix, str) or not self.route_prefix.startswith("/"):
            raise ConfigError(f"must start with '/', got {self.route_prefix!r}",
                              key="route_prefix")
        if self.payload_format is not None:
            try:
                dtype, shape = check_format(self.payload_format)
            except ConfigError as exc:
                raise ConfigError(str(exc), key="payload_format") from None
            if not ((dtype == "uint8" and len(shape) == 2) or
                    (dtype == "float32" and len(shape) == 1)):
                raise ConfigError(f"must be uint8[H,W] or float32[D], got "
                                  f"{self.payload_format!r}", key="payload_format")
        for name in ("neighbours", "max_examples", "max_body_bytes", "max_batch_size",
                     "max_concurrent_batches",
                     "retry_after_s", "min_replicas", "max_replicas", "max_ongoing_requests"):
            check_int(name, getattr(self, name), minimum=0 if name == "min_replicas" else 1)
        check_int("threads", self.threads, minimum=0)
        if self.max_replicas < max(self.min_replicas, 1):
            raise ConfigError(f"must be >= min_replicas and >= 1, got {self.max_replicas}",
                              key="max_replicas")
        for name in ("batch_wait_timeout_s", "num_cpus"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)!r}", key=name)
        for name in ("shard_timeout_s", "claim_timeout_s", "recover_every_s",
                     "target_ongoing_requests"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"must be > 0, got {getattr(self, name)!r}", key=name)

    def autoscaling_config(self) -> dict:
        """Serve's ``autoscaling_config`` of the deployment."""
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "target_ongoing_requests": self.target_ongoing_requests}


@dataclass(frozen=True)
class ServeJob:
    """jobs/configs/serve.yaml: ``lifelong serve``.

    Attributes:
        serve: How the service answers.
        memory: The hyper-parameters of a memory the service creates.
        shared_memory: The named memory it serves (the one training and stream jobs use):
            attached to by name, created with these sizes when missing and ``create`` is true.
        encoder: The image encoder (a checkpoint path, an MLflow model URI or run id); none
            for a memory of float32[D] keys.
        tracking: Only its ``tracking_uri``, to resolve an MLflow encoder.
        ray_address: The cluster (None: $RAY_ADDRESS, else an embedded local Ray).
    """

    serve: ServeSettings = field(default_factory=ServeSettings)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    shared_memory: SharedMemoryConfig = field(default_factory=lambda: SharedMemoryConfig(
        name="omniglot-serve", num_values=2636))
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="serve"))
    ray_address: str | None = None

    @property
    def has_encoder(self) -> bool:
        return self.encoder.checkpoint is not None or self.encoder.run_id is not None

    def payload_format(self, key_dim: int) -> str:
        """The service's payload format for a memory of keys of size ``key_dim``.

        Raises:
            ConfigError: the format does not fit (vectors of another size, images without an
                encoder, vectors with one).
        """
        fmt = self.serve.payload_format or ("uint8[28,28]" if self.has_encoder
                                            else f"float32[{key_dim}]")
        dtype, shape = check_format(fmt)
        if dtype == "uint8" and not self.has_encoder:
            raise ConfigError(f"serve.payload_format {fmt} needs an encoder: "
                              "encoder.checkpoint=PATH or encoder.run_id=ID")
        if dtype == "float32" and shape != (key_dim,):
            raise ConfigError(f"serve.payload_format {fmt} does not fit the memory's keys of "
                              f"size {key_dim}: float32[{key_dim}]")
        return fmt
