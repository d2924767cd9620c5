"""Trains the fixture encoder of tests/distributed/test_serve_ray.py: ``serve_encoder.pt``.

The small conv-4 encoder of ``jobs/configs/train_omniglot.yaml`` trained episodically on the
*background* characters only (the test asks evaluation characters, never trained on) with the
platform's own training loop, in this process (no Ray, no MLflow), then checked with the
platform's episodic evaluation (5-way 1-shot on the evaluation characters)::

    LIFELONG_DATA_DIR=/path/to/data PYTHONPATH=platform python tests/data/train_serve_encoder.py \
        [--minutes 9] [--threads 1] [--episodes 1000]

The checkpoint keeps only what ``load_encoder`` needs (no training config), so it stays small.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "platform"))

from lifelong.config import config_from_dict  # noqa: E402
from lifelong.data import load_omniglot  # noqa: E402
from lifelong.experiments.omniglot.config import OmniglotTrainJob  # noqa: E402
from lifelong.experiments.omniglot.evaluate import evaluate_encoder  # noqa: E402
from lifelong.experiments.omniglot.train import train_omniglot  # noqa: E402
from lifelong.models.checkpoint import load_encoder, save_encoder  # noqa: E402

OUT = Path(__file__).resolve().parent / "serve_encoder.pt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=9.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=1000, help="evaluation episodes")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        job = config_from_dict(OmniglotTrainJob, {
            "model": {"encoder": "small", "key_dim": 128, "dropout": 0.0},
            "train": {"mode": "episodic", "max_minutes": args.minutes, "threads": args.threads,
                      "lr": 3.0e-3, "lr_schedule": "cosine", "checkpoint_every": 0,
                      "precision": "auto", "channels_last": True, "seed": 0},
            "tracking": {"enabled": False}, "ray": {"enabled": False}, "output_dir": tmp})
        result = train_omniglot(job, progress=True)
        encoder, meta = load_encoder(result.checkpoint)
    save_encoder(args.out, encoder, encoder_name=meta["encoder"], key_dim=meta["key_dim"],
                 dropout=meta["dropout"], extra={"trained_on": "omniglot background",
                                                 "steps": result.steps,
                                                 "minutes": args.minutes})
    evaluation = load_omniglot("evaluation")
    acc = evaluate_encoder(encoder, evaluation.images, way=5, presentations=6,
                           episodes=args.episodes, seed=1, progress=False)
    print(f"{args.out}: {result.steps} steps; 5-way 1-shot on the evaluation characters "
          f"({args.episodes} episodes): {100 * acc.mean(1):.2f} +- {100 * acc.ci95(1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
