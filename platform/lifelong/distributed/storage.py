"""Durable state of one memory shard: Parquet snapshots plus an update log (no pickle).

Layout under the memory's location (a local path or any pyarrow filesystem URI)::

    <memory>/memory.json                       the MemorySpec
    <memory>/shard-003/snapshot-00000002.parquet   state after every update before generation 2
    <memory>/shard-003/log-00000002.bin        the updates applied since that snapshot

A snapshot is one Parquet table (slot, key, value, write_time) plus the shard's clock, recent
slots and per-writer last sequence numbers as JSON in its metadata; it is written under a
temporary name and moved into place, so a crash leaves either the old or the new one.

A log is a sequence of frames ``b"LLOG" | uint32 length | uint32 crc32 | payload``, the payload an
Arrow IPC stream holding one record batch: the rows a shard update wrote, with the update's
writer id, sequence number and clock in its schema metadata. A frame is written with one write
call and synced before the update is acknowledged. On a local path the log is one append-only
file; on filesystems without appends (object stores) each frame is its own object under
``log-<generation>/``. A frame that fails its checksum, a truncated frame or an unreadable
snapshot raises CorruptStateError naming the file: the shard refuses to start rather than drop
data it acknowledged.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lifelong.errors import CorruptStateError

_MAGIC = b"LLOG"
_HEADER = struct.Struct("<4sII")


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a pyarrow filesystem URI."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


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

    def to_bytes(self) -> bytes:
        d = self.keys.shape[1]
        rows = len(self.slots)
        recent = len(self.recent_labels)
        n = max(rows, recent)

        def pad(a):
            out = np.zeros(n, dtype=np.int64)
            out[: len(a)] = a
            return out

        keys = np.zeros((n, d), dtype=np.float32)
        keys[:rows] = self.keys
        batch = pa.record_batch({
            "slot": pad(self.slots),
            "key": _key_column(keys),
            "value": pad(self.values),
            "recent_label": pad(self.recent_labels),
            "recent_slot": pad(self.recent_slots),
            "recent_position": pad(self.recent_positions),
        }).replace_schema_metadata({"lifelong": json.dumps({
            "writer": self.writer, "seq": self.seq, "clock": self.clock, "rows": rows,
            "recent": recent, "inserted": [int(s) for s in self.inserted],
            "digest": self.digest})})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        return sink.getvalue().to_pybytes()

    @classmethod
    def from_bytes(cls, payload: bytes) -> "Update":
        batch = pa.ipc.open_stream(payload).read_next_batch()
        meta = json.loads(batch.schema.metadata[b"lifelong"])
        rows, recent = meta["rows"], meta["recent"]
        col = lambda name, n: batch.column(name).to_numpy()[:n].astype(np.int64)  # noqa: E731
        return cls(writer=meta["writer"], seq=meta["seq"], clock=meta["clock"],
                   slots=col("slot", rows), keys=_keys_from(batch.column("key"))[:rows],
                   values=col("value", rows), recent_labels=col("recent_label", recent),
                   recent_slots=col("recent_slot", recent),
                   recent_positions=col("recent_position", recent),
                   inserted=np.asarray(meta["inserted"], dtype=np.int64),
                   digest=meta.get("digest"))


def _key_column(keys: np.ndarray) -> pa.FixedSizeListArray:
    """keys [n, d] float32 as an Arrow column of fixed-size lists."""
    return pa.FixedSizeListArray.from_arrays(pa.array(keys.reshape(-1)), keys.shape[1])


def _keys_from(column) -> np.ndarray:
    """The inverse of ``_key_column`` (a writable copy): [n, d] float32."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.values.to_numpy(zero_copy_only=False)
    return np.array(flat.reshape(-1, column.type.list_size), dtype=np.float32)


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _read_frames(data: bytes, path: str) -> Iterator[bytes]:
    offset, index = 0, 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            raise CorruptStateError(f"{path}: truncated frame header at byte {offset} "
                                    f"(frame {index})")
        magic, length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        payload = data[start:start + length]
        if magic != _MAGIC:
            raise CorruptStateError(f"{path}: bad frame marker at byte {offset} (frame {index})")
        if len(payload) != length:
            raise CorruptStateError(f"{path}: frame {index} at byte {offset} is truncated")
        if zlib.crc32(payload) != crc:
            raise CorruptStateError(f"{path}: frame {index} at byte {offset} fails its checksum")
        yield payload
        offset, index = start + length, index + 1


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
    writers: dict[str, list]  # writer -> [last seq, inserted slots of that batch, digest]


