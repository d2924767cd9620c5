"""Typed errors of the platform.

Every error takes a single message argument, so it pickles and survives being sent between Ray
processes with its type intact. Bad input raises one of these before any state is changed.
"""


class LifelongError(Exception):
    """Base class of every error the platform raises on purpose."""


class InvalidQueryError(LifelongError, ValueError):
    """A query batch has the wrong shape, dtype or device, or holds NaN/Inf."""


class InvalidLabelError(LifelongError, ValueError):
    """Labels have the wrong shape or dtype, or lie outside [0, num_values)."""


class MemoryStateError(LifelongError, ValueError):
    """A memory state (state_dict, snapshot) is malformed or does not fit the memory."""


class ConfigError(LifelongError, ValueError):
    """A configuration has unknown keys or invalid values.

    Args:
        message: What is wrong.
        key: The field it is about, relative to its config section (e.g. ``"alpha"``): the
            config loader names it by its full path (``shared_memory.alpha``), so a section
            used in several jobs never hard-codes where it sits.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message if key is None else f"{key} {message}")
        self.key, self.detail = key, message

    def at(self, prefix: str) -> str:
        """The message with the key's full path, the section's ``prefix`` (``"train."``) first."""
        return str(self) if self.key is None else f"{prefix}{self.key} {self.detail}"


class DataError(LifelongError):
    """A data set is missing or malformed."""


class CorruptArchiveError(DataError):
    """A data archive is corrupt, truncated or fails its checksum."""


class MemoryNameError(LifelongError, ValueError):
    """A memory name is invalid (e.g. it would escape the storage location)."""


class MemoryNotFoundError(LifelongError, KeyError):
    """No memory of that name exists at the storage location."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MemoryExistsError(LifelongError, ValueError):
    """A memory of that name already exists."""


class CorruptStateError(LifelongError):
    """A snapshot or update log file of a memory shard is corrupt; the shard refuses to start."""


class DurabilityError(LifelongError):
    """A write could not be made durable (disk full, I/O error): it was not applied, and the
    files are as they were before it."""


class ShardUnavailableError(LifelongError):
    """A memory shard did not answer in time."""


class ProtocolError(LifelongError, ValueError):
    """A frame of the direct shard channel is malformed, too large or not authenticated
    (``lifelong.distributed.wire``): it is refused before anything runs."""


class MonitorError(LifelongError):
    """The monitoring stack (``lifelong monitor``) cannot start or answer: the message says
    what is missing (the Prometheus binary, Ray's service-discovery file) and what to do."""


class CorruptSegmentError(DataError):
    """A stream segment is unreadable, truncated, has another schema or holds bad payloads."""


class UnsupportedOperationError(LifelongError, NotImplementedError):
    """A memory was asked for an option it cannot provide (the message names the option and
    why); nothing was changed."""


class SegmentExistsError(LifelongError, ValueError):
    """A stream segment of that number already exists; segments are never replaced."""


class ClusterAuthError(LifelongError):
    """A Ray cluster refused this process: token authentication is on there and this side
    has no token, or another one."""


class BadRequestError(LifelongError, ValueError):
    """A request to the online service (``lifelong serve``) is malformed or does not fit the
    memory (wrong shape or format, NaN, a label out of range, too large): nothing was changed.

    Args:
        message: What is wrong.
        status: The HTTP status it is answered with (400, 404, 405, 409 or 413).
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status

    def __reduce__(self):
        return type(self), (str(self), self.status)


class RequestConflictError(BadRequestError):
    """A ``/learn`` request id was used before with other examples or labels (HTTP 409)."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message, status)


class RequestInProgressError(LifelongError):
    """A ``/learn`` request id is being applied by another call right now: retry shortly."""
