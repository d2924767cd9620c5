"""The ``tracking:`` section every job has: where its MLflow run goes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: tracking_uri None uses $MLFLOW_TRACKING_URI, else ``sqlite:///mlruns.db``.

    Attributes:
        enabled: Log the job to MLflow (False: nothing is logged).
        tracking_uri: The store (a relative SQLite path is made absolute).
        experiment: The experiment of a new run (each job has its own default).
        run_name: The new run's display name.
        artifact_location: Artifact root of a newly created experiment.
    """

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "omniglot"
    run_name: str | None = None
    artifact_location: str | None = None
