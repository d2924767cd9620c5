"""The ``lifelong`` command: ``lifelong train omniglot``, ``lifelong evaluate omniglot``,
``lifelong demo``, ``lifelong stream produce|run``. The scripts in ``jobs/`` call the same entry points.

Every job takes ``--config PATH.yaml`` plus ``key=value`` overrides (dotted keys, YAML values),
e.g. ``lifelong train omniglot --config jobs/configs/train_omniglot.yaml train.lr=3e-4``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from lifelong.config import load_config
from lifelong.errors import LifelongError

# The repository's job configs (an editable install keeps them next to the package).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "jobs" / "configs"

_OVERRIDES_HELP = ("key=value overrides of the config, dotted for nested keys, values parsed "
                   "as YAML (e.g. train.lr=3e-4 model.encoder=small tracking.enabled=false)")


def _default_config(name: str) -> str | None:
    path = CONFIG_DIR / name
    return str(path) if path.is_file() else None


def _job_parser(prog: str, description: str, default_config: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config,
                        help=f"YAML config (default: {default_config})")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES_HELP)
    return parser


def _parse_with_checkpoint(parser: argparse.ArgumentParser, argv: Sequence[str],
                           model: str = "encoder", run_help: str | None = None):
    """Adds --checkpoint / --run-id (the model to evaluate) and turns them into overrides."""
    parser.add_argument("--checkpoint", help=f"{model} checkpoint (.pt) written by training")
    parser.add_argument("--run-id", help=run_help
                        or f"MLflow run id whose {model} artifact to evaluate")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.checkpoint:
        overrides.append(f"checkpoint={args.checkpoint}")
    if args.run_id:
        overrides.append(f"run_id={args.run_id}")
    return args, overrides


def train_omniglot_main(argv: Sequence[str], prog: str = "lifelong train omniglot") -> int:
    """Trains the Omniglot one-shot encoder (episodic or life-long, on Ray Train or in
    process); see jobs/configs/train_omniglot.yaml."""
    from lifelong.experiments.omniglot.config import OmniglotTrainJob
    from lifelong.experiments.omniglot.jobs import run_train_job

    args = _job_parser(prog, "Train the Omniglot one-shot encoder with the memory loss "
                       "(Kaiser et al. 2017), log to MLflow, optionally evaluate.",
                       _default_config("train_omniglot.yaml")).parse_intermixed_args(argv)
    job = load_config(OmniglotTrainJob, args.config, args.overrides)
    run_train_job(job, progress=not args.no_progress)
    return 0


def train_translation_main(argv: Sequence[str],
                           prog: str = "lifelong train translation") -> int:
    """Trains the Multi30k English-German translator (with or without the memory)."""
    from lifelong.experiments.translation.config import TranslationJob
    from lifelong.experiments.translation.jobs import run_translation_train_job

    args = _job_parser(prog, "Train the Multi30k English-German translator, its decoder "
                       "consulting the life-long memory (model.use_memory=false: the "
                       "baseline); logs to MLflow, writes <output_dir>/translator.pt.",
                       _default_config("train_translation.yaml")).parse_intermixed_args(argv)
    job = load_config(TranslationJob, args.config, args.overrides)
    run_translation_train_job(job, progress=not args.no_progress)
    return 0


def evaluate_translation_main(argv: Sequence[str],
                              prog: str = "lifelong evaluate translation") -> int:
    """BLEU and the one-shot rare-word table of a translator checkpoint."""
    from lifelong.experiments.translation.config import TranslationEvalJob
    from lifelong.experiments.translation.jobs import evaluate_translation

    parser = _job_parser(prog, "Translate test_2016_flickr (BLEU with sacrebleu, its signature "
                         "recorded) and run the one-shot rare-word protocol: a test sentence "
                         "with a word rare in training, translated without and after one "
                         "showing of another pair holding it (memory written, no gradient).",
                         _default_config("evaluate_translation.yaml"))
    args, overrides = _parse_with_checkpoint(
        parser, argv, model="translator",
        run_help="MLflow run to log the results into (e.g. the training run)")
    job = load_config(TranslationEvalJob, args.config, overrides)
    evaluate_translation(job, progress=not args.no_progress)
    return 0


def evaluate_omniglot_main(argv: Sequence[str], prog: str = "lifelong evaluate omniglot") -> int:
    """Evaluates a trained encoder: N-way, k-shot accuracy with 95% intervals."""
    from lifelong.experiments.omniglot.config import OmniglotEvaluateJob
    from lifelong.experiments.omniglot.jobs import run_evaluate_job

    parser = _job_parser(prog, "Evaluate a trained encoder on the 659 Omniglot evaluation "
                         "characters (memory cleared per episode; accuracy per presentation).",
                         _default_config("evaluate_omniglot.yaml"))
    args, overrides = _parse_with_checkpoint(parser, argv)
    job = load_config(OmniglotEvaluateJob, args.config, overrides)
    run_evaluate_job(job, progress=not args.no_progress)
    return 0


def evaluate_retention_main(argv: Sequence[str],
                            prog: str = "lifelong evaluate retention") -> int:
    """Life-long Omniglot: recall of a class seen once, D examples later, memory never reset."""
    from lifelong.experiments.omniglot.retention_job import RetentionJob, run_retention_job

    parser = _job_parser(prog, "Retention curve of a trained encoder: a stream of evaluation "
                         "characters fed to memories of several sizes, never reset; each probe "
                         "class shown once and asked again D examples later. Prints a table, "
                         "logs metrics and a plot to MLflow.",
                         _default_config("evaluate_retention.yaml"))
    args, overrides = _parse_with_checkpoint(parser, argv)
    job = load_config(RetentionJob, args.config, overrides)
    run_retention_job(job, progress=not args.no_progress)
    return 0


def demo_main(argv: Sequence[str], prog: str = "lifelong demo") -> int:
    """The platform end to end on embedded defaults (what `make demo` runs)."""
    from lifelong.tracking import ui_command
    from lifelong.experiments.omniglot.config import OmniglotTrainJob
    from lifelong.experiments.omniglot.jobs import run_train_job

    args = _job_parser(prog, "Demo of the platform: an embedded Ray, a named 2-shard memory, a "
                       "short Ray Train run (2 workers, life-long against the shared memory), "
                       "the episodic evaluation and a small retention evaluation, all logged "
                       "to MLflow.", _default_config("demo.yaml")).parse_intermixed_args(argv)
    start = time.perf_counter()
    job = load_config(OmniglotTrainJob, args.config, args.overrides)
    result = run_train_job(job, progress=not args.no_progress)
    print(f"\n## Demo summary ({time.perf_counter() - start:.0f} s)\n")
    print("| stage | result |\n| --- | --- |")
    t = result.train
    where = (f"Ray Train, {job.ray.num_workers} workers" if job.ray.enabled
             else "in process")
    memory = (f", named memory {job.shared_memory.name!r} ({job.shared_memory.shards} shards, "
              f"{job.shared_memory.num_slots} slots)" if job.train.mode == "lifelong" else "")
    print(f"| training ({job.train.mode}, {where}{memory}) | {t.steps} steps in {t.wall_s:.0f} s, "
          f"{t.images_per_s:.0f} images/s |")
    for r in result.results:
        print(f"| episodic {r.way}-way 1-shot / 5-shot ({r.episodes} episodes) | "
              f"{100 * r.mean(1):.2f} ± {100 * r.ci95(1):.2f} / "
              + (f"{100 * r.mean(5):.2f} ± {100 * r.ci95(5):.2f} |" if r.presentations > 5
                 else "- |"))
    if result.retention is not None:
        res = result.retention.result
        for slots in res.settings.memory_sizes:
            cells = ", ".join(f"D={d}: {100 * res.acc(slots, d):.1f}"
                              for d in res.settings.delays)
            print(f"| retention, {res.settings.way}-way, {slots} slots | {cells} |")
    if result.run_id is not None:
        print(f"\nMLflow run {result.run_id}; open the UI with:\n  "
              f"{ui_command(result.tracking_uri)}")
    return 0


def stream_produce_main(argv: Sequence[str], prog: str = "lifelong stream produce") -> int:
    """Writes a long-tailed Omniglot stream of new classes into numbered segments."""
    from lifelong.data import load_omniglot
    from lifelong.streaming.produce import ProduceSettings, produce
    from lifelong.streaming.segments import list_segments

    parser = argparse.ArgumentParser(prog=prog, description=(
        "Write an endless-source stream for demos and tests: the Omniglot evaluation characters "
        "x4 rotations as new classes, long-tailed frequencies, distorted new drawings past a "
        "class's 20 real ones, as numbered Parquet segments after the last one present."))
    parser.add_argument("--to", required=True, help="segment folder or pyarrow filesystem URI")
    defaults = ProduceSettings()
    parser.add_argument("--examples", type=int, default=defaults.examples)
    parser.add_argument("--rows-per-segment", type=int, default=defaults.rows_per_segment)
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help="examples per second at most (0: as fast as possible)")
    parser.add_argument("--zipf-exponent", type=float, default=defaults.zipf_exponent,
                        help="skew of the class frequencies (0: uniform)")
    parser.add_argument("--distortion", type=float, default=defaults.distortion)
    parser.add_argument("--source-id", default=defaults.source_id)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--if-empty", action="store_true",
                        help="write nothing if the folder already holds segments")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_intermixed_args(argv)
    if args.if_empty and list_segments(args.to):
        print(f"{args.to} already holds segments: nothing written (--if-empty)")
        return 0
    settings = ProduceSettings(examples=args.examples, rows_per_segment=args.rows_per_segment,
                               rate=args.rate, zipf_exponent=args.zipf_exponent,
                               distortion=args.distortion, source_id=args.source_id,
                               seed=args.seed)
    images = load_omniglot("evaluation", progress=not args.no_progress).images
    written = list(produce(args.to, images, settings, progress=not args.no_progress))
    print(f"wrote {len(written)} segments ({settings.examples} examples) to {args.to}")
    return 0


def stream_run_main(argv: Sequence[str], prog: str = "lifelong stream run") -> int:
    """Feeds a stream of segments into a named memory, prequentially and exactly once."""
    from lifelong.streaming.config import StreamJob
    from lifelong.streaming.launch import run_stream_job

    parser = _job_parser(prog, "Read numbered Parquet segments in order as they appear, "
                         "predict each micro-batch with the named memory before writing it, "
                         "commit the read offset with every batch (a restart loses and repeats "
                         "nothing), copy bad segments to quarantine, log prequential and k-shot "
                         "accuracy to MLflow and Ray metrics. Stops at stream.max_examples, "
                         "after stream.idle_timeout_s without new segments, or on SIGTERM/"
                         "Ctrl-C after the batch in flight.",
                         _default_config("stream.yaml"))
    parser.add_argument("--source", help="segment folder or URI (= stream.source)")
    parser.add_argument("--checkpoint", help="image encoder checkpoint (= encoder.checkpoint)")
    parser.add_argument("--run-id", help="MLflow run whose encoder to use (= encoder.run_id)")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    for flag, key in ((args.source, "stream.source"), (args.checkpoint, "encoder.checkpoint"),
                      (args.run_id, "encoder.run_id")):
        if flag:
            overrides.append(f"{key}={flag}")
    job = load_config(StreamJob, args.config, overrides)
    run_stream_job(job, progress=not args.no_progress)
    return 0


_USAGE = """usage: lifelong COMMAND [--config PATH] [key=value ...]   (or lifelong --version)

