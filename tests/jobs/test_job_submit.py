"""A training job submitted with `ray job submit` to a head started with `ray start --head`,
token authentication on; its MLflow run holds the expected metrics."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifelong.data import load_omniglot
from lifelong.errors import DataError

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))

pytestmark = pytest.mark.ray


def test_submitted_training_job_logs_its_run(ray_head, tmp_path):
    try:
        load_omniglot("background", download=False, progress=False)
    except DataError as exc:
        pytest.skip(f"real Omniglot data not available (set LIFELONG_DATA_DIR): {exc}")
    address, env = ray_head.dashboard, ray_head.env
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": store,
                                "LIFELONG_DATA_DIR": os.environ.get("LIFELONG_DATA_DIR", ""),
                                "LIFELONG_CACHE_DIR": str(tmp_path / "cache")}}
    command = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "jobs/train_omniglot.py", "--no-progress", "model.encoder=tiny",
         "train.steps=4", "train.max_minutes=null", "train.episodes_per_batch=2",
         "train.log_every=1", "evaluation.episodes=0", f"output_dir={tmp_path / 'out'}",
         f"tracking.artifact_location={tmp_path / 'art'}"]
    for _ in range(20):  # the head's job agent comes up a few seconds after `ray start`
        job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in job.stderr:
            break
        time.sleep(2)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout.lower()
    # It trained with Ray Train on the cluster: checkpoints went through Ray Train's storage.
    assert list((tmp_path / "out" / "ray_train").glob("omniglot-episodic-*/checkpoint_*"))

    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("omniglot").experiment_id])
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert metrics["train.steps"] == 4
    assert "train.loss" in metrics and "train.images_per_s" in metrics
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train.loss")]
