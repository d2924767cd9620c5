"""The one Ray Train driver of every experiment: N ``TorchTrainer`` workers (DDP), each running
the experiment's training loop as one rank, with a handle to the job's named shared memory
(life-long training) or none; rank 0 alone logs to MLflow; checkpoints go through Ray Train, and
a restarted worker group (``FailureConfig``) or a run started again under the same name resumes
from the last one.

A training loop is a function ``loop(job, logger=, progress=, ctx=)`` that knows nothing of Ray:
``fit_on_ray`` fills its ``TrainContext`` (DDP wrapping, the shared memory, the checkpoint hook,
the state to resume from, a stop consensus) and returns the state of the final checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import ray
import torch

from lifelong import metrics
from lifelong.config import config_from_dict
from lifelong.distributed.cluster import ensure_ray
from lifelong.errors import ConfigError
from lifelong.runtime.config import RayTrainConfig
from lifelong.runtime.context import TrainContext

STATE_FILE = "state.pt"  # a Ray Train checkpoint: what the loop hands to ctx.save
# Fault injection for tests: the rank given exits at the step given, once (the marker file
# records that it did), so the worker group restarts and must resume from its checkpoint.
FAULT_STEP_ENV = "LIFELONG_FAULT_EXIT_AT_STEP"
FAULT_MARKER_ENV = "LIFELONG_FAULT_MARKER"
# The same between checkpoints: rank 0 exits as step N starts (steps since its checkpoint are
# then redone by the restarted group).
FAULT_BEFORE_STEP_ENV = "LIFELONG_FAULT_EXIT_BEFORE_STEP"


def ensure_ray_for(config: RayTrainConfig, memory_cpus: float = 0.0) -> None:
    """Joins ``config.address`` (or $RAY_ADDRESS), or starts an embedded local Ray with logical
    CPUs for the workers, the driver and ``memory_cpus`` of shard actors."""
    ensure_ray(config.address, log_to_driver=True,
               local_cpus=config.num_workers * config.cpus_per_worker + 1 + memory_cpus)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any (all ranks must stop at the same step,
    or the gradient all-reduce would wait forever)."""
    if not torch.distributed.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _any_rank_with_fault(rank: int, first_step: int) -> Callable[[bool], bool]:
    """``any_rank``, called once as each step starts; with $LIFELONG_FAULT_EXIT_BEFORE_STEP
    rank 0 exits (once, see the marker) as that step starts."""
    at, marker = os.environ.get(FAULT_BEFORE_STEP_ENV), os.environ.get(FAULT_MARKER_ENV)
    if not (at and marker and rank == 0):
        return any_rank
    steps = iter(range(first_step, 1 << 62))

    def check(flag: bool) -> bool:
        if next(steps) == int(at) and not os.path.exists(marker):
            ray.train.get_all_reported_checkpoints(timeout_s=60)
            Path(marker).write_text(f"rank {rank} exited before step {at}\n")
            os._exit(1)
        return any_rank(flag)

    return check


def _fault_injection(rank: int, step: int) -> None:
    at, marker = os.environ.get(FAULT_STEP_ENV), os.environ.get(FAULT_MARKER_ENV)
    if at and marker and rank == 0 and step == int(at) and not os.path.exists(marker):
        ray.train.get_all_reported_checkpoints(timeout_s=60)  # dies after the acknowledgement
        Path(marker).write_text(f"rank {rank} exited at step {step}\n")
        os._exit(1)


def report_checkpoint(rank: int, memory: Any = None, writer_base: str | None = None
                      ) -> Callable[[int, dict[str, Any], dict[str, float]], None]:
    """The checkpoint hook of a rank: rank 0 writes the training state, every rank reports.

    With a shared memory the state also holds the ranks' writer (``memory_writer``, the base
    of every rank's writer id) and rank 0's batch number (``memory_seq``): a restarted worker
    group resumes those writers (``ShardedMemory.resume``), so the steps it redoes since the
    checkpoint are not written into the memory a second time."""
    from ray.train import Checkpoint

    def save(step: int, state: dict[str, Any], stats: dict[str, float]) -> None:
        reported = {"step": step, **stats}
        if memory is not None:
            memory.flush()  # every batch numbered up to memory_seq is acknowledged
            state = {**state, "memory_writer": writer_base, "memory_seq": int(memory.seq)}
        if rank != 0:
            ray.train.report(reported, checkpoint=None)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(state, Path(tmp) / STATE_FILE)
                ray.train.report(reported, checkpoint=Checkpoint.from_directory(tmp))
        _fault_injection(rank, step)

    return save


