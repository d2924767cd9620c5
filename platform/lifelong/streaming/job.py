"""The stream job: reads segments in order, predicts each micro-batch with the memory before it
writes it (prequential), and commits its offset with each batch, exactly once.

One step, for a micro-batch of B rows of the current segment::

    keys = encoder(payloads)                              # the whole segment, once
    out, batch = memory.predict_and_plan(keys[rows], labels[rows])   # read-only
    record = (offset after the batch, batch.seq, batch's writes, counts incl. the batch)
    store.save(record)                                    # durable before anything is sent
    memory.apply_update(batch, wait=False)                # sent with the next batch's search

The batch travels with the next micro-batch's search (one round trip per micro-batch, see
``ShardedMemory.query``), which the shards answer only after applying it (writer, seq) once;
so when record t+1 is saved, batch t is acknowledged, and the record always holds the one
batch that may not be. It is flushed before any other record is saved, when the reader finds
nothing new, and when the job stops. A restart loads the record and sends its writes again
before reading on (see ``commit.py``). Back-pressure: a batch is planned only after the shards
acknowledged the one before, and the reader (``reader.py``) prepares at most one segment ahead,
so a slow memory slows reading instead of filling a buffer.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from lifelong import metrics
from lifelong.errors import ConfigError, CorruptSegmentError
from lifelong.streaming.commit import CommitRecord, CommitStore
from lifelong.streaming.config import StreamSettings
from lifelong.streaming.report import stream_metrics
from lifelong.streaming.reader import SegmentReader
from lifelong.streaming.segments import Segment, quarantine
from lifelong.streaming.stats import StreamStats

log = logging.getLogger(__name__)


@dataclass
class StreamResult:
    """How a run of the job went (this process only, apart from ``stats``)."""

    stats: StreamStats
    examples: int        # applied by this process
    wall_s: float        # from the first batch to the last
    resumed_at: int      # examples already applied when this process started
    quarantined: list[tuple[int, str]]

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.wall_s if self.wall_s > 0 else float("nan")


class StreamRunner:
    """Feeds one stream into one memory.

    Args:
        settings: the ``stream`` section.
        memory: a ``ShardedMemory`` whose writer id is this job's (``stream:<name>``).
        store: the job's commit record.
        make_encoder: payload format -> encoder (payloads -> keys [R, key_dim]).
        quarantine_location: where bad segments are copied.
        log_point: called with (stats, MLflow metrics) at every log point; ``plot`` with the
            stats every ``plot_every`` examples and at the end (both optional).
        run_id: the MLflow run recorded in a new commit record.
        progress: a tqdm bar of examples.
    """

    def __init__(self, settings: StreamSettings, memory, store: CommitStore,
                 make_encoder: Callable[[str], Callable], quarantine_location: str,
                 log_point: Callable[[StreamStats, dict], None] | None = None,
                 plot: Callable[[StreamStats], None] | None = None,
                 run_id: str | None = None, progress: bool = False):
        self.s = settings
        self.memory = memory
        self.store = store
        self.make_encoder = make_encoder
        self.quarantine_location = quarantine_location
        self.log_point, self.plot = log_point, plot
        self.progress = progress
        self.reader: SegmentReader | None = None
        self.stopping = False
        self.record = self._load(run_id)

    # ------------------------------------------------------------------------------ restart
    def _load(self, run_id: str | None) -> CommitRecord:
        record = self.store.load()
        spec = self.memory.spec
        if record is None:
            record = CommitRecord(writer=self.memory.writer, seq=0, segment=0, row=0,
                                  stats=StreamStats.empty(spec.num_values, self.s.max_shot,
                                                          max(self.s.windows)),
                                  run_id=run_id, meta={"memory": spec.name,
                                                       "source": self.s.source})
            self.store.save(record)
            return record
        if record.writer != self.memory.writer or record.meta.get("memory") != spec.name:
            raise ConfigError(f"the commit record at {self.store.path} belongs to writer "
                              f"{record.writer} of memory {record.meta.get('memory')!r}, not "
                              f"{self.memory.writer} of {spec.name!r}")
        if len(record.stats.seen) != spec.num_values or \
                len(record.stats.shot_total) != self.s.max_shot + 2 or \
                len(record.stats.ring) != max(self.s.windows):
            raise ConfigError("stream.max_shot, stream.windows or memory.num_values differ "
                              f"from the run recorded at {self.store.path}")
        return record

    def _redo(self) -> None:
        """Repeats the recorded last action (its effect may or may not have happened)."""
        r = self.record
        self.memory.seq = r.seq
        if r.batch is not None:
            self.memory.apply_update(r.batch)  # shards that applied it answer from memory
        if r.quarantine is not None:
            self._copy_to_quarantine(*r.quarantine)

    # --------------------------------------------------------------------------------- run
    def run(self) -> StreamResult:
        """Runs until max_examples, the idle timeout, or SIGTERM/SIGINT (after the batch in
        flight)."""
        from tqdm import tqdm

        self._redo()
        start_examples = self.record.stats.examples
        self.quarantined: list[tuple[int, str]] = []
        # This process's timing: first and last batch, and the start of the log interval.
        self._first_batch_at = self._last_batch_at = None
        self._interval = (time.perf_counter(), start_examples)
        self._last_event_us: int | None = None
        idle_since = time.monotonic()
        old_handlers = self._trap_signals()
        self.reader = SegmentReader(self.s.source, self.record.segment, self._payload_format(),
                                    self._check_labels, self.make_encoder, self.s.poll_s)
        if start_examples and self.log_point is not None:
            self.log_point(self.record.stats, self._metrics())  # the point a crash may have lost
        bar = tqdm(desc=f"stream {self.s.name}", unit="ex", initial=start_examples,
                   total=self.s.max_examples, disable=not self.progress)
        try:
            while not self.stopping and not self._done():
                item = self.reader.next(timeout=self.s.poll_s)
                if item is None:  # idle once the reader found nothing new for long enough
                    self.memory.flush()  # the last batch, acknowledged while waiting
                    if self.s.idle_timeout_s is not None and self.reader.caught_up and \
                            time.monotonic() - idle_since >= self.s.idle_timeout_s:
                        break
                    continue
                idle_since = time.monotonic()
                if item.late:
                    self._late(item.number)
                    continue
                if item.number != self.record.segment:  # numbers may skip: the offset follows
                    self.record.segment, self.record.row = item.number, 0
                if isinstance(item.error, CorruptSegmentError):
                    self._quarantine(item.number, str(item.error))
                elif item.error is not None:
                    raise item.error
                else:
                    dropped = item.segment.dropped
                    if dropped and item.number > self.record.stats.last_quarantined:
                        self._quarantine(item.number, _rows_reason(dropped, item.segment),
                                         dropped)
                    self._feed(item.segment, item.keys, bar)
            self.memory.flush()
        finally:
            self.reader.close()
            bar.close()
            self._restore_signals(old_handlers)
        if self.plot is not None:
            self.plot(self.record.stats)
        wall = (self._last_batch_at - self._first_batch_at
                if self._first_batch_at is not None else 0.0)
        return StreamResult(stats=self.record.stats,
                            examples=self.record.stats.examples - start_examples, wall_s=wall,
                            resumed_at=start_examples, quarantined=self.quarantined)

    def _done(self) -> bool:
        m = self.s.max_examples
        return m is not None and self.record.stats.examples >= m

    def _payload_format(self) -> str | None:
        return self.s.payload_format or self.record.meta.get("payload_format")

    def _check_labels(self, segment: Segment) -> dict[int, str]:
        """Rows whose label lies outside the memory's [0, num_values)."""
        v = self.memory.spec.num_values
        bad = np.flatnonzero((segment.labels < 0) | (segment.labels >= v))
        return {int(i): f"label {segment.labels[i]} outside [0, {v})" for i in bad}

    # ---------------------------------------------------------------------------- quarantine
    def _quarantine(self, number: int, reason: str, rows: dict[int, str] | None = None) -> None:
        """Sets segment ``number`` aside: wholly (the offset moves past it), or, with ``rows``,
        only those rows (the offset stays; its good rows are fed next)."""
        r = self.record
        stats = r.stats.copy()
        stats.quarantined += 1
        stats.last_quarantined = number
        stats.dropped_rows += len(rows or {})
        whole = rows is None
        self._commit(CommitRecord(writer=r.writer, seq=r.seq,
                                  segment=number + 1 if whole else r.segment,
                                  row=0 if whole else r.row, stats=stats,
                                  quarantine=(number, reason, rows or {}), run_id=r.run_id,
                                  meta=r.meta))
        self._copy_to_quarantine(number, reason, rows or {})
        self.quarantined.append((number, reason))
        log.warning("quarantined segment %d: %s", number, reason)
        print(f"quarantined segment {number}: {reason}", flush=True)

    def _late(self, number: int) -> None:
        """Counts (and commits) segment ``number``, which appeared below the read offset after
        the job had read past its number; it is not read (the stream is read in order)."""
        r = self.record
        stats = r.stats.copy()
        stats.late_segments += 1
        self._commit(CommitRecord(writer=r.writer, seq=r.seq, segment=r.segment, row=r.row,
                                  stats=stats, run_id=r.run_id, meta=r.meta))
        log.warning("late segment %d: it appeared below the read offset (segment %d) and is "
                    "not read", number, r.segment)
        print(f"late segment {number}: appeared below the read offset {r.segment}, not read",
              flush=True)

    def _copy_to_quarantine(self, number: int, reason: str, rows: dict[int, str]) -> None:
        quarantine(self.s.source, number, reason, self.quarantine_location, rows)

    # ---------------------------------------------------------------------------------- feed
    def _feed(self, segment: Segment, keys: torch.Tensor, bar) -> None:
        """Prequential micro-batches over the segment (keys [R, key_dim]) from the record's
        row on."""
        r = self.record
        r.meta.setdefault("payload_format", segment.payload_format)
        if keys.shape[1] != self.memory.spec.key_dim:
            raise ConfigError(f"the encoder gives keys of size {keys.shape[1]}, the memory "
                              f"{self.memory.spec.name!r} holds {self.memory.spec.key_dim}")
        labels = torch.from_numpy(np.array(segment.labels, dtype=np.int64))  # writable copy
        row = r.row
        while row < len(segment) and not self.stopping and not self._done():
            end = min(row + self.s.batch_size, len(segment))
            if self.s.max_examples is not None:
                end = min(end, row + self.s.max_examples - self.record.stats.examples)
            self._step(segment, keys[row:end], labels[row:end], end)
            bar.update(end - row)
            row = end

    def _step(self, segment: Segment, keys: torch.Tensor, labels: torch.Tensor,
              end: int) -> None:
        r = self.record
        if self._first_batch_at is None:
            self._first_batch_at = time.perf_counter()
        out, batch = self.memory.predict_and_plan(keys, labels)
        stats = r.stats.copy()
        stats.record(labels.numpy(), out.correct.numpy())
        log_due = stats.examples // self.s.log_every > r.stats.examples // self.s.log_every
        if log_due:
            stats.close_interval()
        done = end >= len(segment)
        self._commit(CommitRecord(writer=r.writer, seq=batch.seq,
                                  segment=segment.number + 1 if done else segment.number,
                                  row=0 if done else end, stats=stats, batch=batch,
                                  run_id=r.run_id, meta=r.meta))
        self.memory.apply_update(batch, wait=False)  # with the next batch's search
        now = time.perf_counter()
        self._last_batch_at = now
        self._last_event_us = int(segment.event_times[end - 1])
        if log_due and self.log_point is not None:
            self.log_point(stats, self._metrics())
        plot_due = stats.examples // self.s.plot_every > \
            (stats.examples - len(labels)) // self.s.plot_every
        if plot_due and self.plot is not None:
            self.plot(stats)

    def _commit(self, record: CommitRecord) -> None:
        self.memory.flush()  # the record replaces the one holding the pending batch
        self.store.save(record)
        self.record = record

    def _metrics(self) -> dict[str, float]:
        """This log point's metrics, with the live throughput and lag."""
        now = time.perf_counter()
        since, examples_then = self._interval
        stats = self.record.stats
        live = {metrics.STREAM_LAG_SEGMENTS: max(0, self.reader.newest - self.record.segment + 1)}
        if stats.examples > examples_then and now > since:
            live[metrics.STREAM_EXAMPLES_PER_S] = (stats.examples - examples_then) / (now - since)
        if self._last_event_us is not None:
            live[metrics.STREAM_LAG_S] = max(0.0, time.time() - self._last_event_us / 1e6)
        self._interval = (now, stats.examples)
        return stream_metrics(stats, self.s.windows, self.s.shots, live)

    # ------------------------------------------------------------------------------- signals
    def _trap_signals(self):
        def stop(signum, frame):
            self.stopping = True

        try:
            return {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread: no handlers
            return {}

    @staticmethod
    def _restore_signals(handlers) -> None:
        for s, h in handlers.items():
            signal.signal(s, h)


def _rows_reason(dropped: dict[int, str], segment: Segment, listed: int = 3) -> str:
    """e.g. "2 of 9 rows set aside (row 3: payload holds NaN or Inf; row 5: ...)"."""
    first = "; ".join(f"row {r}: {why}" for r, why in list(dropped.items())[:listed])
    more = ", ..." if len(dropped) > listed else ""
    return (f"{len(dropped)} of {len(dropped) + len(segment)} rows set aside "
            f"({first}{more})")
