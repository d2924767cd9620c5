"""The ``tracking:`` section every job has: where its MLflow run goes."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lifelong.errors import ConfigError

# A registered model's name: what ``models:/<name>/<version>`` can spell without quoting.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: tracking_uri None uses $MLFLOW_TRACKING_URI, else the user's store
    ``sqlite:///~/.lifelong/mlruns.db`` (``$LIFELONG_HOME`` moves it).

    Attributes:
        enabled: Log the job to MLflow (False: nothing is logged).
        tracking_uri: The store (a relative SQLite path is made absolute).
        experiment: The experiment of a new run (each job has its own default).
        run_name: The new run's display name.
        artifact_location: Artifact root of a newly created experiment (None: ``mlartifacts``
            beside a SQLite store's file, MLflow's default for other stores).
        register_as: Register the job's trained model under this name in the model registry
            (a new version per run; None: logged, not registered).
    """

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "omniglot"
    run_name: str | None = None
    artifact_location: str | None = None
    register_as: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise ConfigError(f"must be a non-empty string, got {self.experiment!r}",
                              key="experiment")
        if self.register_as is not None and (not isinstance(self.register_as, str)
                                             or not _MODEL_NAME.fullmatch(self.register_as)):
            raise ConfigError("must be a model name of letters, digits, '_', '.' and '-' "
                              f"(at most 255, starting with a letter or digit), got "
                              f"{self.register_as!r}", key="register_as")
