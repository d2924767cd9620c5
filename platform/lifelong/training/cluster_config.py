"""The Ray sections of a training job's config: the Ray Train workers and the shared memory."""

from __future__ import annotations

from dataclasses import dataclass

from lifelong.config import check_int
from lifelong.errors import ConfigError


@dataclass(frozen=True)
class RayTrainConfig:
    """How the job runs on Ray (jobs/configs/train_omniglot.yaml, section ``ray``).

    Attributes:
        enabled: False trains in this process without Ray (episodic or life-long with a local
            memory).
        address: The cluster to join; None joins ``$RAY_ADDRESS`` (set by ``ray job submit``)
            and else starts an embedded local Ray.
        num_workers: Ray Train workers (DDP ranks); each samples
            train.episodes_per_batch / num_workers episodes per step.
        cpus_per_worker, use_gpu: Resources each worker asks for; ``trainer_resource`` adds a
            custom resource (``trainer`` in cluster.yaml) so workers land on trainer nodes.
        max_failures: Worker-group restarts Ray Train allows (each resumes from the last
            checkpoint); -1: unlimited.
        storage_path: Where Ray Train keeps checkpoints (a path or URI; None:
            ``<output_dir>/ray_train``). A run started again with the same storage_path and
            run_name resumes from its last checkpoint.
        run_name: The Ray Train run's name (None: a fresh "omniglot-<mode>-<time>-<id>" per
            launch, so a new run never picks up an old one's checkpoint; name it to resume).
        checkpoints_to_keep: Checkpoints kept in storage.
    """

    enabled: bool = True
    address: str | None = None
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    trainer_resource: float = 0.0
    max_failures: int = 2
    storage_path: str | None = None
    run_name: str | None = None
    checkpoints_to_keep: int = 2

    def __post_init__(self) -> None:
        check_int("ray.num_workers", self.num_workers)
        check_int("ray.checkpoints_to_keep", self.checkpoints_to_keep)
        check_int("ray.max_failures", self.max_failures, minimum=-1)
        if not self.cpus_per_worker > 0:
            raise ConfigError(f"ray.cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if not self.trainer_resource >= 0:
            raise ConfigError("ray.trainer_resource must be >= 0")


@dataclass(frozen=True)
class SharedMemoryConfig:
    """The named memory life-long training writes into (section ``shared_memory``).

    Attributes:
        name: The memory's name; created on first use, attached to afterwards.
        num_slots, shards: Its size and how many shard actors hold it.
        storage: Where it lives (None: ``$LIFELONG_MEMORY_STORAGE`` or ~/.lifelong/memories).
        snapshot_every: Update batches between a shard's snapshots.
        num_cpus: CPUs each shard actor reserves (shards mostly wait; 0.5 lets 2 shards and 2
            workers share a 2-core machine).
        shard_resource: Units of the custom resource ``memory_shard`` each shard requests
            (1.0 on cluster.yaml, whose GPU nodes advertise it); 0: none.
        recreate: Delete a memory of this name first (a fresh run); False attaches to it.
    """

    name: str = "omniglot-lifelong"
    num_slots: int = 65536
    shards: int = 2
    storage: str | None = None
    snapshot_every: int = 1000
    num_cpus: float = 0.5
    shard_resource: float = 0.0
    recreate: bool = False

    def __post_init__(self) -> None:
        for name in ("num_slots", "shards", "snapshot_every"):
            check_int(f"shared_memory.{name}", getattr(self, name))
        if not self.num_cpus >= 0 or not self.shard_resource >= 0:
            raise ConfigError("shared_memory.num_cpus and shard_resource must be >= 0")
