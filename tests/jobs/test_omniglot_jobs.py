"""End-to-end: the train and evaluate jobs on the real Omniglot data (slow; `make test-slow`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.data import load_omniglot
from lifelong.errors import DataError

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_data():
    try:
        load_omniglot("evaluation", download=False, progress=False)
        load_omniglot("background", download=False, progress=False)
    except DataError as exc:
        pytest.skip(f"real Omniglot data not available (set LIFELONG_DATA_DIR): {exc}")


def run_job(script, *args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "LIFELONG_HOME": str(cwd)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: $LIFELONG_HOME/mlruns.db
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / script), "--no-progress", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_then_evaluate_from_run(real_data, tmp_path):
    out = run_job("train_omniglot.py", "model.encoder=small", "train.steps=30",
                  "train.max_minutes=null", "train.val_every=15", "train.val_episodes=50",
                  "evaluation.episodes=100", f"output_dir={tmp_path / 'out'}",
                  f"tracking.artifact_location={tmp_path / 'art'}", cwd=tmp_path)
    assert "| 5-way |" in out and "| 20-way |" in out
    run_id = out.split("MLflow run ")[1].split()[0]
    out = run_job("evaluate_omniglot.py", "--run-id", run_id, "evaluation.episodes=50",
                  cwd=tmp_path)
    assert "| 5-way |" in out
    assert (tmp_path / "mlruns.db").is_file()
