"""Omniglot training on Ray Train: N ``TorchTrainer`` workers (DDP), each with a handle to the
named shared memory (life-long mode) or its own episodic memory; rank 0 alone logs to MLflow;
checkpoints go through Ray Train, and a restarted worker group (``FailureConfig``) or a run
started again under the same name resumes from the last one.

The driver (``train_on_ray``) joins or starts Ray, creates or attaches the shared memory, runs
the trainer and returns the final checkpoint's encoder; ``jobs.run_train_job`` evaluates it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import ray
import torch

from lifelong import metrics
from lifelong.config import config_from_dict
from lifelong.data import load_omniglot
from lifelong.distributed.actor import NAMESPACE
from lifelong.errors import ConfigError, MemoryNotFoundError
from lifelong.training.checkpoint import save_encoder
from lifelong.training.cluster_config import RayTrainConfig
from lifelong.models import build_encoder
from lifelong.training.context import TrainContext
from lifelong.training.omniglot import OmniglotTrainJob, TrainResult, train_omniglot

STATE_FILE = "state.pt"  # a Ray Train checkpoint: encoder, optimizer, step, elapsed_s, meta
ENCODER_FILE = "encoder.pt"  # the final encoder in output_dir (training/checkpoint.py format)
# Fault injection for tests: the rank given exits at the step given, once (the marker file
# records that it did), so the worker group restarts and must resume from its checkpoint.
FAULT_STEP_ENV = "LIFELONG_FAULT_EXIT_AT_STEP"
FAULT_MARKER_ENV = "LIFELONG_FAULT_MARKER"


def shared_memory_storage(job: OmniglotTrainJob) -> str:
    """Where the job's shared memory lives, a relative path made absolute (workers and shard
    actors run in other directories)."""
    from lifelong.distributed.registry import default_storage

    storage = job.shared_memory.storage or default_storage()
    return storage if "://" in storage else os.path.abspath(storage)


def shared_memory_spec(job: OmniglotTrainJob, num_classes: int):
    """The MemorySpec of the job's shared memory; its values are the background split's
    ``num_classes`` class ids (the life-long labels)."""
    from lifelong.distributed import MemorySpec

    sm = job.shared_memory
    return MemorySpec(name=sm.name, key_dim=job.model.key_dim, num_slots=sm.num_slots,
                      num_values=num_classes, storage=shared_memory_storage(job),
                      shards=sm.shards, choose_k=job.memory.choose_k, alpha=job.memory.alpha,
                      age_noise=job.memory.age_noise, snapshot_every=sm.snapshot_every,
                      num_cpus=sm.num_cpus, shard_resource=sm.shard_resource,
                      seed=job.train.seed)


def prepare_shared_memory(job: OmniglotTrainJob, num_classes: int) -> str:
    """Creates the job's shared memory, or checks that the existing one fits; returns its
    storage location."""
    from lifelong.distributed import create_memory, delete_memory, read_spec

    spec = shared_memory_spec(job, num_classes)
    try:
        existing = read_spec(spec.name, spec.storage)
    except MemoryNotFoundError:
        existing = None
    if existing is not None and job.shared_memory.recreate:
        delete_memory(spec.name, spec.storage)
        existing = None
    if existing is None:
        create_memory(spec)
    elif (existing.key_dim, existing.num_values) != (spec.key_dim, spec.num_values):
        raise ConfigError(f"memory {spec.name!r} holds keys of size {existing.key_dim} and "
                          f"{existing.num_values} values; this job needs {spec.key_dim} and "
                          f"{spec.num_values} (shared_memory.recreate=true starts afresh)")
    return spec.storage


def _fault_injection(rank: int, step: int) -> None:
    at, marker = os.environ.get(FAULT_STEP_ENV), os.environ.get(FAULT_MARKER_ENV)
    if at and marker and rank == 0 and step == int(at) and not os.path.exists(marker):
        ray.train.get_all_reported_checkpoints(timeout_s=60)  # dies after the acknowledgement
        Path(marker).write_text(f"rank {rank} exited at step {step}\n")
        os._exit(1)


def _any_rank(flag: bool) -> bool:
    if not torch.distributed.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _report(rank: int):
    """The checkpoint hook: rank 0 writes the training state, every rank reports."""
    from ray.train import Checkpoint

    def save(step: int, state: dict[str, Any], stats: dict[str, float]) -> None:
        reported = {"step": step, **stats}
        if rank != 0:
            ray.train.report(reported, checkpoint=None)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(state, Path(tmp) / STATE_FILE)
                ray.train.report(reported, checkpoint=Checkpoint.from_directory(tmp))
        _fault_injection(rank, step)

    return save


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs (config: the job as a dict, the MLflow run, storage)."""
    job = config_from_dict(OmniglotTrainJob, config["job"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / STATE_FILE, map_location="cpu",
                                weights_only=False)
    memory = None
    if job.train.mode == "lifelong":
        from lifelong.distributed import attach

        memory = attach(job.shared_memory.name, config["memory_storage"])
    logger = None
    if rank == 0 and config.get("run_id"):
        from lifelong.tracking import TrackedRun

        logger = TrackedRun("", config["tracking_uri"], run_id=config["run_id"])
        if resume is not None:
            logger.log_metrics({metrics.TRAIN_RESUMED_AT: resume["step"]}, resume["step"])

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model) if world > 1 else model

    train_omniglot(job, logger=logger, progress=config.get("progress", True),
                   ctx=TrainContext(rank=rank, world_size=world, prepare_model=prepare,
                                    shared_memory=memory, resume=resume,
                                    save=_report(rank), any_rank=_any_rank))


