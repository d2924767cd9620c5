"""Life-long Omniglot: does a memory that is never reset still recall a class seen once, D
examples later?

The stream is made of evaluation characters (never trained on), each rotated by 0, 90, 180 and
270 degrees to give 4 x 659 classes, as the background split is for training. Its classes fall
in two disjoint sets:

- probe classes, in groups of ``way``: the group's classes are shown once each (one drawing),
  then, exactly D examples after its own showing, each class is asked again with another drawing;
- filler classes: every other position of the stream is a filler example, a drawing of a random
  filler class under a small random distortion (rotation, scale, shift), so the fillers keep
  bringing new examples instead of repeating 32 thousand drawings.

Every example is a query with its label and an update, as in a prequential stream: predict, then
write. So the memory is filled by whatever it got wrong (inserts into its oldest slots) and keeps
refreshing what it got right; a probe survives D examples only if the memory is large enough to
hold every insert made meanwhile.

Each ask is scored twice:

- ``acc`` (N-way, comparable to the episodic N-way 1-shot figure): the answer is the value of the
  most similar slot among the slots holding one of the group's ``way`` classes, as if the memory
  held only the episode; a group whose slots were all overwritten scores 0.
- ``open_acc`` (open set): the value of the nearest slot in the whole memory.

Every ask starts a new update batch, so the D examples before it have all been written when it
is asked: the delay is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lifelong.config import check_int
from lifelong.data.augment import distort, rotated_classes
from lifelong.errors import ConfigError
from lifelong.experiments.omniglot.evaluate import ci95
from lifelong.memory import Memory, MemoryConfig

SHOW, ASK, FILLER = 0, 1, 2


@dataclass(frozen=True)
class RetentionSettings:
    """The retention evaluation.

    Attributes:
        enabled: Run it (a training job runs it after training only when True).
        delays: D values: examples between a probe's showing and its ask.
        memory_sizes: Slot counts of the memories evaluated (one fresh memory per size, each fed
            the same stream).
        way: Classes per probe group (the N of the N-way score).
        groups: Probe groups per delay (groups * way asks per delay).
        show_span: Positions over which the probe groups' showings are spread.
        batch_size: Most examples per memory update (an ask always starts a new batch).
        distortion: Strength of the filler distortions (1.0: up to 10 degrees, 10% scale,
            2 pixels shift; 0: plain drawings).
        seed: Seeds the stream (equal seeds give equal streams).
        episodic_episodes: N-way episodes (memory cleared per episode) of the reference figure.
        within_points: Tolerance, in accuracy points below the reference, for the smallest
            memory that still recalls at the longest delay.
    """

    enabled: bool = True
    delays: tuple[int, ...] = (10, 100, 1000, 10000, 100000)
    memory_sizes: tuple[int, ...] = (8192, 65536, 1048576)
    way: int = 5
    groups: int = 40
    show_span: int = 20000
    batch_size: int = 256
    distortion: float = 1.0
    seed: int = 0
    episodic_episodes: int = 1000
    within_points: float = 5.0

    def __post_init__(self) -> None:
        for name in ("delays", "memory_sizes"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                 for v in values):
                raise ConfigError(f"retention.{name} must be ints >= 1, got {values!r}")
        for name in ("way", "groups", "show_span", "batch_size", "episodic_episodes"):
            check_int(name, getattr(self, name))
        check_int("seed", self.seed, minimum=0)
        if self.way < 2:
            raise ConfigError("must be >= 2", key="way")
        if not 0 <= self.distortion <= 3:
            raise ConfigError(f"must lie in [0, 3], got {self.distortion}", key="distortion")
        if not self.within_points > 0:
            raise ConfigError(f"must be > 0, got {self.within_points}", key="within_points")


@dataclass(frozen=True, eq=False)
class Stream:
    """A retention stream of T examples.

    Attributes:
        classes: [T] class index into the rotated evaluation classes.
        drawers: [T] drawing index within the class.
        kind: [T] SHOW, ASK or FILLER.
        delay: [T] the probe's D (asks and shows), 0 for fillers.
        group: [T] probe group id (asks and shows), -1 for fillers.
        group_classes: [G, way] the classes of each probe group.
        seed: Seeds the filler distortions.
    """

    classes: np.ndarray
    drawers: np.ndarray
    kind: np.ndarray
    delay: np.ndarray
    group: np.ndarray
    group_classes: np.ndarray
    seed: int

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class RetentionResult:
    """Per memory size and delay: the asks' N-way and open-set correctness, and the inserts."""

    settings: RetentionSettings
    correct: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    open_correct: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    inserts_between: dict[tuple[int, int], float] = field(default_factory=dict)
    stream_length: int = 0

    def acc(self, slots: int, delay: int) -> float:
        return float(self.correct[slots, delay].mean())

    def ci95(self, slots: int, delay: int) -> float:
        return ci95(self.correct[slots, delay])

    def open_acc(self, slots: int, delay: int) -> float:
        return float(self.open_correct[slots, delay].mean())


