"""The ``ray:`` section of a training job: where and how its Ray Train workers run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

from lifelong.config import check_int
from lifelong.errors import ConfigError
from lifelong.locations import durable_location

T = TypeVar("T")


@dataclass(frozen=True)
class RayTrainConfig:
    """How a training job runs on Ray (section ``ray`` of jobs/configs/train_*.yaml).

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
        run_name: The Ray Train run's name (None: a fresh "<experiment>-<time>-<id>" per
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
        check_int("num_workers", self.num_workers)
        check_int("checkpoints_to_keep", self.checkpoints_to_keep)
        check_int("max_failures", self.max_failures, minimum=-1)
        if not self.cpus_per_worker > 0:
            raise ConfigError(f"must be > 0, got {self.cpus_per_worker!r}", key="cpus_per_worker")
        if not self.trainer_resource >= 0:
            raise ConfigError("must be >= 0", key="trainer_resource")


def durable_outputs(job: T) -> T:
    """``job`` with its ``output_dir`` and ``ray.storage_path`` made durable absolute paths
    (``lifelong.locations.durable_location``: never in a Ray job's working-dir copy), as
    every node and every later reader sees them."""
    ray = job.ray
    if ray.storage_path is not None:
        ray = dataclasses.replace(ray, storage_path=durable_location(ray.storage_path))
    return dataclasses.replace(job, output_dir=durable_location(job.output_dir), ray=ray)
