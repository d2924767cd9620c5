"""MLflow tracking: one run per job, with its config, metrics by step, tables and the encoder.

Every mlflow import of the platform lives in this module. The default store is a local SQLite
file (``sqlite:///mlruns.db`` in the working directory); ``$MLFLOW_TRACKING_URI`` or an explicit
URI in the job's config points it anywhere else. Metric names come from ``lifelong.metrics``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from lifelong import metrics
from lifelong.errors import ConfigError
from lifelong.tracking.config import TrackingConfig

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
# MLflow rejects longer param values; longer ones are cut with a marker.
_MAX_PARAM_CHARS = 6000
_BATCH = 100  # MLflow's limit on params per log_batch call


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The explicit URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns.db``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_tracking_uri(uri: str | None = None) -> str:
    """``resolve_tracking_uri`` with a relative SQLite or file store made absolute, so worker
    processes started in other directories log into the same store."""
    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    if "://" not in uri:
        return os.path.abspath(uri)
    return uri


# scheme://user:password@  (the password up to the last "@" before the host)
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s]*@")
_SECRET_QUERY = re.compile(r"([?&](?:password|passwd|pwd|token|secret|access_key|"
                           r"secret_key)=)[^&\s]*", re.IGNORECASE)


def redact_uri(text: Any) -> str:
    """``text`` (a URI, or any string holding URIs) with every password replaced by ``***``:
    ``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (also
    ``?password=`` / ``?token=`` query values). Whatever is printed, logged as a param or stored
    in the config artifact goes through it; the run itself keeps the real URI."""
    text = str(text)
    return _SECRET_QUERY.sub(r"\1***", _CREDENTIALS.sub(r"\1:***@", text))


def mlflow_command() -> str:
    """This environment's ``mlflow``, as a shell runs it now: ``mlflow`` when that is the one
    on ``PATH``, else its path (a virtualenv not activated: ``.venv/bin/mlflow``, relative when
    below the working directory), else ``<python> -m mlflow``."""
    beside = Path(sys.executable).parent / "mlflow"  # not resolved: a venv's python is a link
    if not beside.is_file():
        return f"{shlex.quote(sys.executable)} -m mlflow"
    on_path = shutil.which("mlflow")
    if on_path and Path(on_path).resolve() == beside.resolve():
        return "mlflow"
    path = os.path.abspath(beside)
    here = os.getcwd()
    if path.startswith(here + os.sep):
        path = os.path.relpath(path, here)
    return shlex.quote(path)


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on this store (its password redacted), runnable
    as printed (see ``mlflow_command``)."""
    return f"{mlflow_command()} ui --backend-store-uri {shlex.quote(redact_uri(tracking_uri))}"