def build_stream(num_classes: int, per_class: int, s: RetentionSettings) -> Stream:
    """Lays out probe showings, asks at exactly D examples later, and fillers everywhere else."""
    rng = np.random.default_rng(s.seed)
    num_groups = s.groups * len(s.delays)
    probes = num_groups * s.way
    if probes + s.way > num_classes:
        raise ConfigError(f"{num_groups} probe groups of {s.way} need more than the "
                          f"{num_classes} classes available: lower retention.groups")
    if per_class < 2:
        raise ConfigError("retention needs at least two drawings per class")
    order = rng.permutation(num_classes)
    group_classes = order[:probes].reshape(num_groups, s.way)
    fillers = order[probes:]
    length = s.show_span + max(s.delays) + 2 * s.way + 1
    kind = np.full(length, FILLER, np.int64)
    classes = fillers[rng.integers(len(fillers), size=length)]
    drawers = rng.integers(per_class, size=length)
    delay = np.zeros(length, np.int64)
    group = np.full(length, -1, np.int64)
    taken = np.zeros(length, bool)
    for g in rng.permutation(num_groups):
        d = s.delays[g % len(s.delays)]
        for _ in range(1000):  # a random free place for the showings and the asks
            start = int(rng.integers(s.show_span))
            shows = start + np.arange(s.way)
            asks = shows + d + 1
            if not taken[shows].any() and not taken[asks].any():
                break
        else:
            raise ConfigError("cannot place the probe groups: raise retention.show_span")
        pair = rng.permuted(np.tile(np.arange(per_class), (s.way, 1)), axis=1)[:, :2]
        for pos, k, drawer in ((shows, SHOW, pair[:, 0]), (asks, ASK, pair[:, 1])):
            taken[pos] = True
            kind[pos], classes[pos], drawers[pos] = k, group_classes[g], drawer
            delay[pos], group[pos] = d, g
    return Stream(classes=classes, drawers=drawers, kind=kind, delay=delay, group=group,
                  group_classes=group_classes, seed=s.seed)


@torch.no_grad()
def embed_stream(encoder: nn.Module, images: np.ndarray, stream: Stream, strength: float,
                 chunk: int = 2048, progress: bool = True) -> torch.Tensor:
    """Encodes every example of the stream (fillers distorted): [T, key_dim] float32."""
    was_training = encoder.training
    encoder.eval()
    gen = torch.Generator().manual_seed(stream.seed + 1)
    out = []
    try:
        for i in tqdm(range(0, len(stream), chunk), desc="encode stream", unit="chunk",
                      disable=not progress, leave=False):
            sl = slice(i, i + chunk)
            x = torch.from_numpy(images[stream.classes[sl], stream.drawers[sl]]).unsqueeze(1)
            x = x.to(torch.float32).div_(255.0)
            filler = torch.from_numpy(stream.kind[sl] == FILLER)
            if filler.any():
                x[filler] = distort(x[filler], strength, gen)
            out.append(encoder(x))
    finally:
        encoder.train(was_training)
    return torch.cat(out)


