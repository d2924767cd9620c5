"""Durable local files: the one place that knows what makes a write survive a power cut.

A file a recovery depends on is durable when its data is synced (``fsync``) and the directory
entry that names it is synced too (an ``fsync`` of the folder after a create, rename, link or
unlink). ``publish`` does both for a complete file written under a temporary name, so readers
see either nothing or the whole file. Only local paths: object stores put whole objects
atomically and durably on their own, and pyarrow's other filesystems give no fsync to call.
"""

from __future__ import annotations

import os
import uuid
from typing import Callable

__all__ = ["fsync_dir", "fsync_file", "make_dirs", "publish", "write_all"]


def fsync_dir(folder: str) -> None:
    """Makes the folder's entries (files created, renamed or removed in it) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """Makes the file's data (and size) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``, each folder it creates made durable (the folder
    that holds it is synced)."""
    missing, folder = [], os.path.abspath(path)
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(path, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(os.path.dirname(created))


def write_all(fd: int, data: bytes) -> None:
    """Writes all of ``data`` to ``fd`` (``os.write`` may write part of it)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def publish(path: str, write: Callable[[str], None] | bytes, exclusive: bool = False) -> None:
    """Creates ``path`` durably from a complete temporary file.

    Args:
        path: the file to create (or replace, unless ``exclusive``).
        write: the bytes, or a function that writes the file at the temporary path it is given.
        exclusive: fail with FileExistsError when ``path`` exists, atomically (the temporary
            file is hard-linked into place, so of two racing creators exactly one wins).

    Raises:
        OSError: the file is not published durably: with ``exclusive`` it is removed again,
            else ``path`` holds its old or its new contents. The temporary file is removed.
    """
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        if isinstance(write, (bytes, bytearray, memoryview)):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                write_all(fd, bytes(write))
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            write(tmp)
            fsync_file(tmp)
        if exclusive:
            os.link(tmp, path)
            try:
                fsync_dir(folder)
            except OSError:
                os.unlink(path)
                raise
        else:
            os.replace(tmp, path)
            fsync_dir(folder)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