def _load_state(folder: str) -> dict[str, Any]:
    # weights_only: a checkpoint is tensors and plain data; nothing in storage runs code here.
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def _worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the job's loop as one rank."""
    job = config_from_dict(config["job_type"], config["job"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = _load_state(folder)
    memory = None
    # Every rank writes as <base>.rank<r>; the base of the checkpoint resumed from, else this
    # launch's. The loops make the same number of memory batches on every rank, so rank 0's
    # batch number is every rank's (a rank that made fewer only skips numbers it never used).
    writer_base = (resume or {}).get("memory_writer") or config.get("memory_writer") or \
        f"train-{uuid.uuid4().hex}"
    if config["memory"] is not None:
        from lifelong.distributed import attach

        memory = attach(*config["memory"], writer=f"{writer_base}.rank{rank}")
        if resume is not None and "memory_seq" in resume:
            memory.resume(memory.writer, int(resume["memory_seq"]))
        memory.pipelined = True  # one round trip per memory step; flushed at checkpoints
    logger = None
    if rank == 0 and config["run_id"]:
        from lifelong.tracking import TrackedRun

        logger = TrackedRun("", config["tracking_uri"], run_id=config["run_id"])
        if resume is not None:
            logger.log_metrics({metrics.TRAIN_RESUMED_AT: resume["step"]}, resume["step"])

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model) if world > 1 else model

    config["loop"](job, logger=logger, progress=config["progress"],
                   ctx=TrainContext(rank=rank, world_size=world, prepare_model=prepare,
                                    shared_memory=memory, resume=resume,
                                    save=report_checkpoint(rank, memory, writer_base),
                                    any_rank=_any_rank_with_fault(
                                        rank, (resume or {}).get("step", 0) + 1)))
    if memory is not None:
        memory.flush()  # the last step's update


def fit_on_ray(loop: Callable[..., Any], job: Any, *, ray_config: RayTrainConfig,
               experiment: str, output_dir: str | os.PathLike,
               memory: tuple[str, str] | None = None, run_id: str | None = None,
               tracking_uri: str | None = None,
               progress: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
    """Runs ``loop`` on a Ray Train worker group; returns its final checkpoint's state.

    Ray must be initialised (``ensure_ray_for``) and the shared memory created before.

    Args:
        loop: ``loop(job, logger=, progress=, ctx=)``, a module-level function (workers import
            it by name); it reports its state through ``ctx.save``.
        job: The job's frozen config dataclass (rebuilt on every worker).
        ray_config: Workers, resources, failures, checkpoint storage, run name.
        experiment: Prefix of a fresh Ray Train run name.
        output_dir: Checkpoints go to ``<output_dir>/ray_train`` unless
            ``ray_config.storage_path`` says otherwise.
        memory: (name, storage) of the named memory every rank attaches to; None: none.
        run_id, tracking_uri: The MLflow run rank 0 logs into (None: no logging).
        progress: Progress bar on rank 0.

    Returns:
        (the state dict the loop saved last with ``ctx.save``, the numeric metrics reported
        with it)
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    output = Path(output_dir).resolve()
    # A fresh name per launch unless one is given: Ray Train resumes a run found under the
    # same name and storage path, which a new `make demo` or benchmark must not do.
    name = ray_config.run_name or (f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}-"
                                   f"{uuid.uuid4().hex[:6]}")
    fault_env = {k: os.environ[k] for k in (FAULT_STEP_ENV, FAULT_MARKER_ENV,
                                            FAULT_BEFORE_STEP_ENV) if k in os.environ}
    resources = {"CPU": ray_config.cpus_per_worker}
    if ray_config.trainer_resource:
        resources["trainer"] = ray_config.trainer_resource
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"loop": loop, "job_type": type(job), "job": dataclasses.asdict(job),
                           "run_id": run_id, "tracking_uri": tracking_uri, "memory": memory,
                           "progress": progress,
                           "memory_writer": f"train-{name}-{uuid.uuid4().hex[:8]}"},
        scaling_config=ScalingConfig(num_workers=ray_config.num_workers,
                                     use_gpu=ray_config.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name,
                             storage_path=ray_config.storage_path or str(output / "ray_train"),
                             worker_runtime_env={"env_vars": fault_env} if fault_env else None,
                             failure_config=FailureConfig(max_failures=ray_config.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=ray_config.checkpoints_to_keep)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise ConfigError(f"the {experiment} training run reported no checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = _load_state(folder)
    return state, {k: v for k, v in (result.metrics or {}).items()
                   if isinstance(v, (int, float))}
