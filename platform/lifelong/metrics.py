"""Every metric name the platform exports, in one place, and the timer that keeps the Ray
gauges among them exported (``GaugeTimer``).

MLflow metrics use dotted names: ``<phase>.<name>`` for scalars and
``<phase>.<way>way.<shot>shot.<stat>`` for one-shot accuracies, where phase is ``train``,
``val`` (held-out background classes, during training) or ``eval`` (the evaluation characters),
and stat is ``acc`` (mean accuracy in [0, 1]) or ``ci95`` (half-width of its 95% interval).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

# Phases (prefixes).
TRAIN = "train"
VAL = "val"
EVAL = "eval"

# Scalars logged by step during training.
TRAIN_LOSS = "train.loss"
TRAIN_IMAGES_PER_S = "train.images_per_s"
TRAIN_LR = "train.lr"
TRAIN_GRAD_NORM = "train.grad_norm"
TRAIN_ELAPSED_S = "train.elapsed_s"
# Logged once at the end of training.
TRAIN_STEPS = "train.steps"
TRAIN_WALL_S = "train.wall_s"
# Logged when a Ray Train worker group resumed from a checkpoint (value: the step).
TRAIN_RESUMED_AT = "train.resumed_at_step"
# The translator's training (by step): per-token NLL and memory loss, epoch, throughput.
TRAIN_NLL = "train.nll"
TRAIN_MEMORY_LOSS = "train.memory_loss"
TRAIN_EPOCH = "train.epoch"
TRAIN_SENTENCES_PER_S = "train.sentences_per_s"

# The translator's evaluation: BLEU (sacrebleu) on the test split and the time it took.
EVAL_BLEU = "eval.bleu"
EVAL_TRANSLATE_S = "eval.translate_s"
BLEU_SIGNATURE = "bleu_signature.txt"
RARE_WORDS_JSON = "rare_words.json"
TRANSLATOR_ARTIFACT_DIR = "translator"  # the logged model's name
RARE_WORDS_TABLE = "rare_words_table.json"  # an MLflow table, one row per rare-word bound


def rare_word_metric(max_train_count: int, stat: str) -> str:
    """One-shot rare words seen at most ``max_train_count`` times in training, e.g.
    ``"rare.5.hit_with"`` (stat: hit_without, hit_with, bleu_without, bleu_with, words)."""
    return f"rare.{max_train_count}.{stat}"


def translations_artifact(split: str) -> str:
    """The artifact holding a split's translations, one per line."""
    return f"translations_{split}.de"


def bleu_metric(split: str) -> str:
    """BLEU on one test set when several are evaluated (``split: all``), e.g.
    ``"eval.bleu.test_2017_mscoco"``; a single split logs ``EVAL_BLEU``."""
    return f"{EVAL_BLEU}.{split}"


# Statistics of a one-shot accuracy cell.
ACC = "acc"
CI95 = "ci95"

# The k of the k-shot cells logged as metrics (eval.<N>way.<k>shot.acc / .ci95); every cell
# goes to the table artifact ACCURACY_TABLE_JSON.
HEADLINE_SHOTS = (1, 5)

# Artifacts.
ACCURACY_TABLE_JSON = "accuracy_table.json"  # an MLflow table: way, shot, acc, ci95, episodes
ACCURACY_TABLE_MD = "accuracy_table.md"
# The within-alphabet 20-way 1-shot evaluation: its accuracy and interval as metrics, its
# per-alphabet accuracies as a table (alphabet, acc, episodes).
WITHIN_ALPHABET = "eval.within_alphabet"  # eval.within_alphabet.<N>way.1shot.acc / .ci95
WITHIN_ALPHABET_TABLE_JSON = "within_alphabet_table.json"
ENCODER_ARTIFACT_DIR = "encoder"  # the logged model's name (runs:/<run id>/encoder)
CONFIG_ARTIFACT = "config.yaml"

# Run tags: the named memory a run used and its snapshot generations (one per shard).
MEMORY_TAG = "lifelong.memory"
MEMORY_GENERATION_TAG = "lifelong.memory.snapshot_generation"
MODEL_URI_TAG = "lifelong.model_uri"  # the model the run was given (path or MLflow URI)


