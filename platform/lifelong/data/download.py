"""Downloading a data archive from its official URL and verifying its checksum.

Shared by the data loaders: a download streams to a temporary file next to its destination,
hashes it on the way, and is renamed into place only when its md5 matches, so an interrupted or
tampered download never leaves a file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from lifelong.errors import CorruptArchiveError, DataError

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60.0


def download_verified(url: str, destination: Path, md5: str | None, *,
                      progress: bool = True) -> Path:
    """Downloads `url` to `destination`, accepting it only if its md5 matches.

    Args:
        url: Any URL urllib opens (https://, http://, file://).
        destination: Final path of the file; its parent directory is created if needed.
        md5: Expected md5 hex digest of the downloaded bytes (None: the data set publishes none;
            the caller checks the file's structure instead).
        progress: Show a tqdm progress bar (bytes) while downloading.

    Returns:
        `destination`, now holding the verified file.

    Raises:
        DataError: The URL cannot be fetched (network error, HTTP error, timeout).
        CorruptArchiveError: The downloaded bytes fail the md5 check; nothing is left on disk.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name in the destination directory: concurrent downloaders do not clobber
    # each other, and the final os.replace is atomic because it stays on one file system.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part",
                                    dir=destination.parent)
    tmp_path = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, progress=progress, label=destination.name)
        if md5 is not None and digest != md5.lower():
            raise CorruptArchiveError(
                f"download of {url} failed its checksum: md5 {digest}, expected {md5}; "
                f"the file was removed")
        # mkstemp creates 0600 files; a cache is shared with the user's other processes.
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, destination)
    finally:
        tmp_path.unlink(missing_ok=True)
    return destination


def _stream(url: str, out, *, progress: bool, label: str) -> str:
    """Copies the body of `url` into the open binary file `out`; returns its md5 hex digest."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"Downloading {label}", disable=not progress) as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # URLError covers HTTP errors; OSError covers timeouts and resets mid-body; ValueError
        # covers malformed URLs. All mean "could not get the data", not "the data is bad".
        raise DataError(f"cannot download {url}: {exc}") from exc
    return digest.hexdigest()
