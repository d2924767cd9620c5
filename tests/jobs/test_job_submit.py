"""Training jobs submitted with `ray job submit --working-dir` to a head started with
`ray start --head`, token authentication on: their MLflow runs hold the expected metrics and
models, in stores and folders that outlive Ray's copy of the working directory."""

import json
import os
import shutil
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


def submit(command: list[str], env: dict, timeout: float = 600,
           cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs `ray job submit ...` (in ``cwd``), again while the head's job agent is not up yet
    (it comes up a few seconds after `ray start`)."""
    for _ in range(20):
        job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                             cwd=cwd)
        if "No available agent" not in job.stderr:
            return job
        time.sleep(2)
    return job


def test_a_submitted_job_keeps_its_run_metrics_and_model_after_its_working_copy_is_gone(
        ray_head, tmp_path):
    """The README's command as written (working dir, script, overrides; no store, no output
    folder named), a registered model asked for: the run, its metrics and the model are in
    the user's store afterwards, the outputs in the user's folder, never in Ray's copy."""
    try:
        load_omniglot("background", download=False, progress=False)
    except DataError as exc:
        pytest.skip(f"real Omniglot data not available (set LIFELONG_DATA_DIR): {exc}")
    home = tmp_path / "home"  # stands in for the user's ~/.lifelong
    env = {k: v for k, v in ray_head.env.items() if k != "MLFLOW_TRACKING_URI"}
    runtime_env = {"env_vars": {"LIFELONG_HOME": str(home),
                                "LIFELONG_DATA_DIR": os.environ.get("LIFELONG_DATA_DIR", ""),
                                "LIFELONG_CACHE_DIR": str(tmp_path / "cache")}}
    command = [RAY, "job", "submit", "--address", ray_head.dashboard, "--working-dir", ".",
               "--runtime-env-json", json.dumps(runtime_env), "--",
               "python", "jobs/train_omniglot.py", "--no-progress", "model.encoder=tiny",
               "train.steps=4", "train.max_minutes=null", "train.episodes_per_batch=2",
               "train.log_every=1", "evaluation.episodes=0",
               "tracking.register_as=submitted-encoder"]
    job = submit(command, env, cwd=REPO)  # from the checkout, as the README says
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout.lower()
    assert "MLflow model models:/submitted-encoder/1" in job.stdout
    # The job ran in Ray's copy of the folder, which Ray deletes: delete it now.
    copies = {p.resolve() for p in Path(ray_head.temp).glob(
        "session_*/runtime_resources/working_dir_files") if list(p.glob("_ray_pkg_*"))}
    assert copies
    for copy in copies:
        shutil.rmtree(copy)

    out = home / "runs" / "omniglot"  # output_dir=runs/omniglot, taken from the home
    assert (out / "encoder.pt").is_file()
    assert list((out / "ray_train").glob("omniglot-episodic-*/checkpoint_*"))
    import mlflow

    from lifelong.models.checkpoint import load_encoder
    from lifelong.tracking import resolve_model_file

    store = f"sqlite:///{home / 'mlruns.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("omniglot").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((home / "mlartifacts").as_uri())
    assert run.data.metrics["train.steps"] == 4
    assert "train.loss" in run.data.metrics and "train.images_per_s" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train.loss")]
    assert run.data.tags["mlflow.source.name"].endswith("jobs/train_omniglot.py")
    encoder, meta = load_encoder(resolve_model_file("models:/submitted-encoder/1", None, store,
                                                    "encoder"))
    assert meta["encoder"] == "tiny" and meta["extra"]["step"] == 4


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
    # The translator is the run's MLflow model; the run names the memory it trained against.
    from lifelong.models.checkpoint import TranslationModel
    from lifelong.tracking import resolve_model_file

    tags = runs[0].data.tags
    assert tags["lifelong.memory"] and len(json.loads(
        tags["lifelong.memory.snapshot_generation"])) == 2  # one per shard
    tm = TranslationModel.load(resolve_model_file(
        f"runs:/{runs[0].info.run_id}/translator", None, store, "translator"))
    assert tm.memory is not None and tm.memory.num_slots == 2048
