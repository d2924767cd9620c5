"""``lifelong stream produce``: writes an Omniglot stream of new classes into numbered segments,
for demos and tests.

Classes are the evaluation characters (never trained on) x4 rotations. Their frequencies are
long-tailed, p(class of rank r) proportional to 1 / r**zipf_exponent over a random ranking, so
rare classes are rare. A class's first 20 appearances use its 20 real drawings in a random
order; later ones are new drawings made by small random distortions of a real one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from lifelong.config import check_int
from lifelong.errors import ConfigError
from lifelong.streaming.segments import list_segments, write_segment
from lifelong.data.augment import distort, rotated_classes


@dataclass(frozen=True)
class ProduceSettings:
    """What ``lifelong stream produce`` writes.

    Attributes:
        examples: Examples to write in all.
        rows_per_segment: Examples per segment.
        rate: Examples per second at most (0: as fast as possible).
        zipf_exponent: Skew of the class frequencies (0: uniform).
        distortion: Strength of the distortions of drawings past a class's 20 real ones.
        source_id: Written into every row.
        seed: Seeds the stream (equal seeds give equal streams).
    """

    examples: int = 10_000
    rows_per_segment: int = 256
    rate: float = 0.0
    zipf_exponent: float = 1.0
    distortion: float = 1.0
    source_id: str = "omniglot-producer"
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("examples", self.examples)
        check_int("rows_per_segment", self.rows_per_segment)
        check_int("seed", self.seed, minimum=0)
        if not self.rate >= 0 or not self.zipf_exponent >= 0:
            raise ConfigError("rate and zipf_exponent must be >= 0")
        if not 0 <= self.distortion <= 3:
            raise ConfigError("distortion must lie in [0, 3]")


class OmniglotStream:
    """An endless long-tailed stream of (image [28, 28] uint8, class) from class-major images.

    Args:
        images: [C, n, H, W] uint8; rotated here into 4C classes.
        settings: Frequencies, distortion, seed.
    """

    def __init__(self, images: np.ndarray, settings: ProduceSettings):
        self.images = rotated_classes(images)
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)
        num_classes, self.per_class = self.images.shape[:2]
        self.ranking = self.rng.permutation(num_classes)  # ranking[r]: class of rank r
        weights = 1.0 / np.arange(1, num_classes + 1) ** settings.zipf_exponent
        self.probabilities = weights / weights.sum()
        self.seen = np.zeros(num_classes, np.int64)
        self.order = np.argsort(self.rng.random((num_classes, self.per_class)), axis=1)
        self.generator = torch.Generator().manual_seed(settings.seed + 1)

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``count`` examples: (images [count, H, W] uint8, labels [count] int64)."""
        labels = self.ranking[self.rng.choice(len(self.ranking), size=count,
                                              p=self.probabilities)]
        images = np.empty((count, *self.images.shape[2:]), np.uint8)
        new_drawing = np.zeros(count, bool)
        for i, c in enumerate(labels):
            k = self.seen[c]
            self.seen[c] += 1
            if k < self.per_class:
                images[i] = self.images[c, self.order[c, k]]
            else:
                images[i] = self.images[c, self.rng.integers(self.per_class)]
                new_drawing[i] = True
        if new_drawing.any() and self.settings.distortion > 0:
            x = torch.from_numpy(images[new_drawing]).unsqueeze(1).float().div_(255)
            x = distort(x, self.settings.distortion, self.generator)
            images[new_drawing] = x.squeeze(1).mul_(255).round_().clamp_(0, 255).byte().numpy()
        return images, labels.astype(np.int64)


def produce(location: str, images: np.ndarray, settings: ProduceSettings,
            progress: bool = True) -> Iterator[str]:
    """Writes ``settings.examples`` examples as segments numbered after the last one present.

    Yields:
        The path of each segment written.
    """
    from tqdm import tqdm

    existing = list_segments(location)
    number = existing[-1][0] + 1 if existing else 0
    stream = OmniglotStream(images, settings)
    start, written = time.perf_counter(), 0
    with tqdm(total=settings.examples, desc="produce", unit="ex", disable=not progress) as bar:
        while written < settings.examples:
            count = min(settings.rows_per_segment, settings.examples - written)
            x, y = stream.take(count)
            if settings.rate:  # hold the rate: wait until these rows are due
                time.sleep(max(0.0, (written + count) / settings.rate
                               - (time.perf_counter() - start)))
            yield write_segment(location, number, x, y, settings.source_id,
                                f"uint8[{x.shape[1]},{x.shape[2]}]")
            number += 1
            written += count
            bar.update(count)
