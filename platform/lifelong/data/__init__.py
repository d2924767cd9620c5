"""Data sets and episode sampling: Omniglot, N-way K-shot episodes."""

from lifelong.data.episodes import Episode, EpisodeIndices, EpisodeSampler
from lifelong.data.omniglot import (
    OFFICIAL_LAYOUTS,
    OmniglotLayout,
    OmniglotSplit,
    load_omniglot,
)

__all__ = [
    "OFFICIAL_LAYOUTS",
    "Episode",
    "EpisodeIndices",
    "EpisodeSampler",
    "OmniglotLayout",
    "OmniglotSplit",
    "load_omniglot",
]
