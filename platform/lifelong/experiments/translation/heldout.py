"""Training pairs held out for the one-shot rare-word evaluation.

Multi30k's test sets rarely repeat a rare word, so the test split alone asks about fifty words
and a hit rate moves in steps of two points. Held-out words enlarge the evaluation: for each,
*two* training pairs holding it are removed from training, one to be shown to the memory at
evaluation and one to be asked. A word held in 2 training sources is then never seen in
training at all; one held in 3..7 is seen 1..5 times. The choice depends only on the training
sources and the seed, and the trained checkpoint records it, so an evaluation asks exactly the
pairs its model never trained on.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lifelong.config import check_int
from lifelong.errors import ConfigError
from lifelong.experiments.translation.showings import words


@dataclass(frozen=True)
class HeldOutWord:
    """A word and the two training pairs (indices into the training split) held out for it."""

    word: str
    shown: int
    asked: int

    def to_list(self) -> list:
        """[word, shown, asked]: the form a checkpoint records."""
        return [self.word, self.shown, self.asked]

    @classmethod
    def from_list(cls, row: Sequence) -> "HeldOutWord":
        if len(row) != 3 or not isinstance(row[0], str) or not all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in row[1:]):
            raise ConfigError(f"a held-out word is [word, shown pair, asked pair], got {row!r}")
        return cls(row[0], row[1], row[2])


def hold_out(sources: Sequence[str], count: int, max_count: int = 7,
             seed: int = 0) -> list[HeldOutWord]:
    """Chooses ``count`` words held in 2..``max_count`` training sources and two pairs of each.

    Words are drawn uniformly (seeded) among those eligible; the pairs of different words are
    disjoint (a word whose pairs are all taken already is skipped), so fewer than ``count``
    words come back only when the eligible ones run out.

    Args:
        sources: The training source sentences (index = pair id).
        count: How many words (0: none).
        max_count: The most training sources an eligible word may be held in (>= 2).
        seed: Seeds the draw.

    Returns:
        The held-out words, sorted by word.
    """
    check_int("heldout_words", count, minimum=0)
    check_int("heldout_max_count", max_count, minimum=2)
    if count == 0:
        return []
    holders: dict[str, list[int]] = defaultdict(list)
    for i, sentence in enumerate(sources):
        for w in set(words(sentence)):
            holders[w].append(i)
    eligible = sorted(w for w, ids in holders.items() if 2 <= len(ids) <= max_count)
    rng = np.random.default_rng(seed)
    taken: set[int] = set()
    chosen = []
    for pos in rng.permutation(len(eligible)):
        if len(chosen) == count:
            break
        w = eligible[pos]
        free = [i for i in holders[w] if i not in taken]
        if len(free) < 2:
            continue
        shown, asked = (int(free[j]) for j in rng.choice(len(free), 2, replace=False))
        taken.update((shown, asked))
        chosen.append(HeldOutWord(w, shown, asked))
    return sorted(chosen, key=lambda h: h.word)


def held_out_pairs(heldout: Sequence[HeldOutWord]) -> set[int]:
    """The training pair ids the held-out words remove from training."""
    return {i for h in heldout for i in (h.shown, h.asked)}
