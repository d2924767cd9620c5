"""Prequential statistics of a stream: every example is predicted before it is learnt, and scored.

Counted exactly once per example (the stream job commits them with its read offset):

- prequential accuracy, over all examples and over sliding windows of the last W examples;
- k-shot accuracy: accuracy on a class's (k+1)-th appearance in the stream (k = 0: a class never
  seen before, which only another writer of the same memory can have taught it);
- rare-class accuracy: on classes seen at most once before (k <= 1);
- per logging interval, the same k-shot counts, kept as a history for the k-shot curves over
  time (merged pairwise when it grows past ``max_history`` points, so it stays bounded on an
  endless stream; counts merge exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RARE_MAX_SHOT = 1  # "rare": seen at most once before


@dataclass
class StreamStats:
    """Counts of one stream job (numpy arrays, so they persist in the commit record).

    Attributes:
        seen: [V] int64, appearances of each class so far.
        shot_total, shot_correct: [K + 2] int64, examples and correct predictions at their
            class's k-th earlier appearance, k = 0..K; the last entry counts k > K.
        ring: [W] bool, correctness of the last W examples (W the largest window), circular.
        interval_total, interval_correct: [K + 2] the same as shot_* since the last log point.
        history_examples: [P] examples at the end of each logged interval;
        history_total, history_correct: [P, K + 2] that interval's k-shot counts.
        examples, correct: totals; quarantined: segments set aside (wholly or some of their
            rows); dropped_rows: bad rows left out of readable segments; last_quarantined:
            the number of the last segment set aside (-1: none); late_segments: segments that
            appeared below the read offset (never read; reported).
    """

    seen: np.ndarray
    shot_total: np.ndarray
    shot_correct: np.ndarray
    ring: np.ndarray
    interval_total: np.ndarray
    interval_correct: np.ndarray
    history_examples: np.ndarray
    history_total: np.ndarray
    history_correct: np.ndarray
    examples: int = 0
    correct: int = 0
    quarantined: int = 0
    dropped_rows: int = 0
    last_quarantined: int = -1
    late_segments: int = 0

    @classmethod
    def empty(cls, num_values: int, max_shot: int = 10, window: int = 10_000) -> "StreamStats":
        shots = max_shot + 2
        zeros = lambda: np.zeros(shots, np.int64)  # noqa: E731
        return cls(seen=np.zeros(num_values, np.int64), shot_total=zeros(),
                   shot_correct=zeros(), ring=np.zeros(window, bool), interval_total=zeros(),
                   interval_correct=zeros(), history_examples=np.zeros(0, np.int64),
                   history_total=np.zeros((0, shots), np.int64),
                   history_correct=np.zeros((0, shots), np.int64))

    @property
    def max_shot(self) -> int:
        return len(self.shot_total) - 2

    def copy(self) -> "StreamStats":
        return StreamStats(**{k: (v.copy() if isinstance(v, np.ndarray) else v)
                              for k, v in self.__dict__.items()})

    # -------------------------------------------------------------------------------- update
    def record(self, labels: np.ndarray, correct: np.ndarray) -> None:
        """Scores one prequential batch: labels [B] int64 (in stream order), correct [B] bool.

        A class appearing twice in one batch counts its first appearance in the batch as
        k-shot and the second as (k+1)-shot, as in stream order (both were predicted before
        the batch was written, so the second cannot profit from the first)."""
        labels = np.asarray(labels, np.int64)
        correct = np.asarray(correct, bool)
        prior = self.seen[labels].copy()
        for i in range(1, len(labels)):  # repeats within the batch, in order
            prior[i] += int(np.count_nonzero(labels[:i] == labels[i]))
        np.add.at(self.seen, labels, 1)
        shot = np.minimum(prior, self.max_shot + 1)
        for total, hits in ((self.shot_total, self.shot_correct),
                            (self.interval_total, self.interval_correct)):
            np.add.at(total, shot, 1)
            np.add.at(hits, shot, correct.astype(np.int64))
        w = len(self.ring)
        positions = (self.examples + np.arange(len(labels))) % w
        self.ring[positions] = correct
        self.examples += len(labels)
        self.correct += int(correct.sum())

    def close_interval(self, max_history: int = 1000) -> None:
        """Ends a logging interval: its k-shot counts join the history."""
        self.history_examples = np.append(self.history_examples, self.examples)
        self.history_total = np.vstack([self.history_total, self.interval_total])
        self.history_correct = np.vstack([self.history_correct, self.interval_correct])
        self.interval_total[:] = 0
        self.interval_correct[:] = 0
        if len(self.history_examples) > max_history:  # merge neighbours: half the points
            even = len(self.history_examples) // 2 * 2
            self.history_examples = np.concatenate([self.history_examples[1:even:2],
                                                    self.history_examples[even:]])
            for name in ("history_total", "history_correct"):
                h = getattr(self, name)
                merged = h[:even].reshape(-1, 2, h.shape[1]).sum(axis=1)
                setattr(self, name, np.vstack([merged, h[even:]]))

    # ------------------------------------------------------------------------------- figures
    def accuracy(self) -> float:
        """Prequential accuracy over every example so far (nan before the first)."""
        return self.correct / self.examples if self.examples else float("nan")

    def window_accuracy(self, window: int) -> float:
        """Accuracy over the last ``window`` examples (fewer at the start)."""
        if window > len(self.ring):
            raise ValueError(f"window {window} exceeds the kept {len(self.ring)} examples")
        n = min(window, self.examples)
        if n == 0:
            return float("nan")
        idx = (self.examples - 1 - np.arange(n)) % len(self.ring)
        return float(self.ring[idx].mean())

    def shot_accuracy(self, shot: int, interval: bool = False) -> float:
        """Accuracy at the (shot+1)-th appearance, overall or in the current interval."""
        total, hits = ((self.interval_total, self.interval_correct) if interval
                       else (self.shot_total, self.shot_correct))
        return hits[shot] / total[shot] if total[shot] else float("nan")

    def rare_accuracy(self) -> float:
        """Accuracy on classes seen at most once before."""
        total = self.shot_total[: RARE_MAX_SHOT + 1].sum()
        return self.shot_correct[: RARE_MAX_SHOT + 1].sum() / total if total else float("nan")

    # ---------------------------------------------------------------------------- persistence
    def to_arrays(self, prefix: str = "stats.") -> dict[str, np.ndarray]:
        return {prefix + k: np.asarray(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "stats.") -> "StreamStats":
        kwargs = {}
        for name, spec in cls.__dataclass_fields__.items():
            if prefix + name not in arrays and name == "late_segments":
                kwargs[name] = spec.default  # a record written before the count existed
                continue
            value = arrays[prefix + name]
            kwargs[name] = int(value) if value.ndim == 0 else value
        return cls(**kwargs)
