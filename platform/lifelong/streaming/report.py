"""What a stream job shows: MLflow metrics by step (examples applied), Ray gauges for Grafana,
and the plot of the k-shot curves over time."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from lifelong import metrics
from lifelong.streaming.stats import StreamStats



def stream_metrics(stats: StreamStats, windows: Sequence[int], shots: Sequence[int],
                   live: dict[str, float]) -> dict[str, float]:
    """The MLflow metrics of one log point (NaN-valued ones left out).

    Args:
        stats: counts at the log point (its last interval just closed).
        windows: sliding-window sizes of the prequential accuracy.
        shots: k of the k-shot accuracies to log.
        live: figures of this process (throughput, lag), by metric name.
    """
    out = {metrics.STREAM_EXAMPLES: stats.examples,
           metrics.STREAM_PREQUENTIAL_ACC: stats.accuracy(),
           metrics.STREAM_RARE_ACC: stats.rare_accuracy(),
           metrics.STREAM_QUARANTINED: stats.quarantined,
           metrics.STREAM_DROPPED_ROWS: stats.dropped_rows,
           metrics.STREAM_LATE_SEGMENTS: stats.late_segments}
    for w in windows:
        out[metrics.stream_window_metric(w)] = stats.window_accuracy(w)
    last_total = stats.history_total[-1] if len(stats.history_total) else None
    last_hits = stats.history_correct[-1] if len(stats.history_total) else None
    for k in shots:
        out[metrics.stream_shot_metric(k)] = stats.shot_accuracy(k)
        if last_total is not None and last_total[k]:
            out[metrics.stream_shot_metric(k, interval=True)] = last_hits[k] / last_total[k]
    out.update(live)
    return {k: float(v) for k, v in out.items() if not math.isnan(float(v))}


class StreamGauges:
    """The stream job's Ray metrics (gauges tagged with the stream and memory names).

    ``update`` sets them at each log point; between log points a ``metrics.GaugeTimer`` sets
    the last values again every ``interval_s`` (``start``/``close``), so a job that has caught
    up and waits for data keeps its series.
    """

    def __init__(self, stream: str, memory: str, windows: Sequence[int], shots: Sequence[int],
                 interval_s: float = metrics.GAUGE_INTERVAL_S):
        from ray.util import metrics as ray_metrics

        self._last: dict[tuple, tuple] = {}  # (gauge id, tags) -> (gauge, value, tags)
        self._lock = threading.Lock()
        self._timer = metrics.GaugeTimer(self._again, interval_s, name="stream-gauges")

        keys = metrics.STREAM_TAG_KEYS
        gauge = lambda name, text, extra=(): ray_metrics.Gauge(  # noqa: E731
            name, text, tag_keys=keys + tuple(extra))
        self.windows, self.shots = list(windows), list(shots)
        self.examples = gauge(metrics.STREAM_RAY_EXAMPLES, "examples applied")
        self.acc = gauge(metrics.STREAM_RAY_PREQUENTIAL_ACC, "prequential accuracy",
                         ("window",))
        self.shot_acc = gauge(metrics.STREAM_RAY_SHOT_ACC,
                              "accuracy on a class's (k+1)-th appearance", ("shot",))
        self.rate = gauge(metrics.STREAM_RAY_EXAMPLES_PER_S, "examples per second")
        self.lag_s = gauge(metrics.STREAM_RAY_LAG_S, "seconds behind the newest event")
        self.lag_segments = gauge(metrics.STREAM_RAY_LAG_SEGMENTS, "segments not yet read")
        self.quarantined = gauge(metrics.STREAM_RAY_QUARANTINED, "segments set aside")
        for g in (self.examples, self.acc, self.shot_acc, self.rate, self.lag_s,
                  self.lag_segments, self.quarantined):
            g.set_default_tags({"stream": stream, "memory": memory})

    def update(self, values: dict[str, float]) -> None:
        """Sets the gauges from one log point's MLflow metrics (``stream_metrics``)."""
        pairs = [(self.examples, metrics.STREAM_EXAMPLES, {}),
                 (self.acc, metrics.STREAM_PREQUENTIAL_ACC, {"window": "all"}),
                 (self.rate, metrics.STREAM_EXAMPLES_PER_S, {}),
                 (self.lag_s, metrics.STREAM_LAG_S, {}),
                 (self.lag_segments, metrics.STREAM_LAG_SEGMENTS, {}),
                 (self.quarantined, metrics.STREAM_QUARANTINED, {})]
        pairs += [(self.acc, metrics.stream_window_metric(w), {"window": str(w)})
                  for w in self.windows]
        pairs += [(self.shot_acc, metrics.stream_shot_metric(k, interval=True),
                   {"shot": str(k)}) for k in self.shots]
        with self._lock:
            for gauge, name, tags in pairs:
                if name in values:
                    gauge.set(values[name], tags=tags)
                    self._last[(id(gauge), tuple(sorted(tags.items())))] = \
                        (gauge, values[name], tags)

    def _again(self) -> None:
        with self._lock:
            for gauge, value, tags in self._last.values():
                gauge.set(value, tags=tags)

    def start(self) -> "StreamGauges":
        """Starts setting the last values again every ``interval_s``."""
        self._timer.start()
        return self

    def close(self) -> None:
        """Stops that (the series then expire in Ray as the job ends)."""
        self._timer.close()


def plot_kshot(stats: StreamStats, shots: Sequence[int], path: Path,
               title: str = "", points: int = 25) -> Path:
    """k-shot accuracy against examples streamed, one line per k, from the logged intervals
    (grouped into at most ``points`` bins so that rarely seen shots still have counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    n = len(stats.history_examples)
    if n:
        edges = np.unique(np.linspace(0, n, min(points, n) + 1).astype(int))
        ends = stats.history_examples[edges[1:] - 1]
        total = np.add.reduceat(stats.history_total, edges[:-1], axis=0)
        hits = np.add.reduceat(stats.history_correct, edges[:-1], axis=0)
        for k in shots:
            with np.errstate(invalid="ignore", divide="ignore"):
                acc = np.where(total[:, k] > 0, 100 * hits[:, k] / total[:, k], np.nan)
            ax.plot(ends, acc, marker=".", label=f"{k}-shot ({k + 1}. appearance)")
        with np.errstate(invalid="ignore", divide="ignore"):
            overall = 100 * hits.sum(1) / total.sum(1)
        ax.plot(ends, overall, color="black", linestyle="--", label="all examples")
    ax.set_xlabel("examples streamed")
    ax.set_ylabel("prequential accuracy in the interval (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title or "k-shot accuracy over time (predicted before written)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
