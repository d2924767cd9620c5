"""N-way episodes for one-shot learning, sampled as in the reference code of Kaiser et al. 2017.

An episode picks `way` distinct classes and, for each, `presentations` distinct images (drawers).
It shows every class once in a random order, then every class again in a fresh random order, and
so on (the reference code shuffles, then stably sorts by presentation index). So at step t every
class has been shown t // way times: the "k-shot" accuracy is the accuracy at steps with shot k.

A batch holds B episodes side by side, step-major ([L, B]) because the model runs them through
time against a memory. Episode b labels its classes b*way .. b*way + way - 1, so the B episodes
can share one memory without their labels colliding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lifelong.config import check_int
from lifelong.errors import ConfigError, DataError


@dataclass(frozen=True, eq=False)
class EpisodeIndices:
    """Where the images of a batch of episodes come from (numpy, before gathering pixels).

    Attributes:
        classes: [L, B] int64 class index into the sampler's images.
        drawers: [L, B] int64 image index within that class.
        y: [L, B] int64 episode label, in [b*way, (b+1)*way) for episode b.
        shot: [L, B] int64 times this label was shown earlier in its episode (0: first sight).
    """

    classes: np.ndarray
    drawers: np.ndarray
    y: np.ndarray
    shot: np.ndarray


@dataclass(frozen=True, eq=False)
class Episode:
    """A batch of B episodes of length L = way * presentations.

    Attributes:
        x: [L, B, 1, H, W] float32 in [0, 1], ink high.
        y: [L, B] int64 labels, in [b*way, (b+1)*way) for episode b.
        shot: [L, B] int64 times this label was shown earlier in its episode (0: first sight).
        classes: [L, B] int64 class index into the sampler's images (the label of a memory
            shared across episodes and steps, as in life-long training).
    """

    x: torch.Tensor
    y: torch.Tensor
    shot: torch.Tensor
    classes: torch.Tensor | None = None


class EpisodeSampler:
    """Samples batches of N-way episodes from a class-major image array.

    Args:
        images: [C, n, H, W] uint8, C classes of n images each (e.g. `OmniglotSplit.images`);
            kept by reference, not copied.
        way: Classes per episode (N).
        presentations: Times each class is shown per episode; each time with another image.
        seed: Seed of the sampler's numpy Generator; equal seeds give equal episode streams.

    Raises:
        DataError: `images` is not a uint8 array [C, n, H, W].
        ConfigError: way, presentations or seed are not positive ints (seed: non-negative), way
            exceeds C, or presentations exceeds n.
    """

    def __init__(self, images: np.ndarray, way: int, presentations: int, seed: int) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"images must be a uint8 numpy array [C, n, H, W], got "
                            f"{type(images).__name__} {getattr(images, 'dtype', None)} "
                            f"{getattr(images, 'shape', None)}")
        check_int("way", way)
        check_int("presentations", presentations)
        check_int("seed", seed, minimum=0)
        num_classes, per_class = images.shape[:2]
        if way > num_classes:
            raise ConfigError(f"way={way} exceeds the {num_classes} classes available")
        if presentations > per_class:
            raise ConfigError(f"presentations={presentations} exceeds the {per_class} images "
                              f"per class (images are drawn without replacement)")
        self.images = images
        self.way = way
        self.presentations = presentations
        self._rng = np.random.default_rng(seed)

    @property
    def episode_length(self) -> int:
        """L = way * presentations."""
        return self.way * self.presentations

    def sample_indices(self, batch_size: int) -> EpisodeIndices:
        """Draws a batch of episodes as indices (see `EpisodeIndices`); advances the generator."""
        check_int("batch_size", batch_size)
        num_classes, per_class = self.images.shape[:2]
        way, presentations, rng = self.way, self.presentations, self._rng
        # Argsort of uniform noise = a random permutation per row; its first k entries are k
        # distinct draws without replacement, vectorised over the batch.
        classes = rng.random((batch_size, num_classes)).argsort(axis=1)[:, :way]  # [B, way]
        drawers = rng.random((batch_size, way, per_class)).argsort(axis=2)[..., :presentations]
        # order[b, p]: the labels shown in round p of episode b, a fresh permutation per round.
        order = rng.random((batch_size, presentations, way)).argsort(axis=2)  # [B, P, way]

        rounds = np.broadcast_to(np.arange(presentations)[None, :, None], order.shape)
        episodes = np.arange(batch_size)[:, None, None]
        step_classes = classes[episodes, order]  # [B, P, way]
        step_drawers = drawers[episodes, order, rounds]  # [B, P, way]
        step_y = order + episodes * way
        length = way * presentations

        def step_major(a: np.ndarray) -> np.ndarray:  # [B, P, way] -> [L, B]
            return np.ascontiguousarray(a.reshape(batch_size, length).T, dtype=np.int64)

        return EpisodeIndices(classes=step_major(step_classes), drawers=step_major(step_drawers),
                              y=step_major(step_y), shot=step_major(rounds))

    def sample(self, batch_size: int) -> Episode:
        """Draws a batch of `batch_size` episodes (see `Episode`); advances the generator."""
        idx = self.sample_indices(batch_size)
        pixels = self.images[idx.classes, idx.drawers]  # [L, B, H, W] uint8, a fresh copy
        x = torch.from_numpy(pixels).unsqueeze(2).to(torch.float32).div_(255.0)
        return Episode(x=x, y=torch.from_numpy(idx.y), shot=torch.from_numpy(idx.shot),
                       classes=torch.from_numpy(idx.classes))