def ensure_ray(job: OmniglotTrainJob) -> None:
    """Joins the job's cluster, or starts an embedded local Ray sized for the job."""
    shards = job.shared_memory
    ensure_ray_for(job.ray, shards.shards * shards.num_cpus if job.train.mode == "lifelong"
                   else 0.0)


def ensure_ray_for(config: RayTrainConfig, memory_cpus: float = 0.0) -> None:
    """Joins ``config.address`` (or RAY_ADDRESS), or starts an embedded local Ray with
    enough logical CPUs for the workers and ``memory_cpus`` of shard actors, which mostly wait
    on each other, even where the machine has fewer cores."""
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=True)
        return
    needed = config.num_workers * config.cpus_per_worker + 1 + memory_cpus
    ray.init(num_cpus=max(os.cpu_count() or 1, int(needed + 0.999)), namespace=NAMESPACE)


def train_on_ray(job: OmniglotTrainJob, run_id: str | None, tracking_uri: str | None,
                 progress: bool = True) -> TrainResult:
    """Runs the job's training on Ray Train and copies the final encoder to output_dir.

    Args:
        job: The configuration (``job.ray`` says where and how many workers).
        run_id, tracking_uri: The MLflow run rank 0 logs into (None: no logging).
        progress: Progress bar on rank 0.

    Returns:
        The final checkpoint's encoder (``<output_dir>/encoder.pt``) and how the run went.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # The data first, in the driver: a missing archive fails here, before any Ray work, and
    # the workers of this machine read the preprocessed cache instead of each building it.
    background = load_omniglot("background", root=job.data.root, cache_dir=job.data.cache_dir,
                               progress=progress)
    ensure_ray(job)
    storage = None
    if job.train.mode == "lifelong":
        storage = prepare_shared_memory(job, num_classes=background.images.shape[0])
    output = Path(job.output_dir).resolve()
    storage_path = job.ray.storage_path or str(output / "ray_train")
    # A fresh name per launch unless one is given: Ray Train resumes a run found under the
    # same name and storage path, which a new `make demo` or benchmark must not do.
    name = job.ray.run_name or (f"omniglot-{job.train.mode}-"
                                    f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    fault_env = {k: os.environ[k] for k in (FAULT_STEP_ENV, FAULT_MARKER_ENV) if k in os.environ}
    resources = {"CPU": job.ray.cpus_per_worker}
    if job.ray.trainer_resource:
        resources["trainer"] = job.ray.trainer_resource
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": dataclasses.asdict(job), "run_id": run_id,
                           "tracking_uri": tracking_uri, "memory_storage": storage,
                           "progress": progress},
        scaling_config=ScalingConfig(num_workers=job.ray.num_workers, use_gpu=job.ray.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             worker_runtime_env={"env_vars": fault_env} if fault_env else None,
                             failure_config=FailureConfig(max_failures=job.ray.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=job.ray.checkpoints_to_keep)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise ConfigError("the training run reported no checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
    encoder = build_encoder(job.model.encoder, job.model.key_dim, job.model.dropout)
    encoder.load_state_dict(state["encoder"])
    target = save_encoder(output / ENCODER_FILE, encoder, encoder_name=job.model.encoder,
                          key_dim=job.model.key_dim, dropout=job.model.dropout,
                          extra={**state["meta"], "step": state["step"]})
    reported = result.metrics or {}
    wall = float(state["elapsed_s"])
    steps = int(state["step"])
    images = steps * job.train.way * job.train.presentations * job.train.episodes_per_batch
    return TrainResult(checkpoint=target, steps=steps, wall_s=wall,
                       images_per_s=images / max(wall, 1e-9),
                       last_metrics={k: v for k, v in reported.items()
                                     if isinstance(v, (int, float))})
