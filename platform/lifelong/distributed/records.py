"""What a shard's files hold, as bytes and back: update log records and frames, snapshots.

``Update`` is the effect of one applied update batch (one log frame's payload: a ``wire`` frame
of named arrays; logs written before that format hold Arrow IPC streams, which are still read);
``Snapshot`` is a shard's full state (one Parquet table). Both check their contents against the
shard they are loaded into (``check``): a crafted file with valid checksums is refused too. A
frame is ``b"LLOG" | uint32 length | uint32 crc32 | payload``. No pickle.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from lifelong.distributed import wire
from lifelong.errors import CorruptStateError, MemoryStateError

MAGIC = b"LLOG"
HEADER = struct.Struct("<4sII")


@dataclass
class Update:
    """The effect of one applied update batch on one shard: what a log frame holds.

    Attributes:
        writer: the writing client's id; seq: its batch sequence number.
        clock: the shard's clock after the update (the written slots' write time).
        slots: [W] local slot ids written (refreshed or inserted), distinct.
        keys: [W, d] float32 their new keys; values: [W] int64 their values.
        recent_labels, recent_slots, recent_positions: [R] the labels written, the local slot
            each went to and its position in the batch (for the most-recent-slot table).
        inserted: [I] local slots of the inserts, in the order of the batch's inserts.
    """

    writer: str
    seq: int
    clock: int
    slots: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    recent_labels: np.ndarray
    recent_slots: np.ndarray
    recent_positions: np.ndarray
    inserted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    digest: str | None = None  # fingerprint of the batch (``ShardWrite.digest``)
    source: str | None = None  # the log file it was read from (not stored)

    def check(self, size: int, key_dim: int, num_values: int, clock: int) -> None:
        """Raises MemoryStateError unless the update fits a shard of ``size`` slots whose
        clock is ``clock`` before it: distinct slots in range, finite keys [W, key_dim],
        values and recent labels in [0, num_values), recent slots in range, a later clock."""
        w = len(self.slots)
        if self.keys.shape != (w, key_dim) or self.values.shape != (w,):
            raise MemoryStateError(f"an update of {w} slots needs keys [{w}, {key_dim}]")
        if w and (self.slots.min() < 0 or self.slots.max() >= size or
                  len(np.unique(self.slots)) != w):
            raise MemoryStateError(f"slots must be distinct and lie in [0, {size})")
        if not np.isfinite(self.keys).all():
            raise MemoryStateError("keys hold NaN or Inf")
        for name, array in (("values", self.values), ("recent labels", self.recent_labels)):
            if len(array) and (array.min() < 0 or array.max() >= num_values):
                raise MemoryStateError(f"{name} must lie in [0, {num_values})")
        r = len(self.recent_labels)
        if self.recent_slots.shape != (r,) or self.recent_positions.shape != (r,) or \
                (r and (self.recent_slots.min() < 0 or self.recent_slots.max() >= size or
                        self.recent_positions.min() < 0)):
            raise MemoryStateError(f"recent slots must lie in [0, {size}), positions >= 0")
        if len(self.inserted) and (self.inserted.min() < -1 or self.inserted.max() >= size):
            raise MemoryStateError(f"inserted slots must lie in [-1, {size})")
        if not _is_int(self.clock) or self.clock <= clock:
            raise MemoryStateError(f"clock {self.clock} does not follow the shard's {clock}")
        if not isinstance(self.writer, str) or not self.writer or not _is_int(self.seq) or \
                self.seq < 1:
            raise MemoryStateError("an update needs a writer id and a batch number >= 1")

    def to_bytes(self) -> bytes:
        """The update as one ``wire`` frame (op ``update``): the scalars as fields, the
        arrays raw. No Arrow here: this is on every update's path, where an Arrow IPC stream
        with its schema cost about 2.5 times as much (docs/design.md §3.6)."""
        fields = {"writer": self.writer, "seq": int(self.seq), "clock": int(self.clock),
                  "digest": self.digest}
        arrays = {name: np.ascontiguousarray(getattr(self, name), dtype=dtype)
                  for name, dtype in _UPDATE_ARRAYS.items()}
        return b"".join(wire.encode("update", fields, arrays))

    @classmethod
    def from_bytes(cls, payload: bytes) -> "Update":
        """The update ``to_bytes`` encoded, or one of the Arrow IPC payloads that logs written
        before held (read, never written). Shapes and ranges are for ``check``.

        Raises:
            ProtocolError, ValueError: the payload is not an update record.
        """
        if payload[:len(wire.MAGIC)] != wire.MAGIC:
            return cls._from_arrow(payload)
        op, fields, arrays = wire.parse_frame(payload)
        if op != "update" or set(arrays) != set(_UPDATE_ARRAYS):
            raise ValueError(f"not an update record (op {op!r}, arrays {sorted(arrays)})")
        for name, dtype in _UPDATE_ARRAYS.items():
            if arrays[name].dtype != dtype:
                raise ValueError(f"update array {name!r} is {arrays[name].dtype}, not {dtype}")
        digest = fields.get("digest")
        if digest is not None and not isinstance(digest, str):
            raise ValueError("an update's digest must be a str")
        return cls(writer=fields.get("writer"), seq=fields.get("seq"),
                   clock=fields.get("clock"), digest=digest, **arrays)

    @classmethod
    def _from_arrow(cls, payload: bytes) -> "Update":
        """An update as logs before the frame format held it: an Arrow IPC stream of one
        record batch (columns slot, key, value, recent_*), the scalars in its metadata."""
        batch = pa.ipc.open_stream(payload).read_next_batch()
        meta = json.loads(batch.schema.metadata[b"lifelong"])
        rows, recent = meta["rows"], meta["recent"]
        col = lambda name, n: batch.column(name).to_numpy()[:n].astype(np.int64)  # noqa: E731
        return cls(writer=meta["writer"], seq=meta["seq"], clock=meta["clock"],
                   slots=col("slot", rows), keys=keys_from(batch.column("key"))[:rows],
                   values=col("value", rows), recent_labels=col("recent_label", recent),
                   recent_slots=col("recent_slot", recent),
                   recent_positions=col("recent_position", recent),
                   inserted=np.asarray(meta["inserted"], dtype=np.int64),
                   digest=meta.get("digest"))


# The arrays of an update record and their dtypes (``Update.to_bytes``).
_UPDATE_ARRAYS = {name: np.dtype(np.float32 if name == "keys" else np.int64)
                  for name in ("slots", "keys", "values", "recent_labels", "recent_slots",
                               "recent_positions", "inserted")}


def key_column(keys: np.ndarray) -> pa.FixedSizeListArray:
    """keys [n, d] float32 as an Arrow column of fixed-size lists."""
    return pa.FixedSizeListArray.from_arrays(pa.array(keys.reshape(-1)), keys.shape[1])


def keys_from(column) -> np.ndarray:
    """The inverse of ``_key_column`` (a writable copy): [n, d] float32, copied chunk by chunk
    into one array (one copy beside the table: a restoring shard of millions of slots holds
    the table, this array and its own slots at once)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = np.empty((sum(len(c) for c in chunks), column.type.list_size), dtype=np.float32)
    row = 0
    for chunk in chunks:
        flat = chunk.flatten().to_numpy(zero_copy_only=False)  # the chunk's own rows
        out[row:row + len(chunk)] = flat.reshape(len(chunk), out.shape[1])
        row += len(chunk)
    return out


