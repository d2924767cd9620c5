"""One shard of a sharded memory: a contiguous range of slots, its search, writes and durability.

Pure PyTorch + numpy (no Ray): ``lifelong.distributed.actor`` runs it inside a Ray actor, and
tests drive it directly. Slot ids crossing the shard's boundary are global (offset + local).

A query gets the shard's local top-k, and with labels the keys the loss may need: the best
positive and best negative of the local top-k (the global best ones are among them), the slot
most recently written for each label here, and the shard's first insert candidates. An update
(``ShardWrite``) refreshes the slots it names and inserts into this shard's oldest slots, chosen
here when the update is applied, so concurrent writers never take the same slot. Every update
is logged (``storage.ShardStore``) before it is acknowledged, and a batch a writer retries (same
writer id and sequence number) is applied once.

A shard serves several callers at once (a threaded Ray actor): each call changes or reads the
state under the shard's lock, then waits, without it, until every update its answer reflects is
durable (group commit: callers that wrote meanwhile share one sync, and a step's sync runs
while its search does). A sync that fails loses the updates after the last durable one: every
answer that reflects them fails with DurabilityError, and the shard rebuilds its state from its
files before the next call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from lifelong.distributed.answer import ShardAnswer, answer_query, as_tensor
from lifelong.distributed.batches import ShardWrite
from lifelong.distributed.plan import plan_update
from lifelong.distributed.records import Snapshot, Update
from lifelong.distributed.spec import MemorySpec
from lifelong.distributed.snapshots import Snapshots
from lifelong.distributed.storage import ShardStore
from lifelong.errors import (CorruptStateError, DurabilityError, InvalidLabelError,
                             InvalidQueryError, MemoryStateError)
from lifelong.memory import Memory

__all__ = ["MemoryShard", "ShardAnswer", "ShardStats", "ShardWrite"]


@dataclass
class ShardStats:
    queries: int = 0
    inserts: int = 0
    refreshes: int = 0
    updates: int = 0
    replayed: int = 0
    duplicates: int = 0


def is_named_writer(writer: str) -> bool:
    """A writer the dedup table keeps however long it is idle: a named one (``kind:name``,
    e.g. a stream job's ``stream:<name>``), not a random client id nor a re-route writer
    (``<writer>/<seq>``)."""
    return ":" in writer and "/" not in writer


class MemoryShard:
    """Slots offset .. offset + size - 1 of the memory ``spec``, shard number ``index``.

    Args:
        spec: the memory.
        index: which shard.
        device: where the slots live ("cpu" or "cuda").
        durable: load from and log to the memory's storage location (False: in memory only).
    """

    # Writers idle for more than this many updates of the shard leave its dedup table.
    writer_idle_updates = 10_000
    # Shards whose keys take more bytes than this write their snapshots in a background thread
    # (appends and queries go on meanwhile); smaller ones write them at once.
    background_snapshot_bytes = 64 << 20

    def __init__(self, spec: MemorySpec, index: int, device: str = "cpu", durable: bool = True):
        self.spec, self.index = spec, index
        self.offset = spec.shard_offsets()[index]
        self.size = spec.shard_sizes()[index]
        self.device = torch.device(device)
        self.lock = threading.RLock()  # held while a call reads or changes the state
        self.index_refused = 0  # persisted search indexes refused (corrupt): rebuilt from keys
        self._fresh_state()
        self.stats = ShardStats()
        self._frame = 0  # the log frame of the last update in the state (0: all durable)
        self.store = ShardStore(spec.location, index) if durable else None
        if self.store is not None:
            logged = self._restore()
            background = self.size * spec.key_dim * 4 > self.background_snapshot_bytes
            self.snapshots = Snapshots(self.store, spec.snapshot_every, self._snapshot_state,
                                       background, logged=logged)
            self._sync_failures = self.store.commit.failures

    def _fresh_state(self) -> None:
        """Empty slots, recent-slot table and writer history."""
        spec, index = self.spec, self.index
        self.memory = Memory(key_dim=spec.key_dim, num_slots=self.size, num_values=1,
                             choose_k=spec.choose_k, alpha=spec.alpha, age_noise=spec.age_noise,
                             use_recent=False, seed=spec.seed + index, slot_offset=self.offset,
                             total_slots=spec.num_slots, key_dtype=spec.key_dtype,
                             search=spec.make_search()).to(self.device)
        v = spec.num_values
        self.recent_slots = np.full(v, -1, dtype=np.int64)
        self.recent_clock = np.zeros(v, dtype=np.int64)
        self.recent_position = np.zeros(v, dtype=np.int64)
        # writer -> [last seq, global inserted slots, digest of that batch, clock]
        self.writers: dict[str, list] = {}

    # ------------------------------------------------------------------ calls, durable replies
    def search(self, q: np.ndarray, labels: np.ndarray | None, k: int) -> ShardAnswer:
        """The local answer to B normalised queries q [B, d] (labels [B] or None)."""
        return self._reply(lambda: self._search(q, labels, k))

    def apply(self, write: ShardWrite) -> np.ndarray:
        """Applies this shard's part of an update batch once, durably; returns the global
        slot of each of its inserts, then of each of its refreshes, in order, -1 where
        refused (see ``plan.plan_update``); the same answer again for a retried batch, none for a redone
        one.

        Raises:
            MemoryStateError: the batch is older than the writer's last one, or repeats its
                number with other contents (two clients using one writer id), or does not
                fit this shard (see ``_validate``).
            InvalidQueryError, InvalidLabelError: bad queries or labels.
            DurabilityError: it could not be logged (nothing applied).
        """
        return self._reply(lambda: self._apply(write))

    def step(self, write: ShardWrite, q: np.ndarray, labels: np.ndarray | None,
             k: int) -> tuple[np.ndarray, ShardAnswer]:
        """A pipelined client's one call per step: ``apply(write)`` (the previous step's
        update), then ``search(q, labels, k)``, which so sees it; the log is synced while the
        search runs. If the apply raises, nothing is searched."""
        def work():
            inserted = self._apply(write, sync_soon=True)
            return inserted, self._search(q, labels, k)

        return self._reply(work)

    def _reply(self, work):
        """``work()`` under the lock (after any rebuild, see ``_recover``), its result
        returned once every update it reflects is durable: the log synced past ``_frame``,
        without the lock, so other callers go on meanwhile.

        Raises:
            DurabilityError: a failed sync lost an update it reflects; the state is rebuilt
                from the files.
        """
        with self.lock:
            self._recover()
            result, frame = work(), self._frame
        if self.store is not None:
            try:
                self.store.sync(frame)
            except DurabilityError:
                with self.lock:
                    self._recover()
                raise
        return result

    def _recover(self) -> None:
        """After a failed sync lost logged updates (``GroupCommit``): the state again as the
        files hold it, without them (their callers got DurabilityError). Lock held."""
        if self.store is None or self.store.commit.failures == self._sync_failures:
            return
        self._sync_failures = self.store.commit.failures
        self.snapshots.wait()
        self._fresh_state()
        self._frame = 0
        self.snapshots.logged = self._restore()

    # -------------------------------------------------------------------------------- query
    def _search(self, q: np.ndarray, labels: np.ndarray | None, k: int) -> ShardAnswer:
        self._check(q, labels)
        self.stats.queries += q.shape[0]
        return answer_query(self.memory, q, labels, k, self.offset, self.recent_slots,
                            self.recent_clock, self.recent_position)

    def _check(self, q: np.ndarray, labels: np.ndarray | None) -> None:
        d = self.spec.key_dim
        if not isinstance(q, np.ndarray) or q.dtype != np.float32 or q.ndim != 2 \
                or q.shape[1] != d or q.shape[0] == 0:
            raise InvalidQueryError(f"shard query must be float32 [B, {d}], got "
                                    f"{getattr(q, 'dtype', type(q))} {getattr(q, 'shape', '')}")
        if not np.isfinite(q).all():
            raise InvalidQueryError("query holds NaN or Inf")
        if labels is not None and (labels.shape != (q.shape[0],) or labels.dtype != np.int64 or
                                   labels.min() < 0 or labels.max() >= self.spec.num_values):
            raise InvalidLabelError(f"labels must be int64 [{q.shape[0]}] in "
                                    f"[0, {self.spec.num_values})")

    # ------------------------------------------------------------------------------- update
    def _apply(self, write: ShardWrite, sync_soon: bool = False) -> np.ndarray:
        """``apply`` under the lock: logged (not yet durable, ``_frame``) and applied;
        ``sync_soon``: the group commit thread syncs the log meanwhile, from the moment the
        frame is written (a step: while the update is applied and the search runs)."""
        self._validate(write)  # before anything is logged or changed
        last = self.writers.get(write.writer)
        digest = write.digest()
        if last is not None and write.seq <= last[0]:
            if 0 <= write.redo_after < write.seq:  # a step redone after a restart: applied
                self.stats.duplicates += 1  # (answer: none, the first version's slots stand)
                return np.zeros(0, dtype=np.int64)
            if write.seq < last[0]:
                raise MemoryStateError(f"writer {write.writer} sent batch {write.seq} after "
                                       f"{last[0]}: batches must arrive in order")
            if len(last) > 2 and last[2] is not None and last[2] != digest:
                raise MemoryStateError(
                    f"writer {write.writer} sent batch {write.seq} twice with different "
                    "contents: is a second client using the same writer id?")
            self.stats.duplicates += 1
            return np.asarray(last[1], dtype=np.int64)
        update = plan_update(self.memory, write, digest, self.offset)
        if self.store is not None:
            self._frame = self.store.write(update)  # durable before acknowledged: _reply
            if sync_soon:
                self.store.sync_soon()
        self._apply_update(update)
        self.stats.updates += 1
        self.stats.inserts += len(write.insert_labels)
        self.stats.refreshes += len(write.refresh_labels)
        if self.store is not None:
            self.snapshots.after_append()  # never raises: the update is acknowledged
        return self._global(update.inserted)

    def _global(self, local: np.ndarray) -> np.ndarray:
        """Local slot ids as global ones; -1 (refused) stays -1."""
        local = np.asarray(local, dtype=np.int64)
        return np.where(local >= 0, local + self.offset, -1)

    def _validate(self, write: ShardWrite) -> None:
        """``ShardWrite.check`` against this shard (clients can be wrong)."""
        if not isinstance(write, ShardWrite):
            raise MemoryStateError(f"a shard write must be a ShardWrite, got "
                                   f"{type(write).__name__}")
        write.check(self.spec.key_dim, self.spec.num_values, self.offset, self.size, self.index)

    def _apply_update(self, update: Update) -> None:
        dev = self.device
        self.memory.apply_write(torch.from_numpy(update.slots).to(dev),
                                torch.from_numpy(update.keys).to(dev),
                                torch.from_numpy(update.values).to(dev), clock=update.clock)
        for label, slot, pos in zip(update.recent_labels.tolist(), update.recent_slots.tolist(),
                                    update.recent_positions.tolist()):
            if (update.clock, pos) >= (self.recent_clock[label], self.recent_position[label]):
                self.recent_slots[label] = slot
                self.recent_clock[label], self.recent_position[label] = update.clock, pos
        # Re-inserted at the end: the table stays ordered by each writer's last update.
        self.writers.pop(update.writer, None)
        self.writers[update.writer] = [update.seq, self._global(update.inserted).tolist(),
                                       update.digest, update.clock]
        self._expire_writers(update.clock)

    def _expire_writers(self, clock: int) -> None:
        """Forgets writers idle for more than ``writer_idle_updates`` updates of this shard,
        except named ones (``is_named_writer``): the table stays bounded. A forgotten writer's
        batches are no longer recognised as retries."""
        horizon = clock - self.writer_idle_updates
        expired = []
        for writer, last in self.writers.items():
            last_clock = last[3] if len(last) > 3 else 0  # older snapshots: idle since 0
            if last_clock > horizon:
                break  # ordered by last update: the rest are younger
            if not is_named_writer(writer):
                expired.append(writer)
        for writer in expired:
            del self.writers[writer]

    # --------------------------------------------------------------------------- durability
    def _restore(self) -> int:
        """Loads the newest snapshot and replays the log after it, each checked against the
        spec first (a crafted file with valid checksums is refused too); returns how many
        updates it replayed.

        Raises:
            CorruptStateError: a file is unreadable or does not fit, naming it.
        """
        snapshot, updates = self.store.load()
        if snapshot is not None:
            path = self.store.snapshot_path(self.store.snapshot_generation)
            try:
                snapshot.check(self.size, self.spec.key_dim, self.spec.num_values)
            except MemoryStateError as exc:
                raise CorruptStateError(f"{path}: {exc}") from None
            self._load_snapshot(snapshot)
        for update in updates:
            try:
                update.check(self.size, self.spec.key_dim, self.spec.num_values,
                             int(self.memory.clock))
            except MemoryStateError as exc:
                raise CorruptStateError(f"{update.source}: update {update.writer!r} "
                                        f"#{update.seq}: {exc}") from None
            self._apply_update(update)
        self.stats.replayed = len(updates)
        return len(updates)

    def _load_snapshot(self, snap: Snapshot) -> None:
        dev = self.device
        if snap.keys.shape != (self.size, self.spec.key_dim) or \
                snap.recent_slots.shape != (self.spec.num_values,):
            raise MemoryStateError(f"snapshot of shard {self.index} does not fit the spec")
        # load_state's arrays come from Ray's object store, read-only: as_tensor copies those
        self.memory.load_slots(as_tensor(snap.keys, dev), as_tensor(snap.values, dev),
                               as_tensor(snap.write_time, dev), snap.clock)
        search = self.memory.search
        if snap.index is not None and hasattr(search, "import_state"):
            # the index as it was at the snapshot (checksummed); refused: rebuilt from the keys
            self.index_refused += not search.import_state(snap.index, self.memory.keys,
                                                          self.memory.values)
        self.recent_slots, self.recent_clock = snap.recent_slots, snap.recent_clock
        self.recent_position = snap.recent_position
        self.writers = snap.writers

    def load_state(self, keys: np.ndarray, values: np.ndarray, ages: np.ndarray,
                   clock: int) -> int:
        """Replaces the shard's slots (keys [n, d] float32, values [n], ages [n] int64; clock
        >= every age, the same on all shards so that their write times compare) and, if
        durable, snapshots at once; the recent-slot table and writer history are cleared."""
        n, d = self.size, self.spec.key_dim
        if keys.shape != (n, d) or keys.dtype != np.float32 or values.shape != (n,) or \
                ages.shape != (n,):
            raise MemoryStateError(f"shard {self.index} state must be keys float32 [{n}, {d}], "
                                   f"values [{n}], ages [{n}]")
        if not np.isfinite(keys).all() or values.min() < -1 or \
                values.max() >= self.spec.num_values or ages.min() < 0 or ages.max() > clock:
            raise MemoryStateError("keys must be finite, values in [-1, num_values), ages in "
                                   "[0, clock]")
        clock = int(clock)
        with self.lock:
            self._recover()
            self._load_snapshot(Snapshot(
                keys=keys, values=values.astype(np.int64),
                write_time=clock - ages.astype(np.int64), clock=clock,
                recent_slots=np.full(self.spec.num_values, -1, dtype=np.int64),
                recent_clock=np.zeros(self.spec.num_values, dtype=np.int64),
                recent_position=np.zeros(self.spec.num_values, dtype=np.int64), writers={}))
            return self.snapshot() if self.store is not None else 0

    def snapshot(self) -> int:
        """Writes the full state as a new generation now (after any snapshot in progress);
        returns it.

        Raises:
            DurabilityError: it could not be written (shown by ``status()`` as well); the
                log still holds every update.
        """
        with self.lock:
            self._recover()
            return self.snapshots.write_now()

    def wait_for_snapshot(self) -> None:
        """Returns when no snapshot is being written."""
        self.snapshots.wait()

    def _snapshot_state(self, copy: bool) -> Snapshot:
        """The state to snapshot; ``copy``: arrays of its own (for a background write)."""
        mem = self.memory
        on_cpu = self.device.type == "cpu"  # else .cpu() makes the copies already
        own = (lambda a, copied=False: a if copied or not copy else a.copy())  # noqa: E731
        # Snapshots hold float32 keys: compact keys widen exactly (and that is a copy already),
        # and narrow back exactly when loaded (docs/design.md §1.2).
        compact = mem.keys.dtype != torch.float32
        export = getattr(mem.search, "export_state", None)
        return Snapshot(
            index=export(mem.keys) if export is not None else None,
            keys=own(mem.keys.cpu().float().numpy(), not on_cpu or compact),
            values=own(mem.values.cpu().numpy(), not on_cpu),
            write_time=own(mem.write_time.cpu().numpy(), not on_cpu), clock=int(mem.clock),
            recent_slots=own(self.recent_slots), recent_clock=own(self.recent_clock),
            recent_position=own(self.recent_position), writers=dict(self.writers))

    # -------------------------------------------------------------------------------- state
    def state(self) -> dict[str, np.ndarray]:
        """keys [n, d], values [n], ages [n], recent_slots (global) / recent_clock /
        recent_position [V]: copies, sent once durable."""
        def copies():
            mem = self.memory
            return {"keys": mem.keys.cpu().float().numpy().copy(),  # the state now (float32)
                    "values": mem.values.cpu().numpy().copy(), "ages": mem.ages.cpu().numpy(),
                    "recent_slots": np.where(self.recent_slots >= 0,
                                             self.recent_slots + self.offset, -1),
                    "recent_clock": self.recent_clock.copy(),
                    "recent_position": self.recent_position.copy()}

        return self._reply(copies)

    def status(self) -> dict:
        """Occupancy, oldest age (both kept incrementally by the shard's ``Memory``: amortised
        O(slots written since the last call), not O(size)) and traffic counters."""
        with self.lock:
            self._recover()
            mem = self.memory
            return {"shard": self.index, "slots": self.size, "offset": self.offset,
                    "occupied": mem.occupancy(), "oldest_age": mem.oldest_age(),
                    "clock": int(mem.clock), "device": str(self.device),
                    "queries": self.stats.queries, "inserts": self.stats.inserts,
                    "refreshes": self.stats.refreshes, "updates": self.stats.updates,
                    "replayed": self.stats.replayed, "duplicates": self.stats.duplicates,
                    **self._search_status(), **self._durability_status()}

    def _search_status(self) -> dict:
        describe = getattr(self.memory.search, "describe", None)
        if describe is None:
            return {"search": "exact"}
        return {"search": {**describe(), "refused": self.index_refused}}

    def gauges(self) -> dict[str, int]:
        """What the shard's gauges show: occupied slots, the oldest filled slot's age, failed
        snapshots, torn frames dropped at start. Reads only, O(size) (the actor calls it every
        few seconds from another thread, so it leaves the insert order alone)."""
        mem = self.memory
        filled = mem.values >= 0
        ages = mem.ages[filled]
        store = self.store
        return {"occupied": int(filled.sum()),
                "oldest_age": int(ages.max()) if ages.numel() else 0,
                "snapshot_failures": self.snapshots.failures if store else 0,
                "torn_frames": store.torn_frames if store else 0}

    def _durability_status(self) -> dict:
        if self.store is None:
            return {"generation": None}
        commit = self.store.commit
        return {**self.snapshots.status(), "log_syncs": commit.syncs,
                "sync_failures": commit.failures,
                "sync_error": commit.error}
