"""Life-long Omniglot training in process against a local Memory vs with Ray Train against the
2-shard memory: same encoder, same episodes, same steps, same threads (issue 16).

Both runs train the same job from the same seed, one with ``ray.enabled=false`` (the memory a
local ``Memory`` of the same size, in the training process) and one with one Ray Train worker
against a fresh named 2-shard memory (pipelined: one round trip per memory step). Training
images/s come from each loop's own training time (Ray's start-up excluded); the table gives
the ratio Ray / in process, run side by side in this one process.

  python benchmarks/bench_lifelong_ray.py
  python benchmarks/bench_lifelong_ray.py train.steps=50
"""

import argparse
import dataclasses
import sys
from pathlib import Path

try:
    import lifelong  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from lifelong.config import load_config
from lifelong.errors import LifelongError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).parent / "configs" /
                                                 "bench_lifelong_ray.yaml"),
                        help="training job YAML (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides of the training config, e.g. train.steps=50")
    args = parser.parse_args(argv)
    from lifelong.distributed import detach_shards
    from lifelong.experiments.omniglot.config import OmniglotTrainJob
    from lifelong.experiments.omniglot.jobs import run_train_job

    try:
        job = load_config(OmniglotTrainJob, args.config, args.overrides)
        if job.train.mode != "lifelong":
            raise LifelongError("this benchmark compares life-long training (train.mode)")
        runs = {}
        for name, on_ray in (("in process, local Memory", False),
                             ("Ray Train, 2-shard memory", True)):
            one = dataclasses.replace(job, ray=dataclasses.replace(job.ray, enabled=on_ray),
                                      output_dir=f"{job.output_dir}/{'ray' if on_ray else 'local'}")
            runs[name] = run_train_job(one, progress=not args.no_progress).train
            if on_ray:
                detach_shards(job.shared_memory.name, job.shared_memory.storage_location())
    except LifelongError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    base = runs["in process, local Memory"].images_per_s
    print(f"\nlife-long training, {job.train.episodes_per_batch} episodes x {job.train.way}-way x "
          f"{job.train.presentations} per step, {job.train.threads} thread(s)\n")
    print("| run | steps | training s | images/s | vs in process |")
    print("|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r.steps} | {r.wall_s:.1f} | {r.images_per_s:.0f} | "
              f"{r.images_per_s / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
