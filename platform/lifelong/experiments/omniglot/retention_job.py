"""The retention job behind ``jobs/evaluate_retention.py`` / ``lifelong evaluate retention``:
the retention curve of a trained encoder, its episodic N-way 1-shot figure beside it, a table,
a plot and MLflow metrics."""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lifelong import metrics
from lifelong.config import check_int
from lifelong.data import load_omniglot
from lifelong.errors import ConfigError
from lifelong.experiments.omniglot.config import DataConfig
from lifelong.experiments.omniglot.evaluate import ShotAccuracy, evaluate_encoder
from lifelong.experiments.omniglot.retention import (
    RetentionResult,
    RetentionSettings,
    evaluate_retention,
)
from lifelong.memory import MemoryConfig
from lifelong.tracking import TrackingConfig, job_run, redact_uri, resolve_encoder


@dataclass(frozen=True)
class RetentionJob:
    """jobs/configs/evaluate_retention.yaml.

    Exactly one of ``checkpoint`` and ``run_id`` names the encoder; with ``run_id`` the
    results join that run.
    """

    checkpoint: str | None = None
    run_id: str | None = None
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(
        default_factory=lambda: TrackingConfig(experiment="omniglot-retention"))
    threads: int = 0

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.run_id is None):
            raise ConfigError("give exactly one of checkpoint=PATH and run_id=ID")
        check_int("threads", self.threads, minimum=0)


@dataclass
class RetentionReport:
    """The retention curve, its episodic reference, the rendered table, the slot count."""

    result: RetentionResult
    episodic: ShotAccuracy
    table: str
    slots_needed: int | None


def retention_table(result: RetentionResult, episodic: ShotAccuracy) -> str:
    """Markdown: one row per memory size, one column per delay; N-way acc ± CI (open set)."""
    s = result.settings
    head = "| slots | " + " | ".join(f"D = {d}" for d in s.delays) + " |"
    rows = [head, "| --- " * (len(s.delays) + 1) + "|"]
    for slots in s.memory_sizes:
        cells = [f"{100 * result.acc(slots, d):.1f} ± {100 * result.ci95(slots, d):.1f} "
                 f"({100 * result.open_acc(slots, d):.1f})" for d in s.delays]
        rows.append(f"| {slots} | " + " | ".join(cells) + " |")
    rows.append(f"| episodic | {100 * episodic.mean(1):.1f} ± {100 * episodic.ci95(1):.1f} "
                f"({episodic.way}-way 1-shot, {episodic.episodes} episodes, memory cleared "
                f"per episode) |" + " |" * (len(s.delays) - 1))
    inserts = " / ".join(f"{slots}: {result.inserts_between[slots, max(s.delays)]:.0f}"
                         for slots in s.memory_sizes)
    return "\n".join(rows) + (f"\n\n{s.way}-way accuracy (%) of the ask D examples after a "
                              f"single showing, ± 95% CI over {s.groups * s.way} asks; in "
                              f"brackets the open-set accuracy (nearest slot of the whole "
                              f"memory). Median inserts between showing and ask at "
                              f"D = {max(s.delays)}: {inserts}.")


def slots_needed(result: RetentionResult, episodic: ShotAccuracy, points: float) -> int | None:
    """Smallest memory size whose accuracy at the longest delay is within ``points`` of the
    episodic 1-shot figure (None: no size evaluated is)."""
    d = max(result.settings.delays)
    ok = [slots for slots in sorted(result.settings.memory_sizes)
          if 100 * result.acc(slots, d) >= 100 * episodic.mean(1) - points]
    return ok[0] if ok else None


def plot_retention(result: RetentionResult, episodic: ShotAccuracy, path: Path) -> Path:
    """Accuracy against delay (log scale), one line per memory size, the episodic figure dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.settings
    fig, (ax, ax_open) = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for slots in s.memory_sizes:
        acc = [100 * result.acc(slots, d) for d in s.delays]
        ci = [100 * result.ci95(slots, d) for d in s.delays]
        line = ax.errorbar(s.delays, acc, yerr=ci, marker="o", capsize=3,
                           label=f"{slots:,} slots")
        ax_open.plot(s.delays, [100 * result.open_acc(slots, d) for d in s.delays], marker="o",
                     color=line[0].get_color(), label=f"{slots:,} slots")
    ep = 100 * episodic.mean(1)
    ax.axhline(ep, color="grey", linestyle="--",
               label=f"episodic {episodic.way}-way 1-shot ({ep:.1f}%)")
    ax.axhline(100 / s.way, color="lightgrey", linestyle=":", label="chance")
    ax.set_ylabel(f"{s.way}-way accuracy of the ask (%)")
    ax.set_title("Recall of a class seen once, memory never reset")
    ax_open.set_ylabel("open-set accuracy of the ask (%)")
    ax_open.set_title("Nearest slot of the whole memory")
    for a in (ax, ax_open):
        a.set_xscale("log")
        a.set_ylim(0, 102)
        a.set_xlabel("delay D (examples of other classes between showing and ask)")
        a.grid(True, which="both", alpha=0.3)
        a.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def retention_rows(result: RetentionResult) -> list[dict[str, float]]:
    """Every cell of the curve: slots, delay, acc, ci95, open_acc, inserts (one row each)."""
    return [{"slots": slots, "delay": d, metrics.ACC: float(result.acc(slots, d)),
             metrics.CI95: float(result.ci95(slots, d)),
             metrics.OPEN_ACC: float(result.open_acc(slots, d)),
             metrics.INSERTS: float(result.inserts_between[slots, d])}
            for slots in result.settings.memory_sizes for d in result.settings.delays]


def retention_metrics(result: RetentionResult) -> dict[str, float]:
    """The headline figures: each memory size's N-way accuracy at the longest delay."""
    d = max(result.settings.delays)
    return {metrics.retention_metric(slots, d): float(result.acc(slots, d))
            for slots in result.settings.memory_sizes}


