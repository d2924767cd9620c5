"""Where a job's results go when a path is relative or not given: durable places, never the
temporary copy of the working directory that ``ray job submit --working-dir`` runs a job in.

The platform's home is ``$LIFELONG_HOME``, else ``~/.lifelong``: the default MLflow store
(``mlruns.db``, artifacts in ``mlartifacts/``) and named memories (``memories/``) live there.
A relative path is taken from the current directory, except inside Ray's working-dir copy
(``.../runtime_resources/working_dir_files/...``, deleted after the job), where it is taken
from the home instead: ``output_dir=runs/omniglot`` of a submitted job is
``~/.lifelong/runs/omniglot`` on the node that ran it.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "LIFELONG_HOME"
# Ray unpacks a job's --working-dir under <session>/runtime_resources/working_dir_files/.
_RAY_COPY_MARKER = f"{os.sep}runtime_resources{os.sep}working_dir_files{os.sep}"


def lifelong_home() -> Path:
    """``$LIFELONG_HOME``, else ``~/.lifelong`` (absolute, user expanded; not created)."""
    return Path(os.environ.get(HOME_ENV) or "~/.lifelong").expanduser().absolute()


def in_ray_working_dir_copy(cwd: str | os.PathLike | None = None) -> bool:
    """Whether ``cwd`` (default: the current directory) is a Ray job's working-dir copy."""
    folder = os.path.abspath(cwd if cwd is not None else os.getcwd()) + os.sep
    return _RAY_COPY_MARKER in folder


def durable_path(path: str | os.PathLike) -> str:
    """``path`` made absolute (``~`` expanded): from the current directory, or from
    ``lifelong_home()`` where the current directory is a Ray working-dir copy."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return str(path)
    base = lifelong_home() if in_ray_working_dir_copy() else Path.cwd()
    return str(base / path)


def durable_location(location: str) -> str:
    """``durable_path`` of a local path; a URI (``s3://...``) is kept as it is."""
    return location if "://" in location else durable_path(location)
