"""Experiment tracking (MLflow); mlflow is imported lazily, only inside ``runs``."""

from lifelong.tracking.config import TrackingConfig
from lifelong.tracking.encoders import resolve_encoder
from lifelong.tracking.runs import (
    DEFAULT_TRACKING_URI,
    TrackedRun,
    absolute_tracking_uri,
    download_encoder,
    job_run,
    open_run,
    redact_uri,
    resolve_tracking_uri,
    ui_command,
)

__all__ = ["DEFAULT_TRACKING_URI", "TrackedRun", "TrackingConfig", "absolute_tracking_uri",
           "download_encoder", "job_run", "open_run", "redact_uri", "resolve_encoder",
           "resolve_tracking_uri", "ui_command"]
