"""The Omniglot jobs behind ``jobs/*.py`` and the ``lifelong`` command: train, evaluate, demo.

Each job reads its frozen config, runs, logs to MLflow (config as params, metrics by step, the
accuracy table, the encoder as an MLflow model) and prints a per-shot accuracy table.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from lifelong import metrics
from lifelong.data import load_omniglot
from lifelong.experiments.omniglot.config import DataConfig, OmniglotEvaluateJob, OmniglotTrainJob
from lifelong.experiments.omniglot.evaluate import (
    EvalSettings,
    ShotAccuracy,
    accuracy_table,
    evaluate_encoder,
)
from lifelong.experiments.omniglot.retention_job import retention_stage
from lifelong.experiments.omniglot.train import TrainResult, train_omniglot
from lifelong.experiments.omniglot.within_alphabet import (WithinAlphabetAccuracy,
                                                           evaluate_within_alphabet)
from lifelong.memory import MemoryConfig
from lifelong.models.checkpoint import load_encoder
from lifelong.models.serving import encoder_input_example
from lifelong.runtime.config import durable_outputs
from lifelong.tracking import (
    LoggedModel,
    TrackedRun,
    is_model_uri,
    job_run,
    log_model,
    redact_uri,
    resolve_encoder,
)


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
    model: LoggedModel | None = None  # the encoder logged as an MLflow model
    within_alphabet: WithinAlphabetAccuracy | None = None  # with protocol within-alphabet


def evaluate(encoder: torch.nn.Module, settings: EvalSettings, memory: MemoryConfig,
             data: DataConfig, progress: bool = True
             ) -> tuple[list[ShotAccuracy], WithinAlphabetAccuracy | None]:
    """Evaluates on the 659 evaluation characters with ``settings.protocols``: one
    ShotAccuracy per way (standard; [] without it) and the within-alphabet result (or None)."""
    split = load_omniglot("evaluation", root=data.root, cache_dir=data.cache_dir,
                          progress=progress)
    results = [evaluate_encoder(encoder, split.images, way=way,
                                presentations=settings.presentations,
                                episodes=settings.episodes, seed=settings.seed, memory=memory,
                                episodes_per_chunk=settings.episodes_per_chunk,
                                progress=progress, desc=f"evaluate {way}-way")
               for way in settings.ways] if "standard" in settings.protocols else []
    within = None
    if "within-alphabet" in settings.protocols:
        within = evaluate_within_alphabet(encoder, split.images, split.class_names,
                                          episodes=settings.episodes, seed=settings.seed,
                                          memory=memory, progress=progress)
    return results, within


def _report(results: list[ShotAccuracy], within: WithinAlphabetAccuracy | None,
            run: TrackedRun | None) -> str:
    """Prints (and logs into ``run``) the tables; returns the standard one."""
    table = accuracy_table(results) if results else ""
    if results:
        _print_table(table, results)
    if within is not None:
        print(f"\nWithin-alphabet one-shot accuracy (%), {within.way} characters of one "
              f"alphabet per episode, mean ± 95% CI:\n\n{within.table()}", flush=True)
    if run is not None:
        if results:
            run.log_accuracy_table(results, table)
        if within is not None:
            name = metrics.WITHIN_ALPHABET
            run.log_metrics({metrics.shot_metric(name, within.way, 1): within.mean(),
                             metrics.shot_metric(name, within.way, 1, metrics.CI95):
                                 within.ci95()})
            run.log_table([{"alphabet": a, "acc": acc, "episodes": within.alphabets.count(a)}
                           for a, acc in within.by_alphabet().items()],
                          metrics.WITHIN_ALPHABET_TABLE_JSON)
    return table


def _print_table(table: str, results: list[ShotAccuracy], out=None) -> None:
    out = out or sys.stdout  # looked up now: sys.stdout may have been replaced since import
    episodes = ", ".join(f"{r.way}-way: {r.episodes}" for r in results)
    print(f"\nOne-shot accuracy (%) on the evaluation characters, mean ± 95% CI "
          f"(episodes {episodes}); k-shot = the (k+1)-th presentation:\n", file=out)
    print(table, file=out)
    out.flush()


def log_encoder_model(run: TrackedRun, checkpoint, register_as: str | None) -> LoggedModel:
    """Logs an encoder checkpoint into ``run`` as the MLflow model ``encoder`` (registered
    as ``register_as`` when given) and prints where it is."""
    encoder, _ = load_encoder(checkpoint)
    logged = log_model(run, encoder, checkpoint, name=metrics.ENCODER_ARTIFACT_DIR,
                       input_example=encoder_input_example(), register_as=register_as)
    print(f"MLflow model {logged.registered or logged.run_uri}", flush=True)
    return logged


def run_train_job(job: OmniglotTrainJob, progress: bool = True) -> JobResult:
    """Trains (and, if job.evaluation.episodes > 0, evaluates), logging to MLflow."""
    start = time.perf_counter()
    job = durable_outputs(job)
    logged = None
    with job_run(job.tracking, tags={"job": "train_omniglot"}) as run:
        if run is not None:
            run.log_config(job)
            print(f"MLflow run {run.run_id} ({redact_uri(run.tracking_uri)})", flush=True)
        if job.ray.enabled:
            from lifelong.experiments.omniglot.on_ray import train_on_ray

            result = train_on_ray(job, run.run_id if run else None,
                                  run.tracking_uri if run else None, progress=progress)
        else:
            result = train_omniglot(job, logger=run, progress=progress)
        print(f"trained {result.steps} steps in {result.wall_s:.0f} s "
              f"({result.images_per_s:.0f} images/s); encoder: {result.checkpoint}", flush=True)
        if run is not None:
            run.set_tags(result.memory_tags)
            run.log_metrics({metrics.TRAIN_STEPS: result.steps,
                             metrics.TRAIN_WALL_S: result.wall_s},
                            step=result.steps)
            logged = log_encoder_model(run, result.checkpoint, job.tracking.register_as)
        results: list[ShotAccuracy] = []
        table = ""
        retention = None
        if job.evaluation.episodes or job.retention.enabled:
            encoder, _ = load_encoder(result.checkpoint)
        if job.evaluation.episodes:
            results, within = evaluate(encoder, job.evaluation, job.memory, job.data, progress)
            table = _report(results, within, run)
        if job.retention.enabled:
            retention = retention_stage(encoder, job.retention, job.memory, job.data, run,
                                        progress)
    return JobResult(results, table, run.run_id if run else None,
                     run.tracking_uri if run else None, train=result,
                     wall_s=time.perf_counter() - start, retention=retention, model=logged)


def run_evaluate_job(job: OmniglotEvaluateJob, progress: bool = True) -> JobResult:
    """Evaluates an encoder (checkpoint path, model URI or run); logs into that run or a
    new one, which records the model it was given."""
    start = time.perf_counter()
    if job.threads:
        torch.set_num_threads(job.threads)
    encoder, meta, checkpoint = resolve_encoder(job.checkpoint, job.run_id,
                                                job.tracking.tracking_uri)
    source = job.checkpoint if job.run_id is None else f"run {job.run_id}"
    print(f"encoder {meta['encoder']} (key_dim {meta['key_dim']}) from {source}, "
          f"trained {meta['extra'].get('step', '?')} steps", flush=True)
    results, within = evaluate(encoder, job.evaluation, job.memory, job.data, progress)
    with job_run(job.tracking, run_id=job.run_id, tags={"job": "evaluate_omniglot"}) as run:
        if run is not None:
            if job.run_id is None:
                run.log_config(job, extra={"encoder": meta["encoder"]})
                run.set_tags({metrics.MODEL_URI_TAG: job.checkpoint})
                if not is_model_uri(job.checkpoint):  # a file: the run keeps the model
                    log_encoder_model(run, checkpoint, None)
        table = _report(results, within, run)
    return JobResult(results, table, run.run_id if run else None,
                     run.tracking_uri if run else None, wall_s=time.perf_counter() - start,
                     within_alphabet=within)
