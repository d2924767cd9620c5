"""MLflow models of the trained encoders and translators, and the one place where a job's
model reference becomes a local checkpoint file.

A trained model is logged with ``mlflow.pytorch.log_model``: an ``MLmodel`` with a signature
and an input example, optionally registered (``tracking.register_as``), and the platform's
own checkpoint (a ``state_dict`` with the config that rebuilds the model) among its
``extra_files``. References a job accepts for a model (``resolve_model_file``):

- a checkpoint path (``runs/omniglot/encoder.pt``);
- ``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``models:/<model id>``;
- ``runs:/<run id>/<name>`` (the model a run logged under that name, e.g. ``encoder``);
- a run id (``--run-id``): ``runs:/<run id>/<default name>``.

Safety: the platform never loads the model file MLflow wrote: it reads the checkpoint in
``extra_files/`` with ``torch.load(weights_only=True)`` (``lifelong.models.checkpoint``), so no
stored file runs code. The encoder's model file is ``torch.export``'s ``pt2`` (a traced
graph, no pickle); the translator's (packed sequences, a memory) cannot be traced and is
MLflow's pickle format, which MLflow itself refuses to load unless
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``: it is there for serving by whoever trusts the
store, never read by the platform.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from lifelong.errors import ConfigError
from lifelong.tracking.runs import TrackedRun, absolute_tracking_uri, store_lock

MODEL_URI_SCHEMES = ("models:/", "runs:/")
MLMODEL = "MLmodel"


def is_model_uri(reference: str | os.PathLike | None) -> bool:
    """Whether ``reference`` is an MLflow model URI (``models:/...``, ``runs:/...``)."""
    return isinstance(reference, str) and reference.startswith(MODEL_URI_SCHEMES)


@dataclass(frozen=True)
class LoggedModel:
    """A model logged into a run.

    Attributes:
        model_uri: ``models:/<model id>``.
        run_uri: ``runs:/<run id>/<name>``.
        registered: ``models:/<name>/<version>`` when registered, else None.
    """

    model_uri: str
    run_uri: str
    registered: str | None = None


@contextlib.contextmanager
def _fluent_target(tracking_uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """Points MLflow's fluent API (which ``log_model`` and artifact downloads use) at this
    store and experiment for a block, without touching what the caller set outside it."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID",
                                            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    if experiment_id is not None:
        os.environ["MLFLOW_EXPERIMENT_ID"] = str(experiment_id)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def log_model(run: TrackedRun, module, checkpoint: str | os.PathLike, *, name: str,
              input_example: np.ndarray, serialization_format: str = "pt2",
              register_as: str | None = None) -> LoggedModel:
    """Logs ``module`` into ``run`` with ``mlflow.pytorch.log_model``: signature inferred from
    ``input_example`` and the module's output on it, the checkpoint among the extra files.

    Args:
        run: The run (its store and experiment receive the model).
        module: The model in eval mode (one tensor in, one tensor out).
        checkpoint: The platform's checkpoint of it (``.pt``), what the platform loads back.
        name: The model's name in the run (``runs:/<run id>/<name>``).
        input_example: A batch the module takes.
        serialization_format: ``"pt2"`` (traced, no pickle) or ``"pickle"`` (a module
            ``torch.export`` cannot trace; see the module docstring).
        register_as: Registered model name (None: not registered).

    Returns:
        Where the model is.
    """
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = module(torch.from_numpy(input_example))
    signature = infer_signature(input_example, output.numpy())
    version = torch.__version__.split("+")[0]
    # pt2: the serving check (which reloads the model) is skipped; pickle passes every extra
    # argument on to torch.save, so its check runs, is refused by MLflow's own pickle guard
    # and would log a warning: quieted, the platform never serves from that file.
    extra = {"validate_serving_input": False} if serialization_format == "pt2" else {}
    quiet = logging.getLogger("mlflow.models.model")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with _fluent_target(run.tracking_uri, run.experiment_id):
            info = mlflow.pytorch.log_model(
                module, name=name, run_id=run.run_id, signature=signature,
                input_example=input_example, serialization_format=serialization_format,
                extra_files=[str(checkpoint)], pip_requirements=[f"torch=={version}"],
                registered_model_name=register_as, **extra)
    finally:
        quiet.setLevel(level)
    registered = None
    if register_as is not None and info.registered_model_version is not None:
        registered = f"models:/{register_as}/{info.registered_model_version}"
    return LoggedModel(model_uri=info.model_uri, run_uri=f"runs:/{run.run_id}/{name}",
                       registered=registered)


def resolve_model_file(reference: str | os.PathLike | None, run_id: str | None,
                       tracking_uri: str | None, name: str,
                       dst: str | os.PathLike | None = None) -> Path:
    """The local checkpoint file a job's model reference names (see the module docstring).

    Args:
        reference: A checkpoint path or an MLflow model URI (None: use ``run_id``).
        run_id: An MLflow run that logged the model as ``name`` (wins over ``reference``).
        tracking_uri: Store URI; see ``absolute_tracking_uri``.
        name: The model's name in a run (``encoder``, ``translator``).
        dst: Folder for a download (a temporary one by default).

    Returns:
        The checkpoint (``.pt``): the path itself, or the model's file in ``extra_files/``
        (runs logged before models were: the ``.pt`` in the run's ``<name>/`` artifacts).

    Raises:
        ConfigError: Nothing names a model, or the URI names none (one line: what is missing).
    """
    if run_id is not None:
        reference = f"runs:/{run_id}/{name}"
    if reference is None:
        raise ConfigError(f"name the {name}: a checkpoint path, a model URI or a run id")
    if not is_model_uri(reference):
        return Path(reference)
    import mlflow.artifacts

    uri = absolute_tracking_uri(tracking_uri)
    folder = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix=f"lifelong-{name}-"))
    folder.mkdir(parents=True, exist_ok=True)
    with store_lock(uri), _fluent_target(uri):
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(reference),
                                                             dst_path=str(folder),
                                                             tracking_uri=uri))
        except Exception as exc:  # mlflow raises several types for a missing run or model
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"no {name} model at {reference}: {first}") from exc
    return _checkpoint_in(local, reference, name)


def _checkpoint_in(local: Path, reference: str, name: str) -> Path:
    """The ``.pt`` checkpoint in a downloaded model (its extra files) or artifact folder."""
    if local.is_file():
        return local
    if (local / MLMODEL).is_file():
        import yaml

        flavor = (yaml.safe_load((local / MLMODEL).read_text()) or {}).get(
            "flavors", {}).get("pytorch", {})
        files = [local / e["path"] for e in flavor.get("extra_files") or []
                 if str(e.get("path", "")).endswith(".pt")]
    else:
        files = sorted(local.glob("*.pt"))
    if not files or not files[0].is_file():
        raise ConfigError(f"{reference} holds no {name} checkpoint (.pt)")
    return files[0]
