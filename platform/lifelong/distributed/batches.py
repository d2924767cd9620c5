"""Update batches of a sharded memory and their encoding as plain arrays.

A client plans one ``UpdateBatch`` per query batch: one ``ShardWrite`` per shard plus what it
needs to tell each query's written slot from the shards' answers. A writer that must survive a
crash persists the batch before sending it (the stream job's commit record), so the batch owns
its encoding: ``UpdateBatch.to_arrays`` gives named numpy arrays (no pickle, e.g. for
``np.savez``), ``UpdateBatch.from_arrays`` rebuilds the batch from them. The names are part of
on-disk formats: ``batch.nearest``, ``batch.inserting``, ``batch.target`` and
``write<s>.<field>`` for every array field of shard s's write, in field order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Mapping

import numpy as np

from lifelong.errors import InvalidLabelError, InvalidQueryError, MemoryStateError


@dataclass
class ShardWrite:
    """This shard's part of one update batch.

    Attributes:
        writer, seq: who sends it and its batch number (a retry repeats both).
        refresh_slots: [R] global slots to refresh (one entry per correct query, repeats add up).
        refresh_q: [R, d] the queries refreshing them; refresh_labels / refresh_positions: [R].
        insert_q: [I, d] queries to insert here, insert_labels [I], insert_positions [I].
        insert_empty: how many of the first inserts the client routed to an empty slot of this
            shard: the shard refuses those it has no empty slot left for (another writer took
            them) instead of evicting, and the client re-routes them (``ShardedMemory``). Not
            part of ``digest`` nor of ``to_arrays`` (format 1): a batch rebuilt from its arrays
            has 0, i.e. inserts as before.
        redo_after: -1, or the writer resumed from a checkpoint taken after its batch
            ``redo_after`` (``ShardedMemory.resume``): a later batch the shard has already
            applied is a redone step (same number, other queries) and is answered as applied,
            its first version standing. Not part of ``digest`` nor of ``to_arrays``.

    A refresh expects its slot to hold refresh_labels (the query was correct, so the slot held
    its label when searched): a shard turns a refresh of a slot that holds another value now
    into an insert (docs: notes/i15-i15-conc.md).
    """

    writer: str
    seq: int
    refresh_slots: np.ndarray
    refresh_q: np.ndarray
    refresh_labels: np.ndarray
    refresh_positions: np.ndarray
    insert_q: np.ndarray
    insert_labels: np.ndarray
    insert_positions: np.ndarray
    insert_empty: int = 0
    redo_after: int = -1

    def check(self, key_dim: int, num_values: int, offset: int, size: int,
              shard: int) -> None:
        """Checks the whole write against shard ``shard`` (slots offset .. offset + size - 1):
        types, shapes and dtypes of every array, finite queries, labels in [0, num_values),
        refresh slots in the shard, positions >= 0 and no more inserts than it can take.

        Raises:
            MemoryStateError, InvalidQueryError, InvalidLabelError: (nothing is changed).
        """
        if not isinstance(self.writer, str) or not self.writer:
            raise MemoryStateError(f"writer id must be a non-empty str, got {self.writer!r}")
        if isinstance(self.seq, bool) or not isinstance(self.seq, (int, np.integer)) or \
                self.seq < 1:
            raise MemoryStateError(f"batch number must be an int >= 1, got {self.seq!r}")
        d, v = key_dim, num_values
        sizes = {}
        for kind in ("refresh", "insert"):
            q = getattr(self, f"{kind}_q")
            if not isinstance(q, np.ndarray) or q.dtype != np.float32 or q.ndim != 2 or \
                    q.shape[1] != d:
                raise InvalidQueryError(
                    f"{kind}_q must be float32 [n, {d}], got {getattr(q, 'dtype', type(q))} "
                    f"{list(getattr(q, 'shape', []))}")
            if not np.isfinite(q).all():
                raise InvalidQueryError(f"{kind}_q holds NaN or Inf")
            n = sizes[kind] = q.shape[0]
            names = ["labels", "positions"] + (["slots"] if kind == "refresh" else [])
            for name in names:
                a = getattr(self, f"{kind}_{name}")
                error = InvalidLabelError if name == "labels" else MemoryStateError
                if not isinstance(a, np.ndarray) or a.shape != (n,) or a.dtype != np.int64:
                    raise error(f"{kind}_{name} must be int64 [{n}], got "
                                f"{getattr(a, 'dtype', type(a))} {list(getattr(a, 'shape', []))}")
            labels = getattr(self, f"{kind}_labels")
            if n and (labels.min() < 0 or labels.max() >= v):
                raise InvalidLabelError(f"{kind}_labels must lie in [0, {v}), got "
                                        f"[{labels.min()}, {labels.max()}]")
            positions = getattr(self, f"{kind}_positions")
            if n and positions.min() < 0:
                raise MemoryStateError(f"{kind}_positions must be >= 0")
        slots = self.refresh_slots
        if sizes["refresh"] and (slots.min() < offset or slots.max() >= offset + size):
            raise MemoryStateError(f"refresh slots outside shard {shard} (slots "
                                   f"{offset}..{offset + size - 1})")
        room = size - len(np.unique(slots))
        if sizes["insert"] > room:
            raise MemoryStateError(f"{sizes['insert']} inserts exceed the {room} slots shard "
                                   f"{shard} has beside the refreshed ones")

    def digest(self) -> str:
        """A fingerprint of the batch's contents: a retry must carry the same one."""
        h = hashlib.blake2b(digest_size=16)
        for a, dtype in ((self.refresh_slots, np.int64), (self.refresh_q, np.float32),
                         (self.refresh_labels, np.int64), (self.refresh_positions, np.int64),
                         (self.insert_q, np.float32), (self.insert_labels, np.int64),
                         (self.insert_positions, np.int64)):
            a = np.ascontiguousarray(a, dtype=dtype)
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()


