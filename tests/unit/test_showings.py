"""Show-then-ask training picks, for a batch, *other* pairs sharing a word rare in training."""

import numpy as np
import pytest
import torch

from lifelong.errors import ConfigError
from lifelong.experiments.translation.showings import Showings, words

SOURCES = [
    "A dog runs on the beach.",         # 0  beach x3
    "A dog sleeps near the beach.",     # 1
    "Two kids play on a beach.",        # 2
    "A man rides a unicycle.",          # 3  unicycle x1: nothing else to show
    "A girl holds a kite.",             # 4  kite x2
    "The kite flies high.",             # 5
    "A dog runs.",                      # 6  dog x4 (too common with max_count 3)
    "The dog eats.",                    # 7  the x4: too common
]
# target token ids: 9 stands for the rare German word of "beach" / "kite", 1 for common ones
TARGETS = [[1, 9, 2], [1, 2, 9], [9, 1], [1, 1], [1, 8], [8, 1, 1], [1], [1]]


def test_plans_other_pairs_holding_a_rare_word_of_the_batch():
    s = Showings(SOURCES, TARGETS, min_count=2, max_count=3)
    assert "unicycle" not in s.holders and "dog" not in s.holders
    assert set(s.holders) >= {"beach", "kite"}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        batch = [0, 4, 3]
        plan = s.plan(batch, count=8, rng=rng)
        shown = [j for _, j in plan]
        assert shown and not set(shown) & set(batch)
        assert len(shown) == len(set(shown)) <= 2  # two batch sentences have a rare word
        for pos, j in plan:  # each shares a rare word with the sentence it is shown for
            assert set(s.rare_words[j]) & set(s.rare_words[batch[pos]])
        assert (1, 5) in plan  # the only other pair holding "kite"
    assert s.plan([0, 4], count=1, rng=np.random.default_rng(0)).__len__() == 1
    assert s.plan([3], count=8, rng=np.random.default_rng(0)) == []  # nothing rare
    assert s.plan([4, 5], count=8, rng=np.random.default_rng(0)) == []  # only each other


def test_plans_are_reproducible_and_bad_bounds_refused():
    s = Showings(SOURCES, TARGETS, min_count=2, max_count=3)
    a = s.plan(range(8), 4, np.random.default_rng(3))
    assert a == s.plan(range(8), 4, np.random.default_rng(3))
    with pytest.raises(ConfigError):
        Showings(SOURCES, TARGETS, min_count=1)
    with pytest.raises(ConfigError):
        Showings(SOURCES, TARGETS, min_count=5, max_count=3)
    with pytest.raises(ConfigError):
        Showings(SOURCES, TARGETS[:3])
    assert words("Ein Mädchen, 3 Äpfel!") == ["ein", "mädchen", "äpfel"]


def test_blind_positions_are_the_rare_target_tokens_the_shown_pair_holds():
    s = Showings(SOURCES, TARGETS, min_count=2, max_count=3, blind_max_count=3)
    assert s.blindable == {9, 8, 2}  # 1 is in every target
    batch = [0, 4, 3]
    mask = s.blind(batch, [(0, 1), (1, 5)], (3, 4))
    assert mask.tolist() == [[False, True, True, False],   # 9 and 2 are in pair 1's target
                             [False, True, False, False],  # 8 is in pair 5's
                             [False, False, False, False]]  # nothing shown for it
    assert not Showings(SOURCES, TARGETS, 2, 3, blind_max_count=0).blind(
        batch, [(0, 1)], (3, 4)).any()