# Life-long retention (experiments/omniglot/retention.py): retention.<slots>slots.<D>delay.<stat>, stat acc
# (N-way), ci95, open_acc (nearest slot of the whole memory), inserts (median between showing and
# ask); plus the smallest memory within the tolerance of the episodic figure.
OPEN_ACC = "open_acc"
INSERTS = "inserts"
RETENTION_SLOTS_NEEDED = "retention.slots_needed"
# Phase of the retention job's own episodic reference (kept apart from ``eval.*``, which a
# training job's evaluation logs into the same run): retention.episodic.<N>way.1shot.acc.
RETENTION_EPISODIC = "retention.episodic"
RETENTION_PLOT = "retention.png"
RETENTION_TABLE_MD = "retention_table.md"
RETENTION_TABLE_JSON = "retention.json"


def retention_metric(slots: int, delay: int, stat: str = ACC) -> str:
    """e.g. ``"retention.65536slots.10000delay.acc"``."""
    return f"retention.{slots}slots.{delay}delay.{stat}"


def shot_metric(phase: str, way: int | None, shot: int, stat: str = ACC) -> str:
    """The name of a k-shot accuracy metric.

    Args:
        phase: ``TRAIN``, ``VAL`` or ``EVAL``.
        way: Classes per episode (N), or None where it does not apply (training, where the
            episodes of a batch share one memory).
        shot: Earlier presentations of the class (1-shot: the second presentation).
        stat: ``ACC`` or ``CI95``.

    Returns:
        e.g. ``"eval.5way.1shot.acc"`` or ``"train.1shot.acc"``.
    """
    way_part = f"{way}way." if way is not None else ""
    return f"{phase}.{way_part}{shot}shot.{stat}"


# Ray metrics of the memory shards (ray.util.metrics; tags: memory, shard). Ray exports them to
# Prometheus with the prefix "ray_"; dashboards/lifelong-memory.json queries exactly these.
MEMORY_TAG_KEYS = ("memory", "shard")
MEMORY_QUERY_LATENCY_S = "lifelong_memory_query_latency_s"  # histogram, one search on a shard
MEMORY_QUERY_LATENCY_BOUNDARIES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2,
                                   0.5, 1.0, 2.0]
MEMORY_QUERIES = "lifelong_memory_queries"        # counter, queries answered
MEMORY_INSERTS = "lifelong_memory_inserts"        # counter, keys inserted into oldest slots
MEMORY_REFRESHES = "lifelong_memory_refreshes"    # counter, keys refreshed by a correct lookup
MEMORY_OCCUPANCY = "lifelong_memory_occupancy"    # gauge, filled slots
MEMORY_OLDEST_AGE = "lifelong_memory_oldest_age"  # gauge, age of the oldest filled slot
MEMORY_SNAPSHOT_FAILURES = "lifelong_memory_snapshot_failures"  # gauge, failed since start
MEMORY_TORN_FRAMES = "lifelong_memory_torn_frames"  # gauge, torn log frames dropped at start


def prometheus_name(name: str, kind: str) -> str:
    """The series Ray exports for a metric: prefix ``ray_``; counters end in ``_total``,
    histograms are queried through ``_bucket``."""
    suffix = {"counter": "_total", "histogram": "_bucket", "gauge": ""}[kind]
    return f"ray_{name}{suffix}"


# Streaming (streaming/): MLflow metrics by step = examples applied so far.
STREAM_EXAMPLES = "stream.examples"
STREAM_PREQUENTIAL_ACC = "stream.prequential.acc"  # over every example so far
STREAM_RARE_ACC = "stream.rare.acc"                # classes seen at most once before
STREAM_EXAMPLES_PER_S = "stream.examples_per_s"    # this process, over the last interval
STREAM_LAG_S = "stream.lag_s"                      # now - event time of the last row applied
STREAM_LAG_SEGMENTS = "stream.lag_segments"        # segments present beyond the one read
STREAM_QUARANTINED = "stream.quarantined"          # segments set aside (wholly or in part)
STREAM_DROPPED_ROWS = "stream.dropped_rows"        # bad rows left out of readable segments
STREAM_LATE_SEGMENTS = "stream.late_segments"      # appeared below the read offset, not read
STREAM_KSHOT_PLOT = "stream_kshot.png"


