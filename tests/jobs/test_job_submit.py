"""A training job submitted with `ray job submit` to a head started with `ray start --head`,
token authentication on; its MLflow run holds the expected metrics."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifelong.data import load_multi30k, load_omniglot
from lifelong.errors import DataError

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))

pytestmark = pytest.mark.ray


def submit(command: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `ray job submit ...`, again while the head's job agent is not up yet (it comes up
    a few seconds after `ray start`)."""
    for _ in range(20):
        job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if "No available agent" not in job.stderr:
            return job
        time.sleep(2)
    return job


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
    job = submit(command, env)
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


def test_submitted_translation_job_trains_on_ray_against_a_shared_memory(ray_head, tmp_path):
    try:
        load_multi30k("train", download=False, progress=False)
    except DataError as exc:
        pytest.skip(f"real Multi30k not available (set LIFELONG_DATA_DIR): {exc}")
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": store,
                                "LIFELONG_DATA_DIR": os.environ.get("LIFELONG_DATA_DIR", "")}}
    command = [RAY, "job", "submit", "--address", ray_head.dashboard, "--working-dir", str(REPO),
               "--runtime-env-json", json.dumps(runtime_env), "--",
               "python", "jobs/train_translation.py", "--no-progress", "data.vocab_size=300",
               "data.max_pairs=400", "model.emb_dim=16", "model.hidden=32", "model.key_dim=8",
               "memory.choose_k=16", "train.batch_size=16", "train.steps=3",
               "train.max_minutes=null", "train.log_every=1", "ray.enabled=true",
               "ray.num_workers=2", "ray.cpus_per_worker=0.5", "shared_memory.num_slots=2048",
               "shared_memory.num_cpus=0.25", f"shared_memory.storage={tmp_path / 'mem'}",
               f"output_dir={tmp_path / 'out'}", f"tracking.artifact_location={tmp_path / 'art'}"]
    job = submit(command, ray_head.env, timeout=900)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout.lower()
    assert list((tmp_path / "out" / "ray_train").glob("translation-*/checkpoint_*"))
    assert (tmp_path / "out" / "translator.pt").is_file()

    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("translation").experiment_id])
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "train.nll")
    assert sorted(m.step for m in history) == [1, 2, 3]  # rank 0 alone logs
