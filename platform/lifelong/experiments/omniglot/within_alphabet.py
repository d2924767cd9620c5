"""The within-alphabet one-shot evaluation (Lake et al. 2015's harder protocol).

Each episode draws one evaluation alphabet with at least N characters, N of its characters
(labels 0 .. N-1 in a random order) and two different drawers of each: one drawing is the shot,
written into a cleared memory with its label, the other the question, answered from the memory
without updating it. The episode's score is the fraction of its N questions answered right; the
mean over episodes comes with the same 95% interval as the standard table (``evaluate.ci95``).
All N classes share one alphabet, so they look alike far more than N characters drawn from all
alphabets do.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lifelong.errors import ConfigError, DataError
from lifelong.experiments.omniglot.evaluate import ci95
from lifelong.memory import MemoryConfig
from lifelong.runtime.threads import torch_threads

PROTOCOL = "within-alphabet"


@dataclass(frozen=True)
class WithinAlphabetAccuracy:
    """Per-episode accuracies of the within-alphabet N-way 1-shot evaluation.

    Attributes:
        way: Classes per episode (N).
        per_episode: [episodes] float64, the fraction of the N questions answered right.
        alphabets: [episodes] the alphabet of each episode.
    """

    way: int
    per_episode: np.ndarray = field(repr=False)
    alphabets: tuple[str, ...] = field(repr=False)

    @property
    def episodes(self) -> int:
        return len(self.per_episode)

    def mean(self) -> float:
        return float(self.per_episode.mean())

    def ci95(self) -> float:
        return ci95(self.per_episode)

    def by_alphabet(self) -> dict[str, float]:
        """Mean accuracy per alphabet (over its episodes)."""
        scores: dict[str, list[float]] = defaultdict(list)
        for name, score in zip(self.alphabets, self.per_episode):
            scores[name].append(float(score))
        return {name: float(np.mean(v)) for name, v in sorted(scores.items())}

    def table(self) -> str:
        """One markdown row beside the standard table's."""
        return ("| | 1-shot | episodes |\n| --- | --- | --- |\n"
                f"| {self.way}-way within alphabet | {100 * self.mean():.2f} ± "
                f"{100 * self.ci95():.2f} | {self.episodes} |")


def alphabet_classes(class_names: tuple[str, ...], way: int) -> dict[str, np.ndarray]:
    """The class indices of each alphabet with at least ``way`` characters.

    Args:
        class_names: "Alphabet/character.." per class (``OmniglotSplit.class_names``).

    Raises:
        DataError: no alphabet has ``way`` characters.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(class_names):
        groups[name.split("/", 1)[0]].append(i)
    eligible = {a: np.asarray(ix) for a, ix in sorted(groups.items()) if len(ix) >= way}
    if not eligible:
        raise DataError(f"no alphabet has {way} characters (largest: "
                        f"{max((len(v) for v in groups.values()), default=0)})")
    return eligible


@torch.no_grad()
def evaluate_within_alphabet(encoder: nn.Module, images: np.ndarray,
                             class_names: tuple[str, ...], *, way: int = 20,
                             episodes: int = 400, seed: int = 1,
                             memory: MemoryConfig = MemoryConfig(),
                             progress: bool = True) -> WithinAlphabetAccuracy:
    """Runs ``episodes`` within-alphabet N-way 1-shot episodes, each against a cleared memory.

    Args:
        encoder: Maps [n, 1, H, W] images to [n, key_dim] embeddings (run in eval mode; its
            mode is restored afterwards).
        images: [C, n, H, W] uint8 class-major images (the evaluation split), n >= 2.
        class_names: [C] "Alphabet/character.." names, in the order of ``images``.
        way: N, classes per episode (Lake et al.: 20).
        episodes: Number of episodes (alphabets drawn uniformly among those with N classes).
        seed: Seed of the episode draws (equal seeds give equal episodes).
        memory: The memory's settings (N slots, N values: nothing is evicted).
        progress: Show a progress bar.

    Raises:
        ConfigError: way < 2 or episodes < 1.
        DataError: fewer than 2 drawings per class, or no alphabet with N characters.
    """
    if way < 2 or episodes < 1:
        raise ConfigError(f"within-alphabet evaluation needs way >= 2 and episodes >= 1, got "
                          f"way={way}, episodes={episodes}")
    if images.ndim != 4 or images.shape[1] < 2 or len(class_names) != images.shape[0]:
        raise DataError(f"images must be [C, n >= 2, H, W] with C class names, got "
                        f"{images.shape} and {len(class_names)} names")
    groups = alphabet_classes(class_names, way)
    names = list(groups)
    rng = np.random.default_rng(seed)
    was_training = encoder.training
    encoder.eval()
    mem = None  # built once the key size is known
    scores, drawn = np.zeros(episodes), []
    labels = torch.arange(way)
    try:
        for e in tqdm(range(episodes), desc=f"{way}-way {PROTOCOL}", unit="ep",
                      disable=not progress, leave=False):
            alphabet = names[rng.integers(len(names))]
            classes = rng.choice(groups[alphabet], size=way, replace=False)
            drawers = np.stack([rng.choice(images.shape[1], size=2, replace=False)
                                for _ in range(way)])  # [N, 2]: shot, question
            x = images[classes[:, None], drawers]  # [N, 2, H, W]
            x = torch.from_numpy(x.reshape(2 * way, 1, *x.shape[2:]).astype(np.float32) / 255)
            emb = encoder(x).reshape(way, 2, -1)
            if mem is None:
                mem = memory.build(key_dim=emb.shape[2], num_slots=way, num_values=way,
                                   seed=seed)
            mem.clear()
            with torch_threads(1):
                mem.query(emb[:, 0], labels)  # the shots, written with their labels
                answer = mem.query(emb[:, 1]).values  # the questions, nothing written
            scores[e] = float((answer == labels).float().mean())
            drawn.append(alphabet)
    finally:
        encoder.train(was_training)
    return WithinAlphabetAccuracy(way=way, per_episode=scores, alphabets=tuple(drawn))