commands:
  train omniglot      episodic training of the Omniglot one-shot encoder
  train translation   the Multi30k En-De translator with the memory on its decoder
  evaluate omniglot   N-way k-shot evaluation of a trained encoder (--checkpoint or --run-id)
  evaluate translation  BLEU and one-shot rare words of a translator (--checkpoint)
  evaluate retention  life-long recall of classes seen once, D examples earlier (never reset)
  demo                quick train + evaluation, logged to MLflow
  memory ...          named memories on a Ray cluster: create | list | status | snapshot | delete
  stream produce      write a long-tailed Omniglot stream of new classes as Parquet segments
  stream run          feed a stream into a named memory: prequential, exactly once, forever
  monitor ...         Prometheus for the Ray cluster (start) and the dashboards' queries (check)

Run `lifelong COMMAND --help` for a command's options."""


_JOBS = {"train_omniglot": train_omniglot_main, "evaluate_omniglot": evaluate_omniglot_main,
         "evaluate_retention": evaluate_retention_main, "demo": demo_main,
         "stream_produce": stream_produce_main, "stream_run": stream_run_main,
         "train_translation": train_translation_main,
         "evaluate_translation": evaluate_translation_main}


def job_main(name: str, argv: Sequence[str], prog: str) -> int:
    """Runs the job ``name`` (a script in jobs/); typed errors print one line and exit 2."""
    try:
        return _JOBS[name](argv, prog=prog)
    except LifelongError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatches ``lifelong <verb> [<task>] ...`` to the jobs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["memory"]:
        from lifelong.distributed.commands import main as memory_main

        return memory_main(argv[1:])
    if argv[:1] == ["monitor"]:
        from lifelong.monitor.command import main as monitor_main

        return monitor_main(argv[1:])
    if argv[:1] == ["demo"]:
        return job_main("demo", argv[1:], prog="lifelong demo")
    if tuple(argv[:2]) in (("train", "omniglot"), ("train", "translation"),
                           ("evaluate", "omniglot"), ("evaluate", "translation"),
                           ("evaluate", "retention"), ("stream", "produce"),
                           ("stream", "run")):
        return job_main(f"{argv[0]}_{argv[1]}", argv[2:], prog=f"lifelong {argv[0]} {argv[1]}")
    if argv[:1] == ["--version"]:
        print(f"lifelong {_version()}")
        return 0
    asked = argv[-1:] in (["-h"], ["--help"]) and len(argv) <= 2
    verb = argv[0] if len(argv) == 2 and argv[0] in _VERBS else None
    if asked and verb:  # `lifelong train --help`: that verb's commands
        lines = [line for line in _USAGE.splitlines() if line.startswith(f"  {verb} ")]
        print(f"usage: lifelong {verb} TASK [--config PATH] [key=value ...]\n\n"
              f"{verb} tasks:\n" + "\n".join(lines) +
              f"\n\nRun `lifelong {verb} TASK --help` for a task's options.")
        return 0
    asked = asked and len(argv) == 1
    print(_USAGE, file=sys.stdout if asked else sys.stderr)
    return 0 if asked else 2


_VERBS = ("train", "evaluate", "stream")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lifelong")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
