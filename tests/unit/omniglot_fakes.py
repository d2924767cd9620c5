"""Small synthetic Omniglot-like splits for fast tests of training and evaluation."""

from __future__ import annotations

import numpy as np

from lifelong.data import OmniglotSplit


def fake_split(num_characters: int = 10, rotations: int = 4, per_class: int = 20,
               seed: int = 0) -> OmniglotSplit:
    """Classes of 28x28 uint8 images: a random class pattern, each image with its own noise.

    Returns:
        A background-like split with class names "Alpha/characterNN/rotDDD", images
        [num_characters * rotations, per_class, 28, 28] uint8.
    """
    rng = np.random.default_rng(seed)
    classes = num_characters * rotations
    patterns = rng.random((classes, 1, 28, 28)) < 0.2
    flips = rng.random((classes, per_class, 28, 28)) < 0.05
    images = ((patterns ^ flips) * 255).astype(np.uint8)
    names = tuple(f"Alpha/character{c:02d}/rot{90 * r:03d}" if rotations > 1
                  else f"Alpha/character{c:02d}"
                  for c in range(num_characters) for r in range(rotations))
    return OmniglotSplit(images=images, class_names=names,
                         split="background" if rotations > 1 else "evaluation")