def _sqlite_file(uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI (None: another store, or in memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return path if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Holds ``<db>.lock`` (``fcntl.flock``, exclusive) for a SQLite store, nothing for any
    other: MLflow creates a new SQLite store's tables on first use without a lock of its own,
    so two jobs starting at once against a new store would race (``table experiments already
    exists``), and two creating one experiment would both try."""
    path = _sqlite_file(uri)
    if path is None:
        yield
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.abspath(path) + ".lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class TrackedRun:
    """An MLflow run; use as a context manager (the run ends FINISHED, or FAILED on error).

    Args:
        experiment: Experiment name (created when missing).
        tracking_uri: Store URI; see ``resolve_tracking_uri``.
        run_name: Display name of the run.
        artifact_location: Artifact root of a newly created experiment (None: MLflow's default).
        tags: Extra run tags.
        run_id: Log into this existing run instead of starting one (e.g. an evaluation of a
            trained encoder joins its training run); experiment and run_name are then ignored.
    """

    def __init__(self, experiment: str, tracking_uri: str | None = None,
                 run_name: str | None = None, artifact_location: str | None = None,
                 tags: Mapping[str, str] | None = None, run_id: str | None = None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        with store_lock(self.tracking_uri):  # a new SQLite store is set up by one job at a time
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            self._open(experiment, run_name, artifact_location, tags, run_id)

    def _open(self, experiment: str, run_name: str | None, artifact_location: str | None,
              tags: Mapping[str, str] | None, run_id: str | None) -> None:
        """Joins run ``run_id``, or starts a run in ``experiment`` (created when missing)."""
        if run_id is not None:
            run = self.client.get_run(run_id)
            self.experiment_id = run.info.experiment_id
            self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri
            return
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if artifact_location:
                location = Path(artifact_location).expanduser().resolve().as_uri() \
                    if "://" not in artifact_location else artifact_location
            experiment_id = self.client.create_experiment(experiment,
                                                          artifact_location=location)
        else:
            experiment_id = exp.experiment_id
        self.experiment_id = experiment_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
        self.run_id: str = run.info.run_id
        self.artifact_uri: str = run.info.artifact_uri

    def __enter__(self) -> "TrackedRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FINISHED" if exc_type is None else "FAILED")

    def end(self, status: str = "FINISHED") -> None:
        """Marks the run terminated."""
        self.client.set_terminated(self.run_id, status)

    def log_config(self, config: Any, extra: Mapping[str, Any] | None = None) -> None:
        """A job's config dataclass as params (``section.field``, plus ``extra``) and as the
        artifact ``config.yaml``."""
        import yaml

        from lifelong.config import config_to_dict

        flat = config_to_dict(config)
        self.log_params({**flat, **(extra or {})})
        safe = {k: redact_uri(v) if isinstance(v, str) else v for k, v in flat.items()}
        self.log_text(yaml.safe_dump(safe, sort_keys=False), metrics.CONFIG_ARTIFACT)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Logs a flat ``{"section.field": value}`` mapping (e.g. ``config_to_dict(job)``);
        passwords in URIs are redacted (``redact_uri``)."""
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH])

    def log_metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        """Logs scalar metrics at a step."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_text(self, text: str, artifact_file: str) -> None:
        """Stores text as an artifact file (e.g. ``"accuracy_table.md"``)."""
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copies a local file into the run's artifacts."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_encoder(self, checkpoint: str | os.PathLike) -> None:
        """Stores an encoder checkpoint under the ``encoder/`` artifact directory."""
        self.log_artifact(checkpoint, metrics.ENCODER_ARTIFACT_DIR)

    def log_accuracy_table(self, results: Iterable[Any], markdown: str) -> dict[str, float]:
        """Logs every k-shot cell as ``eval.<N>way.<k>shot.acc`` / ``.ci95`` plus JSON and MD.

        Args:
            results: ``ShotAccuracy`` objects (way, episodes, presentations, mean(k), ci95(k)).
            markdown: The rendered table (``evaluate.accuracy_table``).

        Returns:
            The metrics logged.
        """
        values: dict[str, float] = {}
        table: dict[str, Any] = {}
        for r in results:
            cells = {}
            for k in range(r.presentations):
                acc, ci = r.mean(k), r.ci95(k)
                values[metrics.shot_metric(metrics.EVAL, r.way, k)] = acc
                values[metrics.shot_metric(metrics.EVAL, r.way, k, metrics.CI95)] = ci
                cells[f"{k}shot"] = {"acc": acc, "ci95": ci}
            table[f"{r.way}way"] = {"episodes": r.episodes, "shots": cells}
        self.log_metrics(values)
        self.log_text(json.dumps(table, indent=2), metrics.ACCURACY_TABLE_JSON)
        self.log_text(markdown + "\n", metrics.ACCURACY_TABLE_MD)
        return values


def open_run(tracking: TrackingConfig, run_id: str | None = None,
             tags: Mapping[str, str] | None = None) -> TrackedRun | None:
    """The job's MLflow run (a new one, or ``run_id``); None when tracking is off. The caller
    ends it; ``job_run`` does that for a block."""
    if not tracking.enabled:
        return None
    return TrackedRun(tracking.experiment, absolute_tracking_uri(tracking.tracking_uri),
                      run_name=tracking.run_name, artifact_location=tracking.artifact_location,
                      tags=tags, run_id=run_id)


@contextlib.contextmanager
def job_run(tracking: TrackingConfig, run_id: str | None = None,
            tags: Mapping[str, str] | None = None,
            end: bool = True) -> Iterator[TrackedRun | None]:
    """The life cycle of a job's run: ``with job_run(job.tracking) as run:`` gives the run
    (None when tracking is off) and ends it FINISHED, or FAILED when the block raises (also on
    Ctrl-C).

    Args:
        tracking: The job's ``tracking:`` section.
        run_id: Log into this existing run (e.g. an evaluation joining its training run).
        tags: Tags of a new run.
        end: False leaves a run that finished its block open (a stream job that resumes into
            it later); a failed block still marks it FAILED.
    """
    run = open_run(tracking, run_id=run_id, tags=tags)
    try:
        yield run
    except BaseException:
        if run is not None:
            run.end("FAILED")
        raise
    if run is not None and end:
        run.end("FINISHED")


def _param_str(value: Any) -> str:
    text = redact_uri(value)
    return text if len(text) <= _MAX_PARAM_CHARS else text[:_MAX_PARAM_CHARS - 3] + "..."


def download_encoder(run_id: str, tracking_uri: str | None = None,
                     dst: str | os.PathLike | None = None) -> Path:
    """Fetches the encoder checkpoint a run logged with ``log_encoder``.

    Args:
        run_id: The MLflow run id.
        tracking_uri: Store URI; see ``resolve_tracking_uri``.
        dst: Local directory for the download (a temporary one by default).

    Returns:
        The local path of the ``.pt`` file.

    Raises:
        ConfigError: The run has no encoder artifact.
    """
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        if _sqlite_file(uri) is not None:
            client.search_experiments(max_results=1)  # sets a new store up under the lock
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="lifelong-encoder-"))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, metrics.ENCODER_ARTIFACT_DIR, str(dst))
    except Exception as exc:  # mlflow raises several types for a missing run or artifact
        raise ConfigError(f"run {run_id} has no '{metrics.ENCODER_ARTIFACT_DIR}/' artifact: "
                          f"{exc}") from exc
    files = sorted(Path(local).glob("*.pt"))
    if not files:
        raise ConfigError(f"run {run_id} has no encoder checkpoint under "
                          f"'{metrics.ENCODER_ARTIFACT_DIR}/'")
    return files[0]
