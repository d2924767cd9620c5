"""The ``lifelong`` command: ``lifelong train omniglot``, ``lifelong evaluate omniglot``,
``lifelong demo``, ``lifelong stream produce|run`` (the tree: ``COMMANDS``). The scripts in
``jobs/`` call the same entry points.

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


_MODEL_HELP = ("{} checkpoint (.pt) written by training, or an MLflow model URI "
               "(models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/NAME)")


def _parse_with_checkpoint(parser: argparse.ArgumentParser, argv: Sequence[str],
                           model: str = "encoder", run_help: str | None = None):
    """Adds --checkpoint / --model / --run-id (the model to evaluate) and turns them into
    overrides; --checkpoint and --model both take a .pt path or an MLflow model URI."""
    parser.add_argument("--checkpoint", "--model", dest="checkpoint",
                        help=_MODEL_HELP.format(model))
    parser.add_argument("--run-id", help=run_help
                        or f"MLflow run id whose {model} model to evaluate")
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
    from lifelong.data.multi30k import TEST_SPLITS
    from lifelong.experiments.translation.config import TranslationEvalJob
    from lifelong.experiments.translation.jobs import evaluate_translation

    parser = _job_parser(prog, "Translate a Multi30k test set (BLEU with sacrebleu, its "
                         "signature recorded) and run the one-shot rare-word protocol: a test "
                         "sentence with a word rare in training, translated without and after "
                         "one showing of another pair holding it (memory written, no gradient).",
                         _default_config("evaluate_translation.yaml"))
    parser.add_argument("--split", help=f"test set (= split): {', '.join(TEST_SPLITS)}, or "
                        "all (one BLEU line per set found; rare words on the first)")
    args, overrides = _parse_with_checkpoint(
        parser, argv, model="translator",
        run_help="MLflow run to log the results into (e.g. the training run)")
    if args.split:
        overrides.append(f"split={args.split}")
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
    parser.add_argument("--protocol", choices=("within-alphabet",),
                        help="within-alphabet: also 20-way 1-shot episodes inside one "
                             "alphabet (Lake et al.), beside the standard table (alone: "
                             "evaluation.protocols=[within-alphabet])")
    args, overrides = _parse_with_checkpoint(parser, argv)
    if args.protocol:
        overrides.append(f"evaluation.protocols=[standard,{args.protocol}]")
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


def _flag_overrides(args, **keys: str) -> list[str]:
    """The parsed key=value overrides, then ``key=value`` for each flag given (``keys`` maps a
    flag's attribute to its config key): a flag wins over an override of the same key."""
    given = [(key, getattr(args, flag)) for flag, key in keys.items()]
    return [*args.overrides, *(f"{key}={value}" for key, value in given if value is not None)]


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
    parser.add_argument("--checkpoint", "--model", dest="checkpoint",
                        help=_MODEL_HELP.format("image encoder") + " (= encoder.checkpoint)")
    parser.add_argument("--run-id", help="MLflow run whose encoder to use (= encoder.run_id)")
    args = parser.parse_intermixed_args(argv)
    overrides = _flag_overrides(args, source="stream.source", checkpoint="encoder.checkpoint",
                                run_id="encoder.run_id")
    job = load_config(StreamJob, args.config, overrides)
    run_stream_job(job, progress=not args.no_progress)
    return 0


def serve_main(argv: Sequence[str], prog: str = "lifelong serve") -> int:
    """Serves a named memory over HTTP with Ray Serve until Ctrl-C."""
    from lifelong.service.config import ServeJob
    from lifelong.service.launch import run_service

    parser = _job_parser(prog, "Serve a named life-long memory over HTTP (Ray Serve): POST "
                         "/predict answers examples (label, similarity, nearest neighbours' "
                         "labels), POST /learn writes labelled examples exactly once per "
                         "request id and answers once they are durable, GET /healthz, GET "
                         "/status. Binds to 127.0.0.1 unless serve.host says otherwise; "
                         "Ctrl-C stops the service (the memory stays).",
                         _default_config("serve.yaml"))
    parser.add_argument("--checkpoint", "--model", dest="checkpoint",
                        help=_MODEL_HELP.format("image encoder") + " (= encoder.checkpoint)")
    parser.add_argument("--run-id", help="MLflow run whose encoder to use (= encoder.run_id)")
    parser.add_argument("--memory", help="the named memory to serve (= shared_memory.name)")
    parser.add_argument("--port", type=int, help="HTTP port (= serve.port)")
    args = parser.parse_intermixed_args(argv)
    overrides = _flag_overrides(args, checkpoint="encoder.checkpoint", run_id="encoder.run_id",
                                memory="shared_memory.name", port="serve.port")
    run_service(load_config(ServeJob, args.config, overrides))
    return 0


_JOBS = {"train_omniglot": train_omniglot_main, "evaluate_omniglot": evaluate_omniglot_main,
         "evaluate_retention": evaluate_retention_main, "demo": demo_main,
         "stream_produce": stream_produce_main, "stream_run": stream_run_main,
         "train_translation": train_translation_main,
         "evaluate_translation": evaluate_translation_main, "serve": serve_main}


def job_main(name: str, argv: Sequence[str], prog: str) -> int:
    """Runs the job ``name`` (a script in jobs/); typed errors print one line and exit 2."""
    try:
        return _JOBS[name](argv, prog=prog)
    except LifelongError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _memory_main(argv: Sequence[str], prog: str) -> int:
    from lifelong.distributed.commands import main as memory_main

    return memory_main(argv)


def _monitor_main(argv: Sequence[str], prog: str) -> int:
    from lifelong.monitor.command import main as monitor_main

    return monitor_main(argv)


def _job(name: str):
    return lambda argv, prog: job_main(name, argv, prog)


# The command tree: the words of a command -> (one-line summary, runner(argv, prog) -> exit
# code). `build_parser` and `main` read it, so a command added here is dispatched, listed by
# the `--help` of every group above it and walked by tests/unit/test_cli.py.
COMMANDS = {
    ("train", "omniglot"): ("episodic training of the Omniglot one-shot encoder",
                            _job("train_omniglot")),
    ("train", "translation"): ("the Multi30k En-De translator with the memory on its decoder",
                               _job("train_translation")),
    ("evaluate", "omniglot"): ("N-way k-shot evaluation of a trained encoder (--checkpoint or "
                               "--run-id)", _job("evaluate_omniglot")),
    ("evaluate", "translation"): ("BLEU on a Multi30k test set or all four (--split), one-shot "
                                  "rare words (--checkpoint)", _job("evaluate_translation")),
    ("evaluate", "retention"): ("life-long recall of classes seen once, D examples earlier "
                                "(never reset)", _job("evaluate_retention")),
    ("demo",): ("quick train + evaluation, logged to MLflow", _job("demo")),
    ("memory",): ("named memories on a Ray cluster: create | list | status | snapshot | "
                  "delete", _memory_main),
    ("stream", "produce"): ("write a long-tailed Omniglot stream of new classes as Parquet "
                            "segments", _job("stream_produce")),
    ("stream", "run"): ("feed a stream into a named memory: prequential, exactly once, "
                        "forever", _job("stream_run")),
    ("serve",): ("an online service over HTTP (Ray Serve): predict, learn exactly once per "
                 "request id", _job("serve")),
    ("monitor",): ("Prometheus for the Ray cluster (start) and the dashboards' queries "
                   "(check)", _monitor_main),
}


def _listing(prefix: tuple[str, ...]) -> str:
    """The commands under ``prefix``, one a line with its summary (a help's epilog)."""
    rows = [(" ".join(words), summary) for words, (summary, _) in COMMANDS.items()
            if words[:len(prefix)] == prefix]
    width = max(len(name) for name, _ in rows) + 2
    return "\n".join(f"  {name:<{width}}{summary}" for name, summary in rows)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of ``COMMANDS``: ``lifelong`` and each group (``train``, ...) list
    their commands in ``--help``; a command's own options are its job's parser (its
    ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="lifelong", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="lifelong COMMAND [--config PATH] [key=value ...]   (or lifelong --version)",
        epilog=f"commands:\n{_listing(())}\n\nRun `lifelong COMMAND --help` for a command's "
               "options.")
    parser.add_argument("--version", action="version", version=f"lifelong {_version()}")
    groups = {(): parser.add_subparsers(metavar="COMMAND", required=True,
                                        help=argparse.SUPPRESS)}
    for words, (summary, _) in COMMANDS.items():
        for depth in range(1, len(words)):
            group = words[:depth]
            if group not in groups:
                name = " ".join(group)
                sub = groups[group[:-1]].add_parser(
                    group[-1], prog=f"lifelong {name}",
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    usage=f"lifelong {name} TASK [--config PATH] [key=value ...]",
                    epilog=f"{name} tasks:\n{_listing(group)}\n\nRun `lifelong {name} TASK "
                           "--help` for a task's options.")
                groups[group] = sub.add_subparsers(metavar="TASK", required=True,
                                                   help=argparse.SUPPRESS)
        groups[words[:-1]].add_parser(words[-1], help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatches ``lifelong <command words> ...`` to the command's runner (``COMMANDS``);
    anything else (``--help``, ``--version``, a group alone, an unknown command) is answered
    by ``build_parser``'s tree."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, (_, run) in sorted(COMMANDS.items(), key=lambda item: -len(item[0])):
        if tuple(argv[:len(words)]) == words:
            return run(argv[len(words):], prog=f"lifelong {' '.join(words)}")
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit_:  # help and version exit 0, usage errors 2
        return exit_.code if isinstance(exit_.code, int) else 2
    return 2  # not reached: the tree's leaves are all in COMMANDS


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lifelong")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