def encode_frame(payload: bytes) -> bytes:
    """One log frame: marker, length, checksum, payload."""
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_frames(data: bytes, path: str, last: bool) -> tuple[list[bytes], int]:
    """The payloads of the frames in ``data`` and the byte length they fill.

    An incomplete frame at the end of the newest log (``last``: a crash during its append,
    never acknowledged) ends the list; its bytes are left out of the length. Anything else
    that is not a whole frame with its checksum raises CorruptStateError naming ``path``.
    """
    offset, index, payloads = 0, 0, []
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            if last:
                break  # a torn header
            raise CorruptStateError(f"{path}: truncated frame header at byte {offset} "
                                    f"(frame {index})")
        magic, length, crc = HEADER.unpack_from(data, offset)
        if magic != MAGIC:
            if last and not any(data[offset:]):
                break  # a tail of zeros: space the crash allocated but never wrote
            raise CorruptStateError(f"{path}: bad frame marker at byte {offset} (frame {index})")
        start = offset + HEADER.size
        payload = data[start:start + length]
        if len(payload) != length:
            if last:
                break
            raise CorruptStateError(f"{path}: frame {index} at byte {offset} is truncated")
        if zlib.crc32(payload) != crc:
            raise CorruptStateError(f"{path}: frame {index} at byte {offset} fails its checksum")
        payloads.append(payload)
        offset, index = start + length, index + 1
    return payloads, offset


