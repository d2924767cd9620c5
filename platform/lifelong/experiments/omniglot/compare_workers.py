"""Same examples, different worker counts: does data-parallel training against the shared
memory learn as well as one worker? (``benchmarks/bench_train_workers.py``)

Each worker count trains a fresh encoder from the same config with the same number of steps and
episodes per step (split over the workers), against its own fresh named memory, then evaluates
N-way 1-shot on the evaluation characters. The 95% intervals of the 1-shot accuracies decide.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from lifelong.experiments.omniglot.config import OmniglotTrainJob
from lifelong.experiments.omniglot.evaluate import ShotAccuracy
from lifelong.experiments.omniglot.jobs import run_train_job
from lifelong.experiments.omniglot.on_ray import memory_cpus


@dataclass
class WorkerRun:
    workers: int
    steps: int
    wall_s: float
    images_per_s: float
    accuracy: ShotAccuracy
    run_id: str | None


def job_for(job: OmniglotTrainJob, workers: int) -> OmniglotTrainJob:
    """The job with ``workers`` Ray Train workers, its own memory, run name and output."""
    return dataclasses.replace(
        job, ray=dataclasses.replace(job.ray, enabled=True, num_workers=workers,
                                     run_name=job.ray.run_name and
                                     f"{job.ray.run_name}-{workers}w"),
        shared_memory=dataclasses.replace(job.shared_memory,
                                          name=f"{job.shared_memory.name}-{workers}w",
                                          recreate=True),
        tracking=dataclasses.replace(job.tracking,
                                     run_name=f"{job.train.mode}-{workers}-workers"),
        output_dir=f"{job.output_dir}/{workers}-workers")


def compare_workers(job: OmniglotTrainJob, counts: list[int], progress: bool = True,
                    out=None) -> list[WorkerRun]:
    """Trains and evaluates once per worker count; prints the comparison table."""
    out = out or sys.stdout  # looked up now, not at import
    from lifelong.distributed import detach_shards
    from lifelong.runtime.ray_train import ensure_ray_for

    largest = job_for(job, max(counts))
    ensure_ray_for(largest.ray, memory_cpus(largest))  # sized for the largest worker group
    runs = []
    for workers in counts:
        one = job_for(job, workers)
        result = run_train_job(one, progress=progress)
        if one.train.mode == "lifelong":  # free its shards' CPUs for the next run
            detach_shards(one.shared_memory.name, one.shared_memory.storage_location())
        first = result.results[0]
        runs.append(WorkerRun(workers, result.train.steps, result.train.wall_s,
                              result.train.images_per_s, first, result.run_id))
    way = runs[0].accuracy.way
    print(f"\n{job.train.mode} training, {job.train.episodes_per_batch} episodes per step "
          f"over all workers, same steps; {way}-way 1-shot on the evaluation characters:\n",
          file=out)
    print(f"| workers | steps | images | wall (s) | images/s | {way}-way 1-shot | MLflow run |",
          file=out)
    print("| --- | --- | --- | --- | --- | --- | --- |", file=out)
    per_step = job.train.way * job.train.presentations * job.train.episodes_per_batch
    for r in runs:
        print(f"| {r.workers} | {r.steps} | {r.steps * per_step} | {r.wall_s:.0f} | "
              f"{r.images_per_s:.0f} | {100 * r.accuracy.mean(1):.2f} ± "
              f"{100 * r.accuracy.ci95(1):.2f} | {r.run_id} |", file=out)
    base = runs[0].accuracy
    for r in runs[1:]:
        gap = abs(r.accuracy.mean(1) - base.mean(1))
        within = gap <= base.ci95(1) + r.accuracy.ci95(1)
        print(f"\n{r.workers} vs {runs[0].workers} workers: difference {100 * gap:.2f} points; "
              f"the 95% intervals {'overlap' if within else 'do NOT overlap'}", file=out)
    out.flush()
    return runs
