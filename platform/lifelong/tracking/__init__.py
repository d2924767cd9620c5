"""Experiment tracking (MLflow); mlflow is imported lazily, only inside this package."""

from lifelong.tracking.config import TrackingConfig
from lifelong.tracking.encoders import resolve_encoder
from lifelong.tracking.models import LoggedModel, is_model_uri, log_model, resolve_model_file
from lifelong.tracking.runs import (
    EXPERIMENT_KIND,
    TrackedRun,
    absolute_tracking_uri,
    default_tracking_uri,
    job_run,
    open_run,
    param_value,
    redact_uri,
    resolve_tracking_uri,
    source_tags,
    ui_command,
)

__all__ = ["EXPERIMENT_KIND", "LoggedModel", "TrackedRun", "TrackingConfig",
           "absolute_tracking_uri", "default_tracking_uri", "is_model_uri", "job_run",
           "log_model", "open_run", "param_value", "redact_uri", "resolve_encoder",
           "resolve_model_file", "resolve_tracking_uri", "source_tags", "ui_command"]
