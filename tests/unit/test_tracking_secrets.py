"""A tracking URI's password never leaves the process: not printed, not an MLflow param, not in
the config artifact."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

mlflow = pytest.importorskip("mlflow")

from lifelong import metrics  # noqa: E402
from lifelong.tracking import redact_uri, ui_command  # noqa: E402

SECRET = "s3cr3t-Pa55"
SECRET_URI = f"postgresql://alice:{SECRET}@db.example:5432/mlflow"


@pytest.mark.parametrize("uri, redacted", [
    (SECRET_URI, "postgresql://alice:***@db.example:5432/mlflow"),
    (f"postgresql+psycopg2://alice:{SECRET}@h/db?sslmode=require",
     "postgresql+psycopg2://alice:***@h/db?sslmode=require"),
    (f"mysql://bob:p@{SECRET}@h/db", "mysql://bob:***@h/db"),  # an unescaped @ in it
    (f"http://h:5000/?token={SECRET}&x=1", "http://h:5000/?token=***&x=1"),
    ("postgresql://alice@h/db", "postgresql://alice@h/db"),
    ("sqlite:////tmp/mlruns.db", "sqlite:////tmp/mlruns.db"),
    ("http://head:5000", "http://head:5000"),
])
def test_redact_uri_hides_every_password_and_keeps_the_rest(uri, redacted):
    assert redact_uri(uri) == redacted
    assert SECRET not in ui_command(uri)


def test_a_training_job_with_a_secret_tracking_uri_never_prints_or_logs_the_password(
        tmp_path, monkeypatch, capsys):
    """The job's config names a store with a password; the run goes to a SQLite store (the
    client is pointed there), so the URI is printed, logged and stored exactly as in real use."""
    from mlflow.tracking import MlflowClient

    import lifelong.experiments.translation.jobs as jobs
    from lifelong.experiments.translation.config import TranslationJob

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"

    class RedirectedClient(MlflowClient):
        def __init__(self, tracking_uri=None, registry_uri=None):
            super().__init__(tracking_uri=store)

    monkeypatch.setattr("mlflow.tracking.MlflowClient", RedirectedClient)
    checkpoint = tmp_path / "translator.pt"
    checkpoint.write_bytes(b"weights")
    monkeypatch.setattr(jobs, "train_translation", lambda job, logger, progress: SimpleNamespace(
        steps=1, wall_s=0.1, sentences_per_s=10.0, checkpoint=str(checkpoint), memory_tags={}))
    models = []  # a fake checkpoint is no model: what would be logged is recorded
    monkeypatch.setattr(jobs, "log_translator_model",
                        lambda run, path, register_as: models.append((run.run_id, path)))
    job = TranslationJob()
    job = dataclasses.replace(job, tracking=dataclasses.replace(
        job.tracking, tracking_uri=SECRET_URI, artifact_location=str(tmp_path / "art")))

    jobs.run_translation_train_job(job, progress=False)

    assert [path for _, path in models] == [str(checkpoint)]
    printed = capsys.readouterr()
    assert "MLflow run" in printed.out and "alice:***@db.example" in printed.out
    assert SECRET not in printed.out + printed.err
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("translation").experiment_id])
    params = run.data.params
    assert params["tracking.tracking_uri"] == "postgresql://alice:***@db.example:5432/mlflow"
    assert not [k for k, v in params.items() if SECRET in v]
    config = Path(client.download_artifacts(run.info.run_id, metrics.CONFIG_ARTIFACT,
                                            str(tmp_path / "dl"))).read_text()
    assert "alice:***@db.example" in config and SECRET not in config
