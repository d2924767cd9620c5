"""The within-alphabet 20-way 1-shot evaluation (issue 18, item 3): episodes stay inside one
alphabet, the question is another drawing than the shot, and the score is the memory's 1-NN
answer (checked against a brute-force reference on the same draws)."""

import numpy as np
import pytest
import torch

from lifelong.errors import ConfigError, DataError
from lifelong.experiments.omniglot.within_alphabet import (alphabet_classes,
                                                           evaluate_within_alphabet)


def split(alphabets=(("Alpha", 25), ("Beta", 21), ("Gamma", 8)), per_class=20, seed=0,
          noise=0.2):
    """Classes with a random pattern each, every drawing with its own grey-level noise (no
    two similarities tie)."""
    rng = np.random.default_rng(seed)
    names = tuple(f"{a}/character{c:02d}" for a, n in alphabets for c in range(1, n + 1))
    patterns = rng.random((len(names), 1, 28, 28)) < 0.2
    pixels = (1 - noise) * patterns + noise * rng.random((len(names), per_class, 28, 28))
    return (pixels * 255).astype(np.uint8), names


class Flatten(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1) - 0.5


def test_episodes_stay_in_alphabets_with_enough_characters():
    images, names = split()
    groups = alphabet_classes(names, 20)
    assert sorted(groups) == ["Alpha", "Beta"]  # Gamma has 8 characters
    assert all(names[i].startswith(a + "/") for a, ix in groups.items() for i in ix)
    result = evaluate_within_alphabet(Flatten(), images, names, way=20, episodes=30,
                                      progress=False)
    assert set(result.alphabets) == {"Alpha", "Beta"} and result.episodes == 30
    assert result.mean() > 0.95  # class patterns far apart: the nearest shot is the class's
    assert set(result.by_alphabet()) == {"Alpha", "Beta"}


def test_the_question_is_another_drawing_than_the_shot():
    """Pure noise, no class pattern: only the very same drawing would be recognised."""
    rng = np.random.default_rng(3)
    images = ((rng.random((40, 20, 28, 28)) < 0.5) * 255).astype(np.uint8)
    names = tuple(f"Alpha/character{c:02d}" for c in range(40))
    result = evaluate_within_alphabet(Flatten(), images, names, way=20, episodes=40,
                                      progress=False)
    assert result.mean() < 0.2  # chance is 0.05; the same drawing twice would give 1.0


def test_the_score_is_the_nearest_shot_of_each_question():
    images, names = split(noise=0.85, seed=5)  # noisy enough to make mistakes
    result = evaluate_within_alphabet(Flatten(), images, names, way=20, episodes=25, seed=7,
                                      progress=False)
    # The same draws, by brute force: cosine 1-NN over the 20 shots.
    groups = alphabet_classes(names, 20)
    order = list(groups)
    rng = np.random.default_rng(7)
    expected = []
    for _ in range(25):
        alphabet = order[rng.integers(len(order))]
        classes = rng.choice(groups[alphabet], size=20, replace=False)
        drawers = np.stack([rng.choice(20, size=2, replace=False) for _ in range(20)])
        x = torch.from_numpy(images[classes[:, None], drawers].astype(np.float32) / 255)
        emb = torch.nn.functional.normalize(x.flatten(2) - 0.5, dim=2)  # [20, 2, D]
        nearest = (emb[:, 1] @ emb[:, 0].T).argmax(dim=1)
        expected.append(float((nearest == torch.arange(20)).float().mean()))
    np.testing.assert_allclose(result.per_episode, expected)
    assert 0.2 < result.mean() < 0.98  # neither trivial nor hopeless
    assert "20-way within alphabet" in result.table()


def test_bad_settings_and_data_get_typed_errors():
    images, names = split()
    with pytest.raises(ConfigError):
        evaluate_within_alphabet(Flatten(), images, names, way=1, progress=False)
    with pytest.raises(DataError, match="no alphabet has 30 characters"):
        evaluate_within_alphabet(Flatten(), images, names, way=30, progress=False)
    with pytest.raises(DataError, match="n >= 2"):
        evaluate_within_alphabet(Flatten(), images[:, :1], names, way=20, progress=False)
