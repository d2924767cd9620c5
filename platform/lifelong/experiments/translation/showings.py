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

The decoder, though, has learned these words from the training data by then, so alone the
showings teach the gate little. At the asked sentence's target tokens that the shown target
also holds and that are rare in the training targets (``blind_max_count``), the decoder is
made blind to the true token (as it is to a word it never learned): only the memory can supply
it, and the gate learns to open for such a close, confident answer.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np
import torch

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
        targets: their target token ids (for the blind positions).
        min_count, max_count: a word is rare enough when it occurs in this many training
            source sentences (min_count >= 2: there must be another pair to show).
        blind_max_count: a target token may be made blind when it occurs in at most this
            many training targets (0: never).
    """

    def __init__(self, sources: Sequence[str], targets: Sequence[Sequence[int]],
                 min_count: int = 2, max_count: int = 20, blind_max_count: int = 50):
        check_int("min_count", min_count, minimum=2)
        check_int("max_count", max_count, minimum=min_count)
        check_int("blind_max_count", blind_max_count, minimum=0)
        if len(sources) != len(targets):
            raise ConfigError(f"{len(sources)} sources but {len(targets)} targets")
        self.targets = targets
        token_counts = Counter(t for ids in targets for t in set(ids))
        self.blindable = {t for t, n in token_counts.items() if n <= blind_max_count}
        holders: dict[str, list[int]] = defaultdict(list)
        sentence_words = [set(words(s)) for s in sources]
        counts = Counter(w for ws in sentence_words for w in ws)
        for i, ws in enumerate(sentence_words):
            for w in ws:
                if min_count <= counts[w] <= max_count:
                    holders[w].append(i)
        self.holders = {w: np.asarray(ids) for w, ids in holders.items()}
        self.rare_words = [sorted(w for w in ws if w in self.holders) for ws in sentence_words]

    def plan(self, batch: Sequence[int], count: int,
             rng: np.random.Generator) -> list[tuple[int, int]]:
        """Up to ``count`` (position in ``batch``, pair id to show) couples: for sentences of the
        batch with a rare word (in random order), another pair holding one of their rare words,
        never a pair of the batch itself, each shown once."""
        if count < 0:
            raise ConfigError("count must be >= 0")
        batch = [int(i) for i in batch]
        in_batch, taken = set(batch), set()
        plan: list[tuple[int, int]] = []
        for pos in rng.permutation(len(batch)):
            if len(plan) >= count:
                break
            rare = self.rare_words[batch[pos]]
            if not rare:
                continue
            others = self.holders[rare[rng.integers(len(rare))]]
            others = [int(j) for j in others if int(j) not in in_batch and int(j) not in taken]
            if others:
                j = others[rng.integers(len(others))]
                taken.add(j)
                plan.append((int(pos), j))
        return plan

    def blind(self, batch: Sequence[int], plan: Sequence[tuple[int, int]],
              shape: tuple[int, int]) -> torch.Tensor:
        """[B, T] bool: the target positions of each asked sentence whose token the shown
        target also holds and that is rare in the training targets."""
        mask = torch.zeros(shape, dtype=torch.bool)
        for pos, j in plan:
            shown = set(self.targets[j]) & self.blindable
            for t, token in enumerate(self.targets[int(batch[pos])]):
                if token in shown:
                    mask[pos, t] = True
        return mask
