"""A tiny encoder trained by the real training job (its loop replaced), logged and registered
in a real MLflow store: what the model-URI tests evaluate and stream with."""

from __future__ import annotations

from pathlib import Path

from lifelong.config import load_config
from lifelong.experiments.omniglot import jobs
from lifelong.experiments.omniglot.config import OmniglotTrainJob
from lifelong.experiments.omniglot.train import TrainResult
from lifelong.models import build_encoder
from lifelong.models.checkpoint import save_encoder

KEY_DIM = 16


def train_and_register(monkeypatch, tmp_path: Path, uri: str, name: str) -> jobs.JobResult:
    """Runs ``run_train_job`` with ``tracking.register_as=name``; the loop is replaced by a
    random tiny encoder written where the loop would write it."""

    def fake_loop(job, logger, progress):
        encoder = build_encoder("tiny", KEY_DIM, 0.0)
        path = save_encoder(Path(job.output_dir) / "encoder.pt", encoder, encoder_name="tiny",
                            key_dim=KEY_DIM, dropout=0.0, extra={"step": 3})
        return TrainResult(checkpoint=path, steps=3, wall_s=0.1, images_per_s=1.0,
                           last_metrics={})

    monkeypatch.setattr(jobs, "train_omniglot", fake_loop)
    job = load_config(OmniglotTrainJob, None, [
        "model.encoder=tiny", f"model.key_dim={KEY_DIM}", f"output_dir={tmp_path / 'out'}",
        f"tracking.tracking_uri={uri}", f"tracking.register_as={name}"])
    return jobs.run_train_job(job, progress=False)


def cli_run(capsys, uri: str, experiment: str, argv: list[str]):
    """Runs ``lifelong ARGV`` (exit 0 expected) and returns (its stdout, the one run it made in
    ``experiment`` of the store ``uri``)."""
    import mlflow

    from lifelong import cli

    code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    client = mlflow.tracking.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return out, run
