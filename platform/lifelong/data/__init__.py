"""Data sets and episode sampling: Omniglot, N-way K-shot episodes, Multi30k."""

from lifelong.data.episodes import Episode, EpisodeIndices, EpisodeSampler
from lifelong.data.multi30k import Multi30kSplit, load_multi30k
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
    "Multi30kSplit",
    "OmniglotLayout",
    "OmniglotSplit",
    "load_multi30k",
    "load_omniglot",
]