class ShardStore:
    """Snapshots and update log of shard ``index`` of the memory at ``location``."""

    def __init__(self, location: str, index: int):
        self.fs, base = filesystem(location)
        self.dir = f"{base}/shard-{index:03d}"
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.fs.create_dir(self.dir, recursive=True)
        self._log = None  # open local log file
        self.generation = 0
        self._frames = 0  # frames in the current object-store log

    # ------------------------------------------------------------------------------ reading
    def _generations(self) -> list[int]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.dir))
        gens = [int(i.base_name[len("snapshot-"):-len(".parquet")]) for i in infos
                if i.base_name.startswith("snapshot-") and i.base_name.endswith(".parquet")]
        return sorted(gens)

    def load(self) -> tuple[Snapshot | None, list[Update]]:
        """The newest snapshot (None before the first) and the updates logged after it."""
        gens = self._generations()
        self.generation = gens[-1] if gens else 0
        snapshot = self._read_snapshot(self.generation) if gens else None
        updates = list(self._read_log(self.generation))
        self._drop_leftovers()
        return snapshot, updates

    def _drop_leftovers(self) -> None:
        """Deletes what a crash during a snapshot may leave: a partial temporary file and the
        superseded generation (its snapshot and log are older than the current snapshot)."""
        old = set()
        for info in self.fs.get_file_info(pafs.FileSelector(self.dir)):
            name = info.base_name
            if name.endswith(".tmp"):
                self.fs.delete_file(info.path)
            elif name.startswith(("snapshot-", "log-")):
                old.add(int(name.split("-")[1].split(".")[0]))
        for gen in sorted(g for g in old if g < self.generation):
            self._delete_generation(gen)

    def _read_snapshot(self, gen: int) -> Snapshot:
        path = f"{self.dir}/snapshot-{gen:08d}.parquet"
        try:
            with self.fs.open_input_file(path) as fh:
                table = pq.read_table(fh, page_checksum_verification=True)
            meta = json.loads(table.schema.metadata[b"lifelong"])
            return Snapshot(
                keys=_keys_from(table.column("key")),
                values=table.column("value").to_numpy().astype(np.int64),
                write_time=table.column("write_time").to_numpy().astype(np.int64),
                clock=int(meta["clock"]),
                recent_slots=np.asarray(meta["recent_slots"], dtype=np.int64),
                recent_clock=np.asarray(meta["recent_clock"], dtype=np.int64),
                recent_position=np.asarray(meta["recent_position"], dtype=np.int64),
                writers=meta["writers"])
        except CorruptStateError:
            raise
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise CorruptStateError(f"{path}: unreadable snapshot ({exc})") from None

    def _read_log(self, gen: int) -> Iterator[Update]:
        if self.local:
            path = f"{self.dir}/log-{gen:08d}.bin"
            if not os.path.exists(path):
                return
            with open(path, "rb") as fh:
                data = fh.read()
            frames = [(path, p) for p in _read_frames(data, path)]
        else:
            folder = f"{self.dir}/log-{gen:08d}"
            infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            frames = []
            for info in sorted(infos, key=lambda i: i.base_name):
                with self.fs.open_input_stream(info.path) as fh:
                    frames += [(info.path, p) for p in _read_frames(fh.read(), info.path)]
            self._frames = len(infos)
        for path, payload in frames:
            try:
                yield Update.from_bytes(payload)
            except Exception as exc:
                raise CorruptStateError(f"{path}: undecodable update ({exc})") from None

    # ------------------------------------------------------------------------------ writing
    def append(self, update: Update) -> None:
        """Logs one update durably (synced) before it is acknowledged."""
        frame = _frame(update.to_bytes())
        if self.local:
            if self._log is None:
                self._log = open(f"{self.dir}/log-{self.generation:08d}.bin", "ab")
            self._log.write(frame)
            self._log.flush()
            os.fsync(self._log.fileno())
        else:
            folder = f"{self.dir}/log-{self.generation:08d}"
            if self._frames == 0:
                self.fs.create_dir(folder, recursive=True)
            path = f"{folder}/{self._frames:012d}.bin"
            with self.fs.open_output_stream(path) as fh:
                fh.write(frame)
            self._frames += 1

    def write_snapshot(self, snapshot: Snapshot) -> None:
        """Writes the state as the next generation, then drops the older files."""
        gen = self.generation + 1
        table = pa.table({
            "slot": np.arange(len(snapshot.values), dtype=np.int64),
            "key": _key_column(snapshot.keys),
            "value": snapshot.values,
            "write_time": snapshot.write_time,
        }).replace_schema_metadata({"lifelong": json.dumps({
            "clock": snapshot.clock, "recent_slots": snapshot.recent_slots.tolist(),
            "recent_clock": snapshot.recent_clock.tolist(),
            "recent_position": snapshot.recent_position.tolist(),
            "writers": snapshot.writers})})
        final = f"{self.dir}/snapshot-{gen:08d}.parquet"
        tmp = final + ".tmp"
        with self.fs.open_output_stream(tmp) as fh:
            pq.write_table(table, fh, write_page_checksum=True)
        if self.local:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        self.fs.move(tmp, final)
        if self._log is not None:
            self._log.close()
            self._log = None
        old = self.generation
        self.generation, self._frames = gen, 0
        self._delete_generation(old)

    def _delete_generation(self, gen: int) -> None:
        for path in (f"{self.dir}/snapshot-{gen:08d}.parquet", f"{self.dir}/log-{gen:08d}.bin"):
            if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
                self.fs.delete_file(path)
        folder = f"{self.dir}/log-{gen:08d}"
        if self.fs.get_file_info(folder).type == pafs.FileType.Directory:
            self.fs.delete_dir(folder)
