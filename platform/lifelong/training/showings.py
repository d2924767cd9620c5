"""Show-then-ask training: teach the translator to use a pair it was shown once.

At test time the one-shot protocol writes one sentence pair holding a rare word into the
memory (no gradient step) and then asks for another sentence holding the word. A model trained
only on the memory's recent history rarely meets that situation (a rare word's previous
occurrence is long overwritten), so its gate learns to ignore the memory exactly where the
memory could help. Training the way we test fixes that: before each step, for some sentences
of the batch that hold a word rare in training (``min_count`` to ``max_count`` occurrences),
*another* training pair holding the same word is shown to the memory, as the protocol does;
the step's loss then rewards trusting the memory on that word. A sentence's own pair is never
shown before it is scored (that would teach trusting exact copies).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np

from lifelong.config import check_int
from lifelong.errors import ConfigError

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def words(sentence: str) -> list[str]:
    """Lower-cased words of a sentence (letters only)."""
    return _WORD.findall(sentence.lower())


class Showings:
    """Chooses, for a batch, the other pairs to show the memory first.

    Args:
        sources: the training source sentences (index = pair id).
        min_count, max_count: a word is rare enough when it occurs in this many training
            source sentences (min_count >= 2: there must be another pair to show).
    """

    def __init__(self, sources: Sequence[str], min_count: int = 2, max_count: int = 20):
        check_int("train.show_min_count", min_count, minimum=2)
        check_int("train.show_max_count", max_count, minimum=min_count)
        holders: dict[str, list[int]] = defaultdict(list)
        sentence_words = [set(words(s)) for s in sources]
        counts = Counter(w for ws in sentence_words for w in ws)
        for i, ws in enumerate(sentence_words):
            for w in ws:
                if min_count <= counts[w] <= max_count:
                    holders[w].append(i)
        self.holders = {w: np.asarray(ids) for w, ids in holders.items()}
        self.rare_words = [sorted(w for w in ws if w in self.holders) for ws in sentence_words]

    def plan(self, batch: Sequence[int], count: int, rng: np.random.Generator) -> list[int]:
        """Up to ``count`` pair ids to show before training on ``batch``: for sentences of the
        batch with a rare word (in random order), another pair holding one of their rare words,
        never a pair of the batch itself."""
        if count < 0:
            raise ConfigError("count must be >= 0")
        in_batch = set(int(i) for i in batch)
        shown: list[int] = []
        for i in rng.permutation(np.asarray(batch)):
            if len(shown) >= count:
                break
            rare = self.rare_words[int(i)]
            if not rare:
                continue
            others = self.holders[rare[rng.integers(len(rare))]]
            others = [int(j) for j in others if int(j) not in in_batch and int(j) not in shown]
            if others:
                shown.append(others[rng.integers(len(others))])
        return shown