@dataclass
class Snapshot:
    """A shard's full state at one generation."""

    keys: np.ndarray          # [n, d] float32
    values: np.ndarray        # [n] int64
    write_time: np.ndarray    # [n] int64
    clock: int
    recent_slots: np.ndarray  # [V] int64, local slot or -1
    recent_clock: np.ndarray  # [V] int64
    recent_position: np.ndarray  # [V] int64
    writers: dict[str, list]  # writer -> [last seq, inserted slots, digest, clock]
    # The search index at this state (``IVFSearch.export_state``, checksummed), kept in a file
    # of its own beside the snapshot (``index-<gen>.bin``); None: none (an exact search).
    index: bytes | None = None

    def to_table(self) -> pa.Table:
        """The snapshot as one Parquet-ready table, the scalars as JSON in its metadata."""
        return pa.table({
            "slot": np.arange(len(self.values), dtype=np.int64),
            "key": key_column(self.keys),
            "value": self.values,
            "write_time": self.write_time,
        }).replace_schema_metadata({"lifelong": json.dumps({
            "clock": self.clock, "recent_slots": self.recent_slots.tolist(),
            "recent_clock": self.recent_clock.tolist(),
            "recent_position": self.recent_position.tolist(),
            "writers": self.writers})})

    @classmethod
    def from_table(cls, table: pa.Table) -> "Snapshot":
        """The inverse of ``to_table`` (any damage raises; check the contents with ``check``)."""
        meta = json.loads(table.schema.metadata[b"lifelong"])
        return cls(keys=keys_from(table.column("key")),
                   values=table.column("value").to_numpy().astype(np.int64),
                   write_time=table.column("write_time").to_numpy().astype(np.int64),
                   clock=int(meta["clock"]),
                   recent_slots=np.asarray(meta["recent_slots"], dtype=np.int64),
                   recent_clock=np.asarray(meta["recent_clock"], dtype=np.int64),
                   recent_position=np.asarray(meta["recent_position"], dtype=np.int64),
                   writers=meta["writers"])

    def check(self, size: int, key_dim: int, num_values: int) -> None:
        """Raises MemoryStateError unless the contents fit a shard of ``size`` slots: keys
        [size, key_dim] finite, values in [-1, num_values), write times in [0, clock], the
        recent-slot table [num_values] in range and each writer entry well formed."""
        n, v, clock = size, num_values, self.clock
        if self.keys.shape != (n, key_dim) or self.values.shape != (n,) or \
                self.write_time.shape != (n,):
            raise MemoryStateError(f"slots must be keys [{n}, {key_dim}], values [{n}], "
                                   f"write times [{n}]")
        if not np.isfinite(self.keys).all():
            raise MemoryStateError("keys hold NaN or Inf")
        if n and (self.values.min() < -1 or self.values.max() >= v):
            raise MemoryStateError(f"values must lie in [-1, {v})")
        if clock < 0 or (n and (self.write_time.min() < 0 or self.write_time.max() > clock)):
            raise MemoryStateError(f"write times must lie in [0, clock = {clock}]")
        for name in ("recent_slots", "recent_clock", "recent_position"):
            if getattr(self, name).shape != (v,):
                raise MemoryStateError(f"{name} must be [{v}]")
        if v and (self.recent_slots.min() < -1 or self.recent_slots.max() >= n):
            raise MemoryStateError(f"recent slots must lie in [-1, {n})")
        if v and (self.recent_clock.min() < 0 or self.recent_clock.max() > clock or
                  self.recent_position.min() < 0):
            raise MemoryStateError("recent stamps must lie in [0, clock] and positions >= 0")
        if not isinstance(self.writers, dict):
            raise MemoryStateError("writers must be a table of writer -> last batch")
        for writer, last in self.writers.items():
            if not (isinstance(last, list) and len(last) >= 2 and _is_int(last[0]) and
                    last[0] >= 1 and isinstance(last[1], list) and
                    all(_is_int(s) and -1 <= s for s in last[1])):
                raise MemoryStateError(f"writer {writer!r} has a malformed entry")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
