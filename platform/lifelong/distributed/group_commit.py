"""Group commit: one sync of the log for every frame written before it began, in a thread.

A shard writes an update's frame to its log and goes on (applies it, answers the search that
came with it) while this thread syncs the log (``sync_soon``); the reply waits for ``wait(n)``,
which syncs itself if no sync has begun (a handoff to the thread costs more than a sync where
there is nothing to overlap). Frames written by several callers while a sync runs share the
next one. A failed sync loses every frame after
the last durable one: they are cut off the log (``cut``), their waiters get DurabilityError,
and ``failures`` tells the shard to rebuild its state from its files (it holds updates the log
no longer has), as a database does after a failed fsync.
"""

from __future__ import annotations

import threading
from typing import Callable

from lifelong.errors import DurabilityError

IDLE_EXIT_S = 1.0  # the thread ends after this long without frames (and restarts on the next)


class GroupCommit:
    """Numbers the frames of one log as they are written (1, 2, ...) and makes them durable.

    Writers hold ``lock`` while they write a frame and call ``written``, so a cut after a
    failed sync never races a write.

    Args:
        sync: makes every byte written so far durable (``os.fsync`` of the log); raises OSError.
        cut: ``cut(size)`` truncates the log to ``size`` bytes, durably; raises OSError.
        describe: the DurabilityError message for a failed sync (its OSError).

    Attributes:
        syncs: syncs done (each covers every frame written before it began).
        failures: syncs that failed; the frames they lost are not in the log.
        error: why the last one failed.
        broken: why the log cannot be trusted any more (a cut failed too), else None.
    """

    def __init__(self, sync: Callable[[], None], cut: Callable[[int], None],
                 describe: Callable[[OSError], str]):
        self._sync, self._cut, self._describe = sync, cut, describe
        self.lock = threading.Condition(threading.Lock())
        self._written = 0  # frames written
        self._durable = 0  # ... of which durable (or lost)
        self._size = 0  # bytes of the log after the last frame written
        self._durable_size = 0  # ... after the last durable one
        self._lost: list[tuple[int, int]] = []  # frames (a, b] lost to a failed sync
        self._syncing = False
        self._thread: threading.Thread | None = None
        self.syncs = 0
        self.failures = 0
        self.error: str | None = None
        self.broken: str | None = None

    def start(self, size: int) -> None:
        """A log of ``size`` durable bytes is now the one written (at open or after a roll);
        call with ``lock`` held and every frame durable (``drain``)."""
        self._size = self._durable_size = size

    @property
    def size(self) -> int:
        """Bytes of the log after the last frame written (durable or not)."""
        return self._size

    @property
    def last(self) -> int:
        """The number of the last frame written."""
        return self._written

    def written(self, size: int) -> int:
        """Counts one frame written (``lock`` held), the log now ``size`` bytes; returns its
        number for ``wait``."""
        self._written += 1
        self._size = size
        return self._written

    def sync_soon(self) -> None:
        """Has the thread sync every frame written so far, while the caller goes on."""
        with self.lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="group commit")
                self._thread.start()
            self.lock.notify_all()

    def wait(self, n: int) -> None:
        """Returns once frame ``n`` (and every one before it) is durable.

        Raises:
            DurabilityError: a failed sync lost it: it is not in the log.
        """
        with self.lock:
            while self._durable < n:
                self._sync_or_wait()
            if any(a < n <= b for a, b in self._lost):
                raise DurabilityError(self.error or "update not logged")

    def drain(self) -> None:
        """Returns once every frame written is durable or lost and no sync is running
        (before the log is closed or rolled); call with ``lock`` held."""
        while self._durable < self._written or self._syncing:
            self._sync_or_wait()

    def _run(self) -> None:
        with self.lock:
            while True:
                if self._durable == self._written or self._syncing:
                    # ends only after IDLE_EXIT_S without a notify: a caller that synced
                    # itself meanwhile must not cost the next step a new thread
                    if not self.lock.wait(IDLE_EXIT_S) and self._durable == self._written \
                            and not self._syncing:
                        self._thread = None
                        return
                else:
                    self._sync_or_wait()

    def _sync_or_wait(self) -> None:
        """One sync of every frame written so far, or (one is running) a wait for its end;
        ``lock`` held, released during the sync."""
        if self._syncing:
            self.lock.wait()
            return
        target, size = self._written, self._size
        self._syncing = True
        self.lock.release()
        try:
            self._sync()
            failed = None
        except OSError as exc:
            failed = exc
        finally:
            self.lock.acquire()
        self._syncing = False
        self.syncs += 1
        if failed is None:
            self._durable, self._durable_size = target, size
        else:
            self._lose(failed)
        self.lock.notify_all()

    def _lose(self, exc: OSError) -> None:
        """After a failed sync: cuts every frame after the last durable one off the log."""
        self.failures += 1
        self.error = self._describe(exc)
        self._lost.append((self._durable, self._written))
        self._durable = self._written
        try:
            self._cut(self._durable_size)
            self._size = self._durable_size
        except OSError as cut_exc:
            self.broken = f"{self.error}; the cut failed too ({cut_exc.strerror or cut_exc})"
