import json
from pathlib import Path

import numpy as np
import pytest

from lifelong import metrics
from lifelong.experiments.omniglot.evaluate import ShotAccuracy, accuracy_table

mlflow = pytest.importorskip("mlflow")

from lifelong.tracking import TrackedRun, download_encoder, resolve_tracking_uri  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # One store for the module: creating an MLflow SQLite schema takes seconds.
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlruns.db'}", root / "artifacts"


def test_tracking_uri_resolution(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == "sqlite:///mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    assert resolve_tracking_uri() == "sqlite:////tmp/x.db"
    assert resolve_tracking_uri("file:///y") == "file:///y"


def test_run_records_params_metrics_table_and_encoder(store, tmp_path):
    uri, artifacts = store
    checkpoint = tmp_path / "encoder.pt"
    checkpoint.write_bytes(b"weights")
    acc = ShotAccuracy(way=5, per_episode=np.array([[0.0, 1.0, 1.0], [0.0, 0.8, 1.0]]))
    with TrackedRun("test-exp", uri, run_name="r", artifact_location=str(artifacts)) as run:
        run.log_params({"train.lr": 1e-3, "model.encoder": "tiny"})
        run.log_metrics({metrics.TRAIN_LOSS: 0.5}, step=1)
        run.log_metrics({metrics.TRAIN_LOSS: 0.25}, step=2)
        run.log_accuracy_table([acc], accuracy_table([acc]))
        run.log_encoder(checkpoint)
    client = mlflow.tracking.MlflowClient(uri)
    data = client.get_run(run.run_id)
    assert data.info.status == "FINISHED"
    assert data.data.params == {"train.lr": "0.001", "model.encoder": "tiny"}
    history = client.get_metric_history(run.run_id, metrics.TRAIN_LOSS)
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    assert data.data.metrics["eval.5way.1shot.acc"] == pytest.approx(0.9)
    assert data.data.metrics["eval.5way.1shot.ci95"] == pytest.approx(acc.ci95(1))
    names = {f.path for f in client.list_artifacts(run.run_id)}
    assert {metrics.ACCURACY_TABLE_JSON, metrics.ACCURACY_TABLE_MD, "encoder"} <= names
    local = client.download_artifacts(run.run_id, metrics.ACCURACY_TABLE_JSON, str(tmp_path))
    table = json.loads(Path(local).read_text())
    assert table["5way"]["shots"]["1shot"]["acc"] == pytest.approx(0.9)
    fetched = download_encoder(run.run_id, uri, tmp_path / "dl")
    assert fetched.read_bytes() == b"weights"
    assert str(artifacts) in data.info.artifact_uri


def test_failed_run_is_marked(store):
    uri, artifacts = store
    with pytest.raises(RuntimeError):
        with TrackedRun("test-exp", uri, artifact_location=str(artifacts)) as run:
            raise RuntimeError("boom")
    assert mlflow.tracking.MlflowClient(uri).get_run(run.run_id).info.status == "FAILED"
