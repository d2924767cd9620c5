"""The Omniglot jobs behind ``jobs/*.py`` and the ``lifelong`` command: train, evaluate, demo.

Each job reads its frozen config, runs, logs to MLflow (config as params, metrics by step, the
accuracy table, the encoder) and prints a per-shot accuracy table.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from lifelong import metrics
from lifelong.config import check_int, config_to_dict
from lifelong.data import load_omniglot
from lifelong.errors import ConfigError
from lifelong.training.checkpoint import load_encoder
from lifelong.training.evaluate import (
    EvalSettings,
    MemoryConfig,
    ShotAccuracy,
    accuracy_table,
    evaluate_encoder,
)
from lifelong.training.omniglot import (
    DataConfig,
    OmniglotTrainJob,
    TrackingConfig,
    TrainResult,
    train_omniglot,
)


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


@dataclass
class JobResult:
    """What a job produced: the table, the MLflow run (None when tracking is off)."""

    results: list[ShotAccuracy]
    table: str
    run_id: str | None
    tracking_uri: str | None
    train: TrainResult | None = None
    wall_s: float = 0.0
    retention: Any = None  # a retention_job.RetentionReport when the job ran one


def evaluate(encoder: torch.nn.Module, settings: EvalSettings, memory: MemoryConfig,
             data: DataConfig, progress: bool = True) -> list[ShotAccuracy]:
    """Evaluates on the 659 evaluation characters, one ShotAccuracy per way."""
    images = load_omniglot("evaluation", root=data.root, cache_dir=data.cache_dir,
                           progress=progress).images
    return [evaluate_encoder(encoder, images, way=way, presentations=settings.presentations,
                             episodes=settings.episodes, seed=settings.seed, memory=memory,
                             episodes_per_chunk=settings.episodes_per_chunk, progress=progress,
                             desc=f"evaluate {way}-way")
            for way in settings.ways]


def open_run(tracking: TrackingConfig, run_id: str | None = None, tags=None):
    """The job's MLflow run (a new one, or ``run_id``); None when tracking is off."""
    if not tracking.enabled:
        return None
    from lifelong.tracking import TrackedRun, absolute_tracking_uri

    return TrackedRun(tracking.experiment, absolute_tracking_uri(tracking.tracking_uri),
                      run_name=tracking.run_name,
                      artifact_location=tracking.artifact_location, tags=tags, run_id=run_id)


def _print_table(table: str, results: list[ShotAccuracy], out=sys.stdout) -> None:
    episodes = ", ".join(f"{r.way}-way: {r.episodes}" for r in results)
    print(f"\nOne-shot accuracy (%) on the evaluation characters, mean ± 95% CI "
          f"(episodes {episodes}); k-shot = the (k+1)-th presentation:\n", file=out)
    print(table, file=out)
    out.flush()


def run_train_job(job: OmniglotTrainJob, progress: bool = True) -> JobResult:
    """Trains (and, if job.evaluation.episodes > 0, evaluates), logging to MLflow."""
    start = time.perf_counter()
    run = open_run(job.tracking, tags={"job": "train_omniglot"})
    try:
        if run is not None:
            run.log_params(config_to_dict(job))
            run.log_text(yaml.safe_dump(config_to_dict(job), sort_keys=False), "config.yaml")
            print(f"MLflow run {run.run_id} ({run.tracking_uri})", flush=True)
        if job.ray.enabled:
            from lifelong.training.ray_train import train_on_ray

            result = train_on_ray(job, run.run_id if run else None,
                                  run.tracking_uri if run else None, progress=progress)
        else:
            result = train_omniglot(job, logger=run, progress=progress)
        print(f"trained {result.steps} steps in {result.wall_s:.0f} s "
              f"({result.images_per_s:.0f} images/s); encoder: {result.checkpoint}", flush=True)
        if run is not None:
            run.log_encoder(result.checkpoint)
            run.log_metrics({metrics.TRAIN_STEPS: result.steps,
                             metrics.TRAIN_WALL_S: result.wall_s},
                            step=result.steps)
        results: list[ShotAccuracy] = []
        table = ""
        retention = None
        if job.evaluation.episodes or job.retention.enabled:
            encoder, _ = load_encoder(result.checkpoint)
        if job.evaluation.episodes:
            results = evaluate(encoder, job.evaluation, job.memory, job.data, progress)
            table = accuracy_table(results)
            _print_table(table, results)
            if run is not None:
                run.log_accuracy_table(results, table)
        if job.retention.enabled:
            from lifelong.training.retention_job import retention_stage

            retention = retention_stage(encoder, job.retention, job.memory, job.data, run,
                                        progress)
    except BaseException:
        if run is not None:
            run.end("FAILED")
        raise
    if run is not None:
        run.end("FINISHED")
    return JobResult(results, table, run.run_id if run else None,
                     run.tracking_uri if run else None, train=result,
                     wall_s=time.perf_counter() - start, retention=retention)


def resolve_encoder(checkpoint: str | None, run_id: str | None, tracking_uri: str | None):
    """The encoder a job names by checkpoint path or MLflow run id.

    Returns:
        (encoder in eval mode, its checkpoint metadata, the local checkpoint path)
    """
    if run_id is not None:
        from lifelong.tracking import download_encoder

        path = download_encoder(run_id, tracking_uri)
    else:
        path = Path(checkpoint)
    encoder, meta = load_encoder(path)
    return encoder, meta, path


def run_evaluate_job(job: OmniglotEvaluateJob, progress: bool = True) -> JobResult:
    """Evaluates a checkpoint or a run's encoder; logs into that run or a new one."""
    start = time.perf_counter()
    if job.threads:
        torch.set_num_threads(job.threads)
    encoder, meta, checkpoint = resolve_encoder(job.checkpoint, job.run_id,
                                                job.tracking.tracking_uri)
    print(f"encoder {meta['encoder']} (key_dim {meta['key_dim']}) from {checkpoint}, "
          f"trained {meta['extra'].get('step', '?')} steps", flush=True)
    results = evaluate(encoder, job.evaluation, job.memory, job.data, progress)
    table = accuracy_table(results)
    _print_table(table, results)
    run = open_run(job.tracking, run_id=job.run_id, tags={"job": "evaluate_omniglot"})
    if run is not None:
        if job.run_id is None:
            run.log_params({**config_to_dict(job), "encoder": meta["encoder"]})
            run.log_encoder(checkpoint)
        run.log_accuracy_table(results, table)
        run.end("FINISHED")
    return JobResult(results, table, run.run_id if run else None,
                     run.tracking_uri if run else None, wall_s=time.perf_counter() - start)