# The array fields of a ShardWrite, in field order (writer and seq belong to the whole batch).
# insert_empty is a routing hint, not an array: it stays out of the encoding (format 1).
WRITE_ARRAYS = tuple(f.name for f in fields(ShardWrite)
                     if f.name not in ("writer", "seq", "insert_empty", "redo_after"))


@dataclass
class UpdateBatch:
    """One planned update batch of B queries, not yet sent: what a writer that must survive a
    crash persists before sending (``ShardedMemory.apply_update`` sends it, as often as needed).

    Attributes:
        seq: the batch's sequence number for the client's writer.
        writes: one ``ShardWrite`` per shard, in shard order.
        nearest: [B] global slot of each query's nearest neighbour (what a correct query
            refreshes).
        inserting: [I] positions of the queries to insert; target: [I] the shard of each.
    """

    seq: int
    writes: list[ShardWrite]
    nearest: np.ndarray
    inserting: np.ndarray
    target: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The batch as named arrays, in a fixed order (see the module's docstring); the
        writer id, ``seq`` and the number of shards are the caller's to store."""
        arrays = {"batch.nearest": self.nearest, "batch.inserting": self.inserting,
                  "batch.target": self.target}
        for s, write in enumerate(self.writes):
            arrays.update({f"write{s}.{name}": getattr(write, name) for name in WRITE_ARRAYS})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], writer: str, seq: int,
                    shards: int) -> "UpdateBatch":
        """The batch ``to_arrays`` encoded, for ``shards`` shards, its writes by ``writer``
        under sequence number ``seq``.

        Raises:
            KeyError: an array is missing.
        """
        writes = [ShardWrite(writer=writer, seq=seq,
                             **{name: arrays[f"write{s}.{name}"] for name in WRITE_ARRAYS})
                  for s in range(shards)]
        return cls(seq=seq, writes=writes, nearest=arrays["batch.nearest"],
                   inserting=arrays["batch.inserting"], target=arrays["batch.target"])
