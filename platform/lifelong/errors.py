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
    """A configuration has unknown keys or invalid values."""


class DataError(LifelongError):
    """A data set is missing or malformed."""


class CorruptArchiveError(DataError):
    """A data archive is corrupt, truncated or fails its checksum."""
