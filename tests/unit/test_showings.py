"""Show-then-ask training picks, for a batch, *other* pairs sharing a word rare in training."""

import numpy as np
import pytest

from lifelong.errors import ConfigError
from lifelong.training.showings import Showings, words

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


def test_plans_other_pairs_holding_a_rare_word_of_the_batch():
    s = Showings(SOURCES, min_count=2, max_count=3)
    assert "unicycle" not in s.holders and "dog" not in s.holders
    assert set(s.holders) >= {"beach", "kite"}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        batch = [0, 4, 3]
        shown = s.plan(batch, count=8, rng=rng)
        assert shown and not set(shown) & set(batch)
        assert len(shown) == len(set(shown)) <= 2  # two batch sentences have a rare word
        for j in shown:  # each shares a rare word with a sentence of the batch
            assert any(set(s.rare_words[j]) & set(s.rare_words[i]) for i in batch)
        assert 5 in shown  # the only other pair holding "kite"
    assert s.plan([0, 4], count=1, rng=np.random.default_rng(0)).__len__() == 1
    assert s.plan([3], count=8, rng=np.random.default_rng(0)) == []  # nothing rare
    assert s.plan([4, 5], count=8, rng=np.random.default_rng(0)) == []  # only each other


def test_plans_are_reproducible_and_bad_bounds_refused():
    s = Showings(SOURCES, min_count=2, max_count=3)
    a = s.plan(range(8), 4, np.random.default_rng(3))
    assert a == s.plan(range(8), 4, np.random.default_rng(3))
    with pytest.raises(ConfigError):
        Showings(SOURCES, min_count=1)
    with pytest.raises(ConfigError):
        Showings(SOURCES, min_count=5, max_count=3)
    assert words("Ein Mädchen, 3 Äpfel!") == ["ein", "mädchen", "äpfel"]
