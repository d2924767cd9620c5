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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lifelong.distributed.batches import ShardWrite
from lifelong.distributed.spec import MemorySpec
from lifelong.distributed.records import Snapshot, Update
from lifelong.distributed.snapshots import Snapshots
from lifelong.distributed.storage import ShardStore
from lifelong.errors import CorruptStateError, InvalidLabelError, InvalidQueryError, MemoryStateError
from lifelong.memory import Memory

__all__ = ["MemoryShard", "ShardAnswer", "ShardStats", "ShardWrite"]


@dataclass
class ShardAnswer:
    """A shard's answer to a query batch of B (numpy, so it crosses processes cheaply).

    sims/slots/values: [B, k'] local top-k (k' = min(k, shard size)), best first, -inf / -1 / -1
    where fewer slots are filled; slots are local ids (add ``offset``) and slots and values are
    int32, which keeps a batch-16 answer under Ray's 100 KiB limit for replies sent inline
    (larger ones go through the object store: several ms more per call, measured). With
    labels: pos_*/neg_* the best positive / negative of that list (global slot, -1 if none)
    with their keys [B, d]; recent_* the slot last written here for the label (-1 if none), its
    stamp (clock, position in batch), similarity, value and key; and oldest_scores/oldest_slots
    [c] the shard's first insert candidates.
    """

    sims: np.ndarray
    slots: np.ndarray
    values: np.ndarray
    offset: int = 0
    pos_slot: np.ndarray | None = None
    pos_key: np.ndarray | None = None
    neg_slot: np.ndarray | None = None
    neg_key: np.ndarray | None = None
    recent_slot: np.ndarray | None = None
    recent_stamp: np.ndarray | None = None
    recent_sim: np.ndarray | None = None
    recent_value: np.ndarray | None = None
    recent_key: np.ndarray | None = None
    oldest_scores: np.ndarray | None = None
    oldest_slots: np.ndarray | None = None