def _batches(kind: np.ndarray, batch_size: int) -> list[tuple[int, int]]:
    """Cuts [0, T) into batches of at most batch_size; every ask starts a new batch."""
    cuts, start = [], 0
    for pos in np.flatnonzero(kind == ASK).tolist() + [len(kind)]:
        while pos - start > batch_size:
            cuts.append((start, start + batch_size))
            start += batch_size
        if pos > start:
            cuts.append((start, pos))
        start = pos
    return cuts


def _restricted_answer(memory: Memory, q: torch.Tensor, candidates: np.ndarray) -> int:
    """The value of the slot most similar to q [d] among slots holding a candidate class."""
    values = memory.values
    mask = torch.isin(values, torch.from_numpy(candidates))
    slots = torch.nonzero(mask).squeeze(1)
    if len(slots) == 0:
        return -1
    sims = memory.keys[slots] @ F.normalize(q, dim=0)
    return int(values[slots[int(sims.argmax())]])


@torch.no_grad()
def run_stream(memory: Memory, emb: torch.Tensor, stream: Stream, batch_size: int,
               desc: str = "stream", progress: bool = True) -> dict[str, np.ndarray]:
    """Feeds the stream to the memory (query with label, then update), batch by batch.

    Returns:
        ``correct`` [T] N-way answer right (asks only, else False), ``open_correct`` [T] nearest
        slot's value right, ``inserted`` [T] the example went into a new slot.
    """
    labels = torch.from_numpy(stream.classes)
    length = len(stream)
    correct, open_correct = np.zeros(length, bool), np.zeros(length, bool)
    inserted = np.zeros(length, bool)
    cuts = _batches(stream.kind, batch_size)
    with tqdm(total=length, desc=desc, unit="ex", disable=not progress, leave=False) as bar:
        for start, end in cuts:
            if stream.kind[start] == ASK:  # the N-way answer, before the ask's own write
                group = stream.group_classes[stream.group[start]]
                correct[start] = _restricted_answer(memory, emb[start], group) == \
                    stream.classes[start]
            out = memory.query(emb[start:end], labels[start:end])
            right = out.correct.numpy()
            open_correct[start:end] = right
            inserted[start:end] = ~right  # a wrong nearest neighbour inserts (docs/design.md §1.5)
            bar.update(end - start)
    return {"correct": correct, "open_correct": open_correct, "inserted": inserted}


def evaluate_retention(encoder: nn.Module, images: np.ndarray, settings: RetentionSettings,
                       memory: MemoryConfig = MemoryConfig(), rotate: bool = True,
                       progress: bool = True) -> RetentionResult:
    """Runs the retention stream against a fresh memory of every size in settings.

    Args:
        encoder: [n, 1, H, W] -> [n, key_dim].
        images: [C, n, H, W] uint8 evaluation characters.
        rotate: Make 4C classes of them by rotation (False: the C classes as they are).
        settings: Delays, memory sizes, probe groups.
        memory: The memory's hyper-parameters (choose_k, alpha, age_noise).

    Returns:
        Per (memory size, delay): the asks' correctness and the inserts made in between.
    """
    classes = rotated_classes(images) if rotate else images
    stream = build_stream(classes.shape[0], classes.shape[1], settings)
    emb = embed_stream(encoder, classes, stream, settings.distortion, progress=progress)
    result = RetentionResult(settings=settings, stream_length=len(stream))
    asks = np.flatnonzero(stream.kind == ASK)
    for slots in settings.memory_sizes:
        mem = memory.build(key_dim=emb.shape[1], num_slots=slots, num_values=classes.shape[0],
                           seed=settings.seed)
        out = run_stream(mem, emb, stream, settings.batch_size, desc=f"{slots} slots",
                         progress=progress)
        cumulative = np.concatenate([[0], np.cumsum(out["inserted"])])
        for d in settings.delays:
            at = asks[stream.delay[asks] == d]
            result.correct[slots, d] = out["correct"][at]
            result.open_correct[slots, d] = out["open_correct"][at]
            # inserts strictly between each probe's showing (at - d - 1) and its ask (at)
            result.inserts_between[slots, d] = float(np.median(cumulative[at] -
                                                               cumulative[at - d]))
        del mem
    return result
