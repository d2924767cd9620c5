"""MLflow tracking: one run per job, with its config, metrics by step, tables and the model.

Every mlflow import of the platform lives in this package. The default store is the user's
SQLite file ``~/.lifelong/mlruns.db`` (``$LIFELONG_HOME/mlruns.db``; artifacts in
``mlartifacts/`` beside it), outside any working directory, so a job submitted with
``ray job submit --working-dir .`` keeps its run after Ray deletes its copy of the folder;
``$MLFLOW_TRACKING_URI`` or an explicit URI in the job's config points it anywhere else.
Metric names come from ``lifelong.metrics``.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from lifelong import metrics
from lifelong.locations import durable_path, lifelong_home
from lifelong.tracking.config import TrackingConfig

# MLflow rejects longer param values; longer ones are cut with a marker.
_MAX_PARAM_CHARS = 6000
_BATCH = 100  # MLflow's limit on params per log_batch call
# MLflow 3's experiment kinds: this one opens runs in the model-training views, not GenAI's.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
ARTIFACTS_FOLDER = "mlartifacts"  # beside a SQLite store's file


def default_tracking_uri() -> str:
    """``sqlite:///<home>/mlruns.db``, home = ``$LIFELONG_HOME`` or ``~/.lifelong``."""
    return f"sqlite:///{lifelong_home() / 'mlruns.db'}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The explicit URI, else ``$MLFLOW_TRACKING_URI``, else ``default_tracking_uri()``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def absolute_tracking_uri(uri: str | None = None) -> str:
    """``resolve_tracking_uri`` with a relative SQLite or file store made absolute
    (``lifelong.locations.durable_path``: never inside a Ray job's working-dir copy), so
    workers started in other directories log into the same store and the store outlives
    the job."""
    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + durable_path(uri[len("sqlite:///"):])
    if "://" not in uri:
        return durable_path(uri)
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

    A new run carries MLflow's source tags (``mlflow.source.name``, ``mlflow.source.type``,
    ``mlflow.source.git.commit`` when the code is a git checkout, ``mlflow.user``); a new
    experiment is of MLflow 3's model-training kind (``mlflow.experimentKind``).

    Args:
        experiment: Experiment name (created when missing).
        tracking_uri: Store URI; see ``resolve_tracking_uri``.
        run_name: Display name of the run.
        artifact_location: Artifact root of a newly created experiment (None: ``mlartifacts``
            beside a SQLite store's file, MLflow's default elsewhere).
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
            experiment_id = self.client.create_experiment(
                experiment, artifact_location=self._artifact_root(artifact_location),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        else:
            experiment_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in exp.tags:  # made before the platform set its kind
                self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG,
                                               EXPERIMENT_KIND)
        self.experiment_id = experiment_id
        run = self.client.create_run(experiment_id, run_name=run_name,
                                     tags={**source_tags(), **dict(tags or {})})
        self.run_id: str = run.info.run_id
        self.artifact_uri: str = run.info.artifact_uri

    def _artifact_root(self, artifact_location: str | None) -> str | None:
        """A new experiment's artifact root as a URI: the given one, else ``mlartifacts``
        beside a SQLite store's file (MLflow's own default, ``./mlruns``, is relative to the
        current directory, which a Ray job deletes), else MLflow's default."""
        if artifact_location:
            return artifact_location if "://" in artifact_location \
                else Path(durable_path(artifact_location)).as_uri()
        db = _sqlite_file(self.tracking_uri)
        if db is None:
            return None
        return (Path(durable_path(db)).parent / ARTIFACTS_FOLDER).as_uri()

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
        safe = {k: list(v) if isinstance(v, tuple) else v for k, v in safe.items()}
        self.log_text(yaml.safe_dump(safe, sort_keys=False), metrics.CONFIG_ARTIFACT)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Logs a flat ``{"section.field": value}`` mapping (e.g. ``config_to_dict(job)``) as
        plain values (``param_value``: None left out, ``true``/``false``, lists as ``[5, 20]``);
        passwords in URIs are redacted (``redact_uri``)."""
        from mlflow.entities import Param

        items = [Param(k, param_value(v)) for k, v in params.items() if v is not None]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Sets run tags (values as plain strings, like params)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, param_value(v)) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, tags=items)

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

    def log_table(self, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        """Stores rows (dicts of one shape) as an MLflow table artifact (``.json``), shown
        as a table in the UI's artifact view and by ``mlflow.load_table``."""
        columns = list(rows[0]) if rows else []
        data = {c: [row.get(c) for row in rows] for c in columns}
        self.client.log_table(self.run_id, data, artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copies a local file into the run's artifacts."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_accuracy_table(self, results: Iterable[Any], markdown: str) -> dict[str, float]:
        """Logs the headline cells as metrics (``eval.<N>way.1shot.acc`` / ``.ci95``, and
        5-shot where measured), every cell as the table artifact ``accuracy_table.json``
        (columns way, shot, acc, ci95, episodes) and the markdown table.

        Args:
            results: ``ShotAccuracy`` objects (way, episodes, presentations, mean(k), ci95(k)).
            markdown: The rendered table (``evaluate.accuracy_table``).

        Returns:
            The metrics logged.
        """
        values: dict[str, float] = {}
        rows: list[dict[str, Any]] = []
        for r in results:
            for k in range(r.presentations):
                acc, ci = float(r.mean(k)), float(r.ci95(k))
                rows.append({"way": r.way, "shot": k, "acc": acc, "ci95": ci,
                             "episodes": r.episodes})
                if k in metrics.HEADLINE_SHOTS:
                    values[metrics.shot_metric(metrics.EVAL, r.way, k)] = acc
                    values[metrics.shot_metric(metrics.EVAL, r.way, k, metrics.CI95)] = ci
        self.log_metrics(values)
        self.log_table(rows, metrics.ACCURACY_TABLE_JSON)
        self.log_text(markdown + "\n", metrics.ACCURACY_TABLE_MD)
        return values


def source_tags() -> dict[str, str]:
    """MLflow's source tags of this process: ``mlflow.source.name`` (the script),
    ``mlflow.source.type``, ``mlflow.user`` and, when the script sits in a git checkout,
    ``mlflow.source.git.commit``."""
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    tags = {"mlflow.source.name": script, "mlflow.source.type": "LOCAL"}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (some containers)
        pass
    commit = _git_commit(Path(script).parent if os.path.isfile(script) else Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit(folder: Path) -> str | None:
    """HEAD of the git checkout holding ``folder`` (None: not one, or no git)."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


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


def param_value(value: Any) -> str:
    """A param or tag value as it reads in the UI: ``true``/``false``, numbers and strings
    as they are, sequences as ``[5, 20]`` (JSON), passwords redacted, cut at MLflow's limit."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = json.dumps(list(value), default=str)
    else:
        text = str(value)
    text = redact_uri(text)
    return text if len(text) <= _MAX_PARAM_CHARS else text[:_MAX_PARAM_CHARS - 3] + "..."
