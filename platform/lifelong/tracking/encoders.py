"""The encoder a job names: a checkpoint path, an MLflow model URI or run id."""

from __future__ import annotations

from lifelong import metrics
from lifelong.models.checkpoint import load_encoder
from lifelong.tracking.models import resolve_model_file


def resolve_encoder(checkpoint: str | None, run_id: str | None, tracking_uri: str | None):
    """Loads the encoder named by a checkpoint path or model URI (``models:/...``,
    ``runs:/...``), or by an MLflow run id (the run wins when both); never runs stored code.

    Returns:
        (encoder in eval mode, its checkpoint metadata, the local checkpoint path)
    """
    path = resolve_model_file(checkpoint, run_id, tracking_uri, metrics.ENCODER_ARTIFACT_DIR)
    encoder, meta = load_encoder(path)
    return encoder, meta, path
