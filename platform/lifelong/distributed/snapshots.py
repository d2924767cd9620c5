"""When and how a shard's snapshots are written: at once, or in a background thread for a
large shard; one at a time; a failed one counted, reported and tried again.

A snapshot never makes an acknowledged update fail: the update is in the log before the
snapshot starts, so a snapshot that cannot be written (disk full) loses nothing; it is retried
after 1, 2, 4 ... (at most ``every``) further updates, and ``status()`` says why it failed.
"""

from __future__ import annotations

import threading
from typing import Callable

from lifelong.distributed.records import Snapshot
from lifelong.distributed.storage import ShardStore
from lifelong.errors import DurabilityError


class Snapshots:
    """The snapshot schedule of one shard.

    Args:
        store: the shard's files.
        every: updates between snapshots (the spec's ``snapshot_every``).
        capture: the shard's state now; ``capture(True)`` gives arrays of its own (for a
            background write while the shard changes).
        background: write snapshots in a background thread (appends and queries go on).
        logged: updates already in the log since the last snapshot (after a restart).
    """

    def __init__(self, store: ShardStore, every: int, capture: Callable[[bool], Snapshot],
                 background: bool, logged: int = 0):
        self.store, self.every, self.capture, self.background = store, every, capture, background
        self.logged = logged  # updates logged since the last snapshot began
        self.due = every  # ... when the next one begins
        self.failures = 0  # snapshots that could not be written
        self.error: str | None = None  # why the last one failed (None: it did not)
        self._failures_in_row = 0
        self._thread: threading.Thread | None = None
        self._result: tuple[int, str | None] | None = None

    def after_append(self) -> None:
        """Counts one logged update; begins a snapshot when one is due. Never raises."""
        self.logged += 1
        if self.logged >= self.due:
            self.begin(self.background)

    def write_now(self) -> int:
        """Writes a snapshot now (after any in progress); returns its generation.

        Raises:
            DurabilityError: it could not be written (also counted and reported).
        """
        self.wait()
        gen = self.begin(background=False)
        if self.error is not None:
            raise DurabilityError(self.error)
        return gen

    def begin(self, background: bool) -> int:
        """Starts a snapshot of the state now: the log rolls to the next generation and the
        snapshot is written at once or in a background thread. Returns its generation (that
        of the one in progress, if one is)."""
        self._collect()
        if self._thread is not None:
            return self.store.generation  # one at a time: the next one waits for it
        try:
            gen = self.store.roll()  # every update captured below is durable first
        except DurabilityError as exc:  # a sync lost updates: the shard rebuilds its state
            self._result = (0, str(exc))
            self._collect()
            return self.store.generation
        state, logged = self.capture(background), self.logged
        self.logged = 0
        if background:
            self._thread = threading.Thread(target=self._write, args=(state, gen, logged),
                                            daemon=True, name=f"snapshot {self.store.dir}")
            self._thread.start()
        else:
            self._write(state, gen, logged)
            self._collect()
        return gen

    def _write(self, state: Snapshot, gen: int, logged: int) -> None:
        try:
            self.store.write_snapshot(state, gen)
            self._result = (logged, None)
        except DurabilityError as exc:
            self._result = (logged, str(exc))

    def _collect(self) -> None:
        """Takes in the result of a finished snapshot (in the shard's own thread)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = None
        if self._result is None:
            return
        logged, error = self._result
        self._result = None
        if error is None:
            self.error, self._failures_in_row, self.due = None, 0, self.every
            return
        self.failures += 1
        self._failures_in_row += 1
        self.error = error
        self.logged += logged  # the logs still hold those updates
        self.due = self.logged + min(2 ** (self._failures_in_row - 1), self.every)

    def wait(self) -> None:
        """Returns when no snapshot is being written."""
        if self._thread is not None:
            self._thread.join()
        self._collect()

    def status(self) -> dict:
        self._collect()
        return {"generation": self.store.snapshot_generation,
                "log_generation": self.store.generation,
                "logged_since_snapshot": self.logged,
                "snapshot_in_progress": self._thread is not None,
                "snapshot_failures": self.failures,
                "snapshot_error": self.error,
                "torn_frames": self.store.torn_frames}