def stream_window_metric(window: int) -> str:
    """Prequential accuracy over the last ``window`` examples: ``stream.prequential.acc_1000``."""
    return f"stream.prequential.acc_{window}"


def stream_shot_metric(shot: int, interval: bool = False) -> str:
    """Accuracy on a class's (shot+1)-th appearance, over the whole stream
    (``stream.1shot.acc``) or over the last logging interval (``stream.1shot.interval_acc``)."""
    return f"stream.{shot}shot.{'interval_acc' if interval else 'acc'}"


# Ray metrics of a stream job (tags: stream, memory); gauges, so a restarted job sets them to
# its committed counts instead of counting twice. dashboards/lifelong-stream.json uses them.
STREAM_TAG_KEYS = ("stream", "memory")
STREAM_RAY_EXAMPLES = "lifelong_stream_examples"                # gauge, examples applied
STREAM_RAY_PREQUENTIAL_ACC = "lifelong_stream_prequential_acc"  # gauge, tag window
STREAM_RAY_SHOT_ACC = "lifelong_stream_shot_acc"                # gauge, tag shot (interval)
STREAM_RAY_EXAMPLES_PER_S = "lifelong_stream_examples_per_s"    # gauge
STREAM_RAY_LAG_S = "lifelong_stream_lag_s"                      # gauge
STREAM_RAY_LAG_SEGMENTS = "lifelong_stream_lag_segments"        # gauge
STREAM_RAY_QUARANTINED = "lifelong_stream_quarantined"          # gauge


# Ray metrics of the online service (service/, ``lifelong serve``; tags: service, route and
# for requests the HTTP status code). dashboards/lifelong-serve.json queries exactly these.
SERVE_TAG_KEYS = ("service", "route")
SERVE_REQUESTS = "lifelong_serve_requests"            # counter, HTTP requests answered, tag code
SERVE_LATENCY_S = "lifelong_serve_latency_s"          # histogram, seconds per request
SERVE_LATENCY_BOUNDARIES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                            5.0, 10.0]
SERVE_BATCH_REQUESTS = "lifelong_serve_batch_requests"  # histogram, requests per Serve batch
SERVE_BATCH_EXAMPLES = "lifelong_serve_batch_examples"  # histogram, examples per Serve batch
SERVE_BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
SERVE_LEARN_WRITES = "lifelong_serve_learn_writes"    # counter, examples written by /learn
SERVE_LEARN_REPLAYS = "lifelong_serve_learn_replays"  # counter, /learn answered from the record
SERVE_HEARTBEAT = "lifelong_serve_replica_up"         # gauge, 1 per live replica (tag replica)

# Ray drops a gauge series that is not set again within twice its export interval, so the
# processes that own gauges (shard actors, stream jobs) set them on a timer, traffic or not.
GAUGE_INTERVAL_S = 5.0


class GaugeTimer:
    """Calls ``set_gauges`` every ``interval_s`` seconds in a daemon thread, from ``start``
    until ``close``; an exception is logged (debug) and never ends the thread or its owner.

    Args:
        set_gauges: Sets the owner's gauges (from another thread: it must only read state).
        interval_s: Seconds between calls.
        name: The thread's name.
    """

    def __init__(self, set_gauges: Callable[[], None], interval_s: float = GAUGE_INTERVAL_S,
                 name: str = "gauges"):
        self.set_gauges, self.interval_s, self.name = set_gauges, interval_s, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "GaugeTimer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name=self.name)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stops the thread (the series then expire in Ray)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.set_gauges()
            except Exception:  # noqa: BLE001 - a gauge must never take its owner down
                logging.getLogger(__name__).debug("%s not set", self.name, exc_info=True)