def _tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """``a`` on ``device``; arrays from Ray's object store are read-only, so those are copied."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


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
        self.memory = Memory(key_dim=spec.key_dim, num_slots=self.size, num_values=1,
                             choose_k=spec.choose_k, alpha=spec.alpha, age_noise=spec.age_noise,
                             use_recent=False, seed=spec.seed + index, slot_offset=self.offset,
                             total_slots=spec.num_slots).to(self.device)
        v = spec.num_values
        self.recent_slots = np.full(v, -1, dtype=np.int64)
        self.recent_clock = np.zeros(v, dtype=np.int64)
        self.recent_position = np.zeros(v, dtype=np.int64)
        # writer -> [last seq, global inserted slots, digest of that batch]
        self.writers: dict[str, list] = {}
        self.stats = ShardStats()
        self.store = ShardStore(spec.location, index) if durable else None
        if self.store is not None:
            logged = self._restore()
            background = self.size * spec.key_dim * 4 > self.background_snapshot_bytes
            self.snapshots = Snapshots(self.store, spec.snapshot_every, self._snapshot_state,
                                       background, logged=logged)

    # -------------------------------------------------------------------------------- query
    def search(self, q: np.ndarray, labels: np.ndarray | None, k: int) -> ShardAnswer:
        """The local answer to B normalised queries q [B, d] (labels [B] or None)."""
        self._check(q, labels)
        mem = self.memory
        qt = _tensor(q, self.device)
        with torch.no_grad():
            sims, slots = mem.search.search(qt, mem.keys, mem.values, min(k, self.size))
            empty = torch.isinf(sims)
            values = mem.values[slots].masked_fill(empty, -1)
        self.stats.queries += q.shape[0]
        answer = ShardAnswer(sims=sims.cpu().numpy(),
                             slots=slots.masked_fill(empty, -1).to(torch.int32).cpu().numpy(),
                             values=values.to(torch.int32).cpu().numpy(), offset=self.offset)
        if labels is None:
            return answer
        with torch.no_grad():
            y = _tensor(labels, self.device).unsqueeze(1)
            positive = (values == y) & ~empty
            negative = ~empty & (values != y)
            for kind, mask in (("pos", positive), ("neg", negative)):
                first = mask.to(torch.int8).argmax(dim=1, keepdim=True)  # first True
                local = slots.gather(1, first).squeeze(1)
                slot = torch.where(mask.any(dim=1), local + self.offset, -1)
                setattr(answer, f"{kind}_slot", slot.cpu().numpy())
                setattr(answer, f"{kind}_key", mem.keys[local].cpu().numpy())
            recent = self.recent_slots[labels]
            local = torch.from_numpy(recent.clip(min=0)).to(self.device)
            keys = mem.keys[local]
            answer.recent_slot = np.where(recent >= 0, recent + self.offset, -1)
            answer.recent_stamp = np.stack([self.recent_clock[labels],
                                            self.recent_position[labels]], axis=1)
            answer.recent_value = np.where(recent >= 0, mem.values[local].cpu().numpy(), -1)
            answer.recent_sim = (qt * keys).sum(1).cpu().numpy()
            answer.recent_key = keys.cpu().numpy()
            scores, oldest = mem.oldest_candidates(min(2 * q.shape[0], self.size))
            answer.oldest_scores = scores.cpu().numpy()
            answer.oldest_slots = (oldest + self.offset).cpu().numpy()
        return answer

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
    def apply(self, write: ShardWrite) -> np.ndarray:
        """Applies this shard's part of an update batch once; returns the global slot of each
        of its inserts, then of each of its refreshes, in order, -1 where refused (see
        ``_plan``); the same answer again for a retried batch, none for a redone one.

        Raises:
            MemoryStateError: the batch is older than the writer's last one, or repeats its
                number with other contents (two clients using one writer id), or does not
                fit this shard (see ``_validate``).
            InvalidQueryError, InvalidLabelError: bad queries or labels.
        """
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
        update = self._plan(write, digest)
        if self.store is not None:
            self.store.append(update)  # durable before acknowledged
        self._apply_update(update)
        self.stats.updates += 1
        self.stats.inserts += len(write.insert_labels)
        self.stats.refreshes += len(write.refresh_labels)
        if self.store is not None:
            self.snapshots.after_append()  # never raises: the update is acknowledged
        return self._global(update.inserted)

    def step(self, write: ShardWrite, q: np.ndarray, labels: np.ndarray | None,
             k: int) -> tuple[np.ndarray, ShardAnswer]:
        """A pipelined client's one call per step: ``apply(write)`` (the previous step's
        update), then ``search(q, labels, k)``, which so sees it. If the apply raises, nothing
        is searched."""
        return self.apply(write), self.search(q, labels, k)

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

    def _plan(self, write: ShardWrite, digest: str) -> Update:
        """The update's effect (``Memory.plan_write``), computed without changing any state.

        A refresh whose slot no longer holds its label (another writer overwrote it since the
        search) becomes an insert; inserts the client routed to an empty slot (the first
        ``write.insert_empty``) and those converted refreshes take this shard's empty slots
        and are refused (answer -1) when none is left, rather than evict an entry. The answer
        (``Update.inserted``) holds the slot of each insert, then of each refresh, in order.
        """
        mem, dev = self.memory, self.device
        refresh_local = write.refresh_slots - self.offset
        if ((refresh_local < 0) | (refresh_local >= self.size)).any():
            raise MemoryStateError("refresh slots outside this shard")
        refresh_local = refresh_local.astype(np.int64)
        held = mem.values[_tensor(refresh_local, dev)].cpu().numpy()
        fresh = held == write.refresh_labels
        stale = np.flatnonzero(~fresh)
        n_ins = len(write.insert_labels)
        marked = min(max(int(write.insert_empty), 0), n_ins)
        # The insert order: routed to an empty slot, converted refreshes, then the others.
        ins_q = np.concatenate([write.insert_q[:marked], write.refresh_q[stale],
                                write.insert_q[marked:]]).astype(np.float32, copy=False)
        ins_labels = np.concatenate([write.insert_labels[:marked], write.refresh_labels[stale],
                                     write.insert_labels[marked:]]).astype(np.int64, copy=False)
        ins_pos = np.concatenate([write.insert_positions[:marked],
                                  write.refresh_positions[stale],
                                  write.insert_positions[marked:]]).astype(np.int64, copy=False)
        wants_empty = marked + len(stale)
        empty = mem.num_slots - mem.occupancy() if wants_empty else 0  # none is refreshed now
        accept = np.ones(len(ins_labels), dtype=bool)
        accept[min(wants_empty, empty):wants_empty] = False
        plan = mem.plan_write(_tensor(refresh_local[fresh], dev),
                              _tensor(write.refresh_q[fresh], dev), _tensor(ins_q[accept], dev),
                              _tensor(ins_labels[accept], dev))
        taken = np.full(len(ins_labels), -1, dtype=np.int64)
        taken[accept] = plan.inserted.cpu().numpy()
        # the answer in the write's order: its inserts, then its refreshes
        converted = taken[marked:marked + len(stale)]
        answer_refresh = np.where(fresh, refresh_local, -1)
        answer_refresh[stale] = converted
        answer = np.concatenate([taken[:marked], taken[marked + len(stale):], answer_refresh])
        return Update(writer=write.writer, seq=write.seq, digest=digest,
                      clock=int(mem.clock) + 1, slots=plan.slots.cpu().numpy(),
                      keys=plan.keys.cpu().numpy().astype(np.float32),
                      values=plan.values.cpu().numpy(),
                      recent_labels=np.concatenate([write.refresh_labels[fresh],
                                                    ins_labels[accept]]),
                      recent_slots=np.concatenate([refresh_local[fresh], taken[accept]]),
                      recent_positions=np.concatenate([write.refresh_positions[fresh],
                                                       ins_pos[accept]]),
                      inserted=answer.astype(np.int64))

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
        # load_state's arrays come from Ray's object store, read-only: _tensor copies those
        self.memory.load_slots(_tensor(snap.keys, dev), _tensor(snap.values, dev),
                               _tensor(snap.write_time, dev), snap.clock)
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
        self._load_snapshot(Snapshot(
            keys=keys, values=values.astype(np.int64), write_time=clock - ages.astype(np.int64),
            clock=clock, recent_slots=np.full(self.spec.num_values, -1, dtype=np.int64),
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
        return self.snapshots.write_now()

    def wait_for_snapshot(self) -> None:
        """Returns when no snapshot is being written."""
        self.snapshots.wait()

    def _snapshot_state(self, copy: bool) -> Snapshot:
        """The state to snapshot; ``copy``: arrays of its own (for a background write)."""
        mem = self.memory
        on_cpu = self.device.type == "cpu"  # else .cpu() makes the copies already
        own = (lambda a, copied=False: a if copied or not copy else a.copy())  # noqa: E731
        return Snapshot(
            keys=own(mem.keys.cpu().numpy(), not on_cpu),
            values=own(mem.values.cpu().numpy(), not on_cpu),
            write_time=own(mem.write_time.cpu().numpy(), not on_cpu), clock=int(mem.clock),
            recent_slots=own(self.recent_slots), recent_clock=own(self.recent_clock),
            recent_position=own(self.recent_position), writers=dict(self.writers))

    # -------------------------------------------------------------------------------- state
    def state(self) -> dict[str, np.ndarray]:
        """keys [n, d], values [n], ages [n], recent_slots (global) / recent_clock /
        recent_position [V]."""
        mem = self.memory
        return {"keys": mem.keys.cpu().numpy(), "values": mem.values.cpu().numpy(),
                "ages": mem.ages.cpu().numpy(),
                "recent_slots": np.where(self.recent_slots >= 0,
                                         self.recent_slots + self.offset, -1),
                "recent_clock": self.recent_clock.copy(),
                "recent_position": self.recent_position.copy()}

    def status(self) -> dict:
        """Occupancy, oldest age (both kept incrementally by the shard's ``Memory``: amortised
        O(slots written since the last call), not O(size)) and traffic counters."""
        mem = self.memory
        return {"shard": self.index, "slots": self.size, "offset": self.offset,
                "occupied": mem.occupancy(), "oldest_age": mem.oldest_age(),
                "clock": int(mem.clock), "device": str(self.device),
                "queries": self.stats.queries, "inserts": self.stats.inserts,
                "refreshes": self.stats.refreshes, "updates": self.stats.updates,
                "replayed": self.stats.replayed, "duplicates": self.stats.duplicates,
                **self._durability_status()}

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
        return self.snapshots.status() if self.store is not None else {"generation": None}
