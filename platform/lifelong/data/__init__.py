"""Data sets and episode sampling: Omniglot, N-way K-shot episodes."""

from lifelong.data.omniglot import (
    OFFICIAL_LAYOUTS,
    OmniglotLayout,
    OmniglotSplit,
    load_omniglot,
)

__all__ = [
    "OFFICIAL_LAYOUTS",
    "OmniglotLayout",
    "OmniglotSplit",
    "load_omniglot",
]
