"""On-disk cache of preprocessed data arrays.

A cache entry is one `.npz` file holding named arrays plus a JSON metadata record (what it was
built from and how). A reader passes the metadata it expects: an entry whose metadata differs, or
that cannot be read back in full, is treated as absent and gets rebuilt, never trusted. Entries
are written to a temporary file and renamed into place, so readers (other processes included)
only ever see complete files.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

_META_KEY = "__meta__"
_log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Returns `$LIFELONG_CACHE_DIR`, else `~/.cache/lifelong`."""
    configured = os.environ.get("LIFELONG_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lifelong"


def read_cached_arrays(path: Path, meta: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """Reads a cache entry if it exists, is intact and was built with exactly `meta`.

    Args:
        path: The `.npz` file of the entry.
        meta: The JSON-serialisable metadata the entry must carry (source identity, versions).

    Returns:
        The stored arrays by name (loaded in full), or None when the entry is missing, stale or
        unreadable; the caller then rebuilds it.
    """
    if not path.is_file():
        return None
    try:
        # allow_pickle=False: a cache file is data, never code, whoever wrote it.
        with np.load(path, allow_pickle=False) as npz:
            stored_meta = json.loads(str(npz[_META_KEY][()]))
            if stored_meta != json.loads(json.dumps(meta)):
                _log.info("cache %s is stale (built from %s); rebuilding", path, stored_meta)
                return None
            # Reading every member in full makes zipfile verify its CRC, so a corrupt byte shows
            # up here rather than as silently wrong pixels later.
            return {name: npz[name] for name in npz.files if name != _META_KEY}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        _log.warning("cache %s is unreadable (%s); rebuilding", path, exc)
        return None


def write_cached_arrays(path: Path, arrays: Mapping[str, np.ndarray],
                        meta: Mapping[str, Any]) -> None:
    """Writes a cache entry atomically (temporary file in the same directory, then rename).

    Args:
        path: The `.npz` file of the entry; parent directories are created.
        arrays: Named arrays to store (no object dtypes: they would need pickling).
        meta: JSON-serialisable metadata that `read_cached_arrays` will compare against.

    Raises:
        OSError: The entry cannot be written (read-only or full file system). Nothing partial
            is left behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez_compressed(out, **arrays, **{_META_KEY: np.array(json.dumps(meta))})
        # mkstemp creates 0600 files; a cache is shared with the user's other processes.
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
