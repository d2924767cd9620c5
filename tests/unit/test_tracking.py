import json
from pathlib import Path

import numpy as np
import pytest

from lifelong import metrics
from lifelong.experiments.omniglot.evaluate import ShotAccuracy, accuracy_table

mlflow = pytest.importorskip("mlflow")

from lifelong.errors import ConfigError  # noqa: E402
from lifelong.tracking import (  # noqa: E402
    EXPERIMENT_KIND,
    TrackedRun,
    TrackingConfig,
    absolute_tracking_uri,
    param_value,
    resolve_model_file,
    resolve_tracking_uri,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # One store for the module: creating an MLflow SQLite schema takes seconds.
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlruns.db'}", root / "artifacts"


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LIFELONG_HOME", raising=False)
    home = Path("~/.lifelong").expanduser()
    assert resolve_tracking_uri() == f"sqlite:///{home / 'mlruns.db'}"
    monkeypatch.setenv("LIFELONG_HOME", str(tmp_path))
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    assert resolve_tracking_uri() == "sqlite:////tmp/x.db"
    assert resolve_tracking_uri("file:///y") == "file:///y"


def test_relative_stores_become_absolute_and_never_land_in_a_ray_working_dir_copy(
        monkeypatch, tmp_path):
    monkeypatch.setenv("LIFELONG_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///m.db") == f"sqlite:///{tmp_path / 'm.db'}"
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert absolute_tracking_uri("sqlite:///m.db") == f"sqlite:///{tmp_path / 'home' / 'm.db'}"
    assert absolute_tracking_uri("http://head:5000") == "http://head:5000"


def test_params_are_plain_values():
    assert [param_value(v) for v in (True, False, (5, 20), [1.5], 3, 1e-3, "tiny")] == [
        "true", "false", "[5, 20]", "[1.5]", "3", "0.001", "tiny"]


def test_tracking_config_validates_the_registered_name():
    assert TrackingConfig(register_as="omniglot-encoder_v1.2").register_as
    for bad in ("", "a/b", "x:1", " name", 3):
        with pytest.raises(ConfigError, match="register_as"):
            TrackingConfig(register_as=bad)


def test_run_records_params_metrics_table_and_tags(store, tmp_path):
    uri, artifacts = store
    acc = ShotAccuracy(way=5, per_episode=np.array([[0.0, 1.0, 1.0], [0.0, 0.8, 1.0]]))
    with TrackedRun("test-exp", uri, run_name="r", artifact_location=str(artifacts)) as run:
        run.log_params({"train.lr": 1e-3, "model.encoder": "tiny", "train.val_ways": (5, 20),
                        "tracking.run_name": None, "ray.enabled": False})
        run.log_metrics({metrics.TRAIN_LOSS: 0.5}, step=1)
        run.log_metrics({metrics.TRAIN_LOSS: 0.25}, step=2)
        run.log_accuracy_table([acc], accuracy_table([acc]))
    client = mlflow.tracking.MlflowClient(uri)
    data = client.get_run(run.run_id)
    assert data.info.status == "FINISHED"
    assert data.data.params == {"train.lr": "0.001", "model.encoder": "tiny",
                                "train.val_ways": "[5, 20]", "ray.enabled": "false"}
    history = client.get_metric_history(run.run_id, metrics.TRAIN_LOSS)
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    # headline cells as metrics (presentations 3: 0..2 shots; 1-shot only), the rest a table
    assert data.data.metrics["eval.5way.1shot.acc"] == pytest.approx(0.9)
    assert data.data.metrics["eval.5way.1shot.ci95"] == pytest.approx(acc.ci95(1))
    assert not {"eval.5way.0shot.acc", "eval.5way.2shot.acc"} & set(data.data.metrics)
    names = {f.path for f in client.list_artifacts(run.run_id)}
    assert {metrics.ACCURACY_TABLE_JSON, metrics.ACCURACY_TABLE_MD} <= names
    # an MLflow table artifact (the UI shows it as a table): every cell a row
    assert '"type": "table"' in data.data.tags["mlflow.loggedArtifacts"]
    local = client.download_artifacts(run.run_id, metrics.ACCURACY_TABLE_JSON, str(tmp_path))
    table = json.loads(Path(local).read_text())
    assert table["columns"] == ["way", "shot", "acc", "ci95", "episodes"]
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [(r["way"], r["shot"], r["episodes"]) for r in rows] == [(5, 0, 2), (5, 1, 2), (5, 2, 2)]
    assert rows[1]["acc"] == pytest.approx(0.9)
    tags = data.data.tags
    assert tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"]
    experiment = client.get_experiment(data.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == EXPERIMENT_KIND
    assert str(artifacts) in data.info.artifact_uri


def test_a_sqlite_stores_artifacts_sit_beside_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlruns.db'}"
    with TrackedRun("beside", uri) as run:
        pass
    assert run.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())


def test_a_model_reference_that_names_nothing_is_one_clear_error(store, tmp_path):
    uri, _ = store
    assert resolve_model_file("runs/x/encoder.pt", None, uri, "encoder") == Path(
        "runs/x/encoder.pt")
    with pytest.raises(ConfigError, match="no encoder model at models:/missing/1"):
        resolve_model_file("models:/missing/1", None, uri, "encoder")


def test_failed_run_is_marked(store):
    uri, artifacts = store
    with pytest.raises(RuntimeError):
        with TrackedRun("test-exp", uri, artifact_location=str(artifacts)) as run:
            raise RuntimeError("boom")
    assert mlflow.tracking.MlflowClient(uri).get_run(run.run_id).info.status == "FAILED"
