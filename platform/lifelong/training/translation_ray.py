"""The translator on Ray Train: N ``TorchTrainer`` workers (DDP) against one named, shared
``ShardedMemory`` (never cleared), rank 0 logging to MLflow, the final state reported as a Ray
Train checkpoint; the driver writes ``<output_dir>/translator.pt`` with the memory's contents."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import ray
import torch

from lifelong.config import config_from_dict
from lifelong.data import load_multi30k
from lifelong.distributed.actor import NAMESPACE
from lifelong.errors import ConfigError
from lifelong.memory import Memory
from lifelong.models.translator import Translator
from lifelong.models.vocab import SubwordVocab
from lifelong.training.context import TrainContext
from lifelong.training.ray_train import (
    STATE_FILE, _any_rank, _report, ensure_ray_for, prepare_shared_memory)
from lifelong.training.translation import (
    TranslationJob,
    TranslationModel,
    TranslationTrainResult,
    train_translation,
)


def _loop(config: dict[str, Any]) -> None:
    """What every worker runs: the job's loop as one rank, against the shared memory."""
    job = config_from_dict(TranslationJob, config["job"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    memory = None
    if config["memory_storage"] is not None:
        from lifelong.distributed import attach

        memory = attach(job.shared_memory.name, config["memory_storage"])
    logger = None
    if rank == 0 and config.get("run_id"):
        from lifelong.tracking import TrackedRun

        logger = TrackedRun("", config["tracking_uri"], run_id=config["run_id"])

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model) if world > 1 else model

    train_translation(job, logger=logger, progress=config.get("progress", True),
                      ctx=TrainContext(rank=rank, world_size=world, prepare_model=prepare,
                                       shared_memory=memory, save=_report(rank),
                                       any_rank=_any_rank))


def train_translation_on_ray(job: TranslationJob, run_id: str | None,
                             tracking_uri: str | None,
                             progress: bool = True) -> TranslationTrainResult:
    """Runs the job's training on Ray Train; returns the translator written to output_dir."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    load_multi30k("train", root=job.data.root, progress=progress)  # missing data fails here
    shards = job.shared_memory
    ensure_ray_for(job.ray, shards.shards * shards.num_cpus if job.model.use_memory else 0.0)
    storage = None
    if job.model.use_memory:  # values: target subword ids, < data.vocab_size
        storage = prepare_shared_memory(job, num_classes=job.data.vocab_size)
    output = Path(job.output_dir).resolve()
    name = job.ray.run_name or (f"translation-{time.strftime('%Y%m%d-%H%M%S')}-"
                                f"{uuid.uuid4().hex[:6]}")
    start = time.perf_counter()
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"job": dataclasses.asdict(job), "run_id": run_id,
                           "tracking_uri": tracking_uri, "memory_storage": storage,
                           "progress": progress},
        scaling_config=ScalingConfig(num_workers=job.ray.num_workers, use_gpu=job.ray.use_gpu,
                                     resources_per_worker={"CPU": job.ray.cpus_per_worker}),
        run_config=RunConfig(name=name,
                             storage_path=job.ray.storage_path or str(output / "ray_train"),
                             failure_config=FailureConfig(max_failures=job.ray.max_failures)))
    result = trainer.fit()
    if result.checkpoint is None:
        raise ConfigError("the translation run reported no checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
    sv, tv = SubwordVocab(state["source_vocab"]), SubwordVocab(state["target_vocab"])
    model = Translator(len(sv), len(tv), job.model)
    model.load_state_dict(state["model"])
    memory = None
    if storage is not None:  # the shared memory's contents travel with the checkpoint
        from lifelong.distributed import attach

        shared = attach(job.shared_memory.name, storage)
        s = shared.spec
        memory = Memory(key_dim=s.key_dim, num_slots=s.num_slots, num_values=s.num_values,
                        choose_k=s.choose_k, alpha=s.alpha, age_noise=s.age_noise)
        memory.load_state_dict(shared.state_dict())
    path = TranslationModel(model, sv, tv, memory).save(output / "translator.pt",
                                                        extra=state["meta"])
    steps = int(state["step"])
    wall = time.perf_counter() - start
    return TranslationTrainResult(path, steps, wall,
                                  steps * job.train.batch_size / max(wall, 1e-9))
