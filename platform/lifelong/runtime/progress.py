"""The progress bar of a training loop, in the unit of the bound that ends it: elapsed / budget
in minutes when the run has a time budget (its step bound is then only a ceiling, e.g.
100,000, and a bar of steps would show an ETA of days), steps otherwise."""

from __future__ import annotations

import sys

from tqdm import tqdm

TIME_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} min "
               "[{elapsed}<{remaining}{postfix}]")


class TrainingProgress:
    """A tqdm bar of steps, or of minutes when ``max_minutes`` is set.

    Args:
        steps: The step bound.
        max_minutes: The time budget (None: the run is bounded by steps only).
        step: The step the run starts at (a resumed run's).
        elapsed_s: Training time already spent (a resumed run's).
        desc: The bar's label.
        disable: No bar at all (another rank, or ``--no-progress``).
        mininterval: Seconds between redraws (default: 0.1 on a terminal, 30 into a log).
        file: Where the bar is drawn (default stderr).
    """

    def __init__(self, steps: int, max_minutes: float | None = None, step: int = 0,
                 elapsed_s: float = 0.0, desc: str = "train", disable: bool = False,
                 mininterval: float | None = None, file=None):
        if mininterval is None:
            mininterval = 0.1 if sys.stderr.isatty() else 30.0
        self.timed = max_minutes is not None
        self.step = step
        if self.timed:
            self.bar = tqdm(total=float(max_minutes), initial=min(elapsed_s / 60, max_minutes),
                            desc=desc, bar_format=TIME_FORMAT, disable=disable,
                            mininterval=mininterval, file=file)
        else:
            self.bar = tqdm(total=steps, initial=step, desc=desc, unit="step",
                            disable=disable, mininterval=mininterval, file=file)

    def update(self, step: int, elapsed_s: float, **postfix) -> None:
        """After a step: the run is at ``step`` after ``elapsed_s`` seconds of training;
        ``postfix`` (e.g. loss) is shown beside the bar (with the step, on a bar of time)."""
        self.step = step
        if self.timed:
            self.bar.update(min(elapsed_s / 60, self.bar.total) - self.bar.n)
            postfix = {"step": step, **postfix}
        else:
            self.bar.update(step - self.bar.n)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def write(self, text: str) -> None:
        """A line above the bar."""
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
