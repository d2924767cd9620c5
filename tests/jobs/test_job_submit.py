"""A training job submitted with `ray job submit` to a head started with `ray start --head`,
token authentication on; its MLflow run holds the expected metrics."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lifelong.data import load_omniglot
from lifelong.errors import DataError

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))

pytestmark = pytest.mark.ray


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def our_ray_processes(token: str) -> list[int]:
    """Processes of the head we started: they all inherited our one-off auth token (Linux)."""
    marker = f"RAY_AUTH_TOKEN={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


@pytest.fixture
def ray_head(tmp_path):
    temp = tempfile.mkdtemp(prefix="lifelong-head-")  # short: Ray's socket paths live there
    dashboard = free_port()
    # The cluster's `python` is this environment's (as after `source .venv/bin/activate`).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([RAY, "start", "--head", f"--port={free_port()}", "--num-cpus=2",
                    f"--temp-dir={temp}", "--include-dashboard=true",
                    f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--metrics-export-port={free_port()}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        for pid in our_ray_processes(env["RAY_AUTH_TOKEN"]):  # never `ray stop`: it would end
            # every Ray on the machine
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def test_submitted_training_job_logs_its_run(ray_head, tmp_path):
    try:
        load_omniglot("background", download=False, progress=False)
    except DataError as exc:
        pytest.skip(f"real Omniglot data not available (set LIFELONG_DATA_DIR): {exc}")
    address, env = ray_head
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