def measure_retention(encoder: torch.nn.Module, images, settings: RetentionSettings,
                      memory: MemoryConfig, progress: bool = True) -> RetentionReport:
    """The retention curve of ``encoder`` and its episodic N-way 1-shot reference.

    Args:
        images: [C, n, H, W] uint8 evaluation characters.
    """
    episodic = evaluate_encoder(encoder, images, way=settings.way, presentations=2,
                                episodes=settings.episodic_episodes, seed=settings.seed + 1,
                                memory=memory, progress=progress,
                                desc=f"episodic {settings.way}-way")
    result = evaluate_retention(encoder, images, settings, memory, progress=progress)
    return RetentionReport(result, episodic, retention_table(result, episodic),
                           slots_needed(result, episodic, settings.within_points))


def print_retention(report: RetentionReport, out=None) -> None:
    out = out or sys.stdout  # looked up now, not at import
    s = report.result.settings
    print(f"\nRetention of {s.way}-way 1-shot recall over a stream of "
          f"{report.result.stream_length} examples, memory never reset:\n\n{report.table}\n",
          file=out)
    needed = report.slots_needed
    print(f"Smallest memory within {s.within_points:g} points of the episodic figure at "
          f"D = {max(s.delays)}: "
          f"{needed if needed is not None else 'none of ' + str(list(s.memory_sizes))} slots",
          file=out, flush=True)


def log_retention(run, report: RetentionReport) -> None:
    """The headline metrics ``retention.*`` (accuracy at the longest delay per memory size,
    the episodic reference, the slots needed), every cell as the table artifact
    ``retention.json``, the markdown table and the plot into an MLflow run."""
    s = report.result.settings
    values = retention_metrics(report.result)
    values[metrics.shot_metric(metrics.RETENTION_EPISODIC, s.way, 1)] = report.episodic.mean(1)
    values[metrics.shot_metric(metrics.RETENTION_EPISODIC, s.way, 1, metrics.CI95)] = \
        report.episodic.ci95(1)
    values[metrics.RETENTION_SLOTS_NEEDED] = float(report.slots_needed or 0)
    run.log_metrics(values)
    run.log_text(report.table + "\n", metrics.RETENTION_TABLE_MD)
    run.log_table(retention_rows(report.result), metrics.RETENTION_TABLE_JSON)
    with tempfile.TemporaryDirectory() as tmp:
        run.log_artifact(plot_retention(report.result, report.episodic,
                                        Path(tmp) / metrics.RETENTION_PLOT))


def retention_stage(encoder: torch.nn.Module, settings: RetentionSettings, memory: MemoryConfig,
                    data: DataConfig, run=None, progress: bool = True,
                    out=None) -> RetentionReport:
    """Measures retention on the evaluation characters, prints it, logs it into ``run``
    (an MLflow run, or None): what the retention job and a training job with
    ``retention.enabled`` both run."""
    out = out or sys.stdout  # looked up now, not at import
    images = load_omniglot("evaluation", root=data.root, cache_dir=data.cache_dir,
                           progress=progress).images
    report = measure_retention(encoder, images, settings, memory, progress)
    print_retention(report, out)
    if run is not None:
        log_retention(run, report)
    return report


def run_retention_job(job: RetentionJob, progress: bool = True,
                      out=None) -> RetentionReport:
    """Evaluates retention and the episodic reference; prints and logs the table and plot."""
    out = out or sys.stdout  # looked up now, not at import
    start = time.perf_counter()
    if job.threads:
        torch.set_num_threads(job.threads)
    encoder, meta, checkpoint = resolve_encoder(job.checkpoint, job.run_id,
                                                job.tracking.tracking_uri)
    print(f"encoder {meta['encoder']} from {checkpoint}", file=out)
    with job_run(job.tracking, run_id=job.run_id, tags={"job": "evaluate_retention"}) as run:
        if run is not None and job.run_id is None:
            run.log_config(job, extra={"encoder": meta["encoder"]})
        report = retention_stage(encoder, job.retention, job.memory, job.data, run, progress,
                                 out)
    print(f"({time.perf_counter() - start:.0f} s)", file=out, flush=True)
    if run is not None:
        print(f"MLflow run {run.run_id} ({redact_uri(run.tracking_uri)}): metrics retention.*, "
              f"artifacts {metrics.RETENTION_PLOT}, {metrics.RETENTION_TABLE_MD}", file=out,
              flush=True)
    return report
