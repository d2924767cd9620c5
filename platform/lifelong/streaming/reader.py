"""Reads, checks and encodes a stream's segments in order, one segment ahead of the job, in a
background thread: the encoder works while the job waits for the memory, and a slow memory
stops the reader after one segment (the queue is bounded), so nothing piles up."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from lifelong.errors import CorruptSegmentError
from lifelong.streaming.segments import Segment, list_segments, read_segment


@dataclass
class ReadItem:
    """One segment in number order: decoded and encoded, or the error reading it raised.

    Attributes:
        number: The segment's number.
        segment: Its rows (None on error).
        keys: [R, key_dim] its payloads encoded (None on error).
        error: CorruptSegmentError (to quarantine) or any other exception (to re-raise).
        late: The segment appeared below the read offset, in a gap the reader had skipped
            (it is reported, not read: the stream is read in number order).
    """

    number: int
    segment: Segment | None = None
    keys: torch.Tensor | None = None
    error: BaseException | None = None
    late: bool = False


class SegmentReader:
    """Segments ``start``, ``start + 1``, ... (gaps skipped) of ``source``, prepared ahead.

    Args:
        source: The segment folder or URI.
        start: The first segment number to read.
        payload_format: The format every segment must have (None: the first good segment's).
        check: The rows of a segment the job cannot use (e.g. labels out of range), as
            {row: reason}; they are dropped like the rows the file itself holds badly.
        make_encoder: payload format -> encoder (payloads -> keys), called once.
        poll_s: Seconds between listings while no new segment is there.
        ahead: Prepared segments held at most (the reader blocks when that many wait).
    """

    def __init__(self, source: str, start: int, payload_format: str | None,
                 check: Callable[[Segment], dict[int, str]], make_encoder: Callable[[str], Callable],
                 poll_s: float = 1.0, ahead: int = 1):
        self.source, self.next_number = source, start
        self.payload_format = payload_format
        self.check, self.make_encoder = check, make_encoder
        self.poll_s = poll_s
        self.encoder = None
        self.newest = start - 1  # the highest segment number listed so far
        self.caught_up = False  # the last listing found nothing new
        # Numbers this reader skipped (absent when it read past them), as [lo, hi] ranges: a
        # segment that appears in one later is late.
        self.gaps: list[list[int]] = []
        self.queue: queue.Queue[ReadItem] = queue.Queue(maxsize=ahead)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="segment-reader", daemon=True)
        self.thread.start()

    def next(self, timeout: float) -> ReadItem | None:
        """The next segment, or None if none arrived within ``timeout`` seconds."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=60)

    # ------------------------------------------------------------------------------ thread
    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                everything = list_segments(self.source)
            except Exception as exc:  # noqa: BLE001 - handed to the job, which re-raises it
                self._put(ReadItem(self.next_number, error=exc))
                return
            listed = [(n, p) for n, p in everything if n >= self.next_number]
            for number in self._late([n for n, _ in everything if n < self.next_number]):
                if not self._put(ReadItem(number, late=True)):
                    return
            self.caught_up = not listed
            if not listed:
                self.stopped.wait(self.poll_s)
                continue
            self.newest = max(self.newest, listed[-1][0])
            for number, _ in listed:
                item = self._prepare(number)
                if not self._put(item):
                    return
                if number > self.next_number:
                    self.gaps.append([self.next_number, number - 1])
                self.next_number = number + 1
                if item.error is not None and not isinstance(item.error, CorruptSegmentError):
                    return

    def _late(self, below: list[int]) -> list[int]:
        """The numbers of ``below`` (listed, under the offset) that lie in a skipped gap; each
        is taken out of its gap, so it is reported once."""
        late = []
        for number in below:
            for i, (lo, hi) in enumerate(self.gaps):
                if lo <= number <= hi:
                    late.append(number)
                    self.gaps[i:i + 1] = [g for g in ([lo, number - 1], [number + 1, hi])
                                          if g[0] <= g[1]]
                    break
        return late

    def _prepare(self, number: int) -> ReadItem:
        try:
            segment = read_segment(self.source, number, self.payload_format, bad_rows="drop")
            segment = segment.without(self.check(segment))
            if self.encoder is None:
                self.encoder = self.make_encoder(segment.payload_format)
            keys = self.encoder(segment.payloads)  # the whole segment: never depends on a row
            self.payload_format = segment.payload_format  # later ones must match the first
            return ReadItem(number, segment=segment, keys=keys)
        except Exception as exc:  # noqa: BLE001 - CorruptSegmentError or fatal, both handed on
            return ReadItem(number, error=exc)

    def _put(self, item: ReadItem) -> bool:
        """Waits for room in the queue; False once the reader is closed."""
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
