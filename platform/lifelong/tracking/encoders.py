"""The encoder a job names: a checkpoint path, or an MLflow run that logged one."""

from __future__ import annotations

from pathlib import Path

from lifelong.models.checkpoint import load_encoder


def resolve_encoder(checkpoint: str | None, run_id: str | None, tracking_uri: str | None):
    """Loads the encoder named by checkpoint path or MLflow run id (the run wins when both).

    Returns:
        (encoder in eval mode, its checkpoint metadata, the local checkpoint path)
    """
    if run_id is not None:
        from lifelong.tracking.runs import download_encoder

        path = download_encoder(run_id, tracking_uri)
    else:
        path = Path(checkpoint)
    encoder, meta = load_encoder(path)
    return encoder, meta, path
