"""Trains the same job with 1 and with 2 Ray Train workers (same steps, same episodes per step
split over the workers, each against a fresh named memory) and compares the evaluated 1-shot
accuracy: data-parallel training must learn as well as one worker.

  python benchmarks/bench_train_workers.py --config benchmarks/configs/bench_train_workers.yaml
  python benchmarks/bench_train_workers.py --workers 1 2 4 train.steps=100
"""

import argparse
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
                                                 "bench_train_workers.yaml"),
                        help="training job YAML (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to compare, the first is the reference")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides of the training config, e.g. train.steps=100")
    args = parser.parse_args(argv)
    from lifelong.experiments.omniglot.compare_workers import compare_workers
    from lifelong.experiments.omniglot.config import OmniglotTrainJob

    try:
        job = load_config(OmniglotTrainJob, args.config, args.overrides)
        compare_workers(job, args.workers, progress=not args.no_progress)
    except LifelongError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
