"""The stream job's commit record: what makes a restart lose and repeat nothing.

One record per stream job, replaced atomically after every micro-batch (write to a temporary
name, sync, rename). It holds the read offset *after* the batch, the batch's sequence number,
the batch's planned per-shard writes, and the prequential counts including the batch. The job
persists it **before** it sends the writes; the shards apply each (writer, seq) once. So after a
crash at any point the restarted job loads the record, sends its writes again (shards that
applied them answer from memory, the others apply them now) and goes on from its offset: every
example is applied exactly once and counted exactly once.

A record may instead name a segment to quarantine (the offset already past it); a restart
repeats the copy. The file is an ``.npz`` of plain arrays (no pickle) plus a JSON header.
"""

from __future__ import annotations

import io
import json

from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from lifelong.distributed.batches import UpdateBatch
from lifelong.distributed.storage import filesystem
from lifelong.errors import CorruptStateError
from lifelong.files import publish
from lifelong.streaming.stats import StreamStats

RECORD = "commit.npz"
FORMAT_VERSION = 1


@dataclass
class CommitRecord:
    """Where a stream job stands.

    Attributes:
        writer: the job's writer id at the memory.
        seq: the last batch number it planned (0: none).
        segment, row: the next example to read (segment number, row in it).
        stats: prequential counts up to and including batch ``seq``.
        batch: the writes of batch ``seq`` (None when the last action was not a write).
        quarantine: (segment, reason, {bad row: reason}) when the last action set a segment
            (or some of its rows: then the dict is not empty) aside.
        run_id: the MLflow run the job logs into.
        meta: small JSON-able facts (memory name, payload format, ...).
    """

    writer: str
    seq: int
    segment: int
    row: int
    stats: StreamStats
    batch: UpdateBatch | None = None
    quarantine: tuple[int, str, dict] | None = None
    run_id: str | None = None
    meta: dict = field(default_factory=dict)

    # ---------------------------------------------------------------------------- encoding
    def to_bytes(self) -> bytes:
        quarantine = self.quarantine and [self.quarantine[0], self.quarantine[1],
                                          {str(k): v for k, v in self.quarantine[2].items()}]
        header = {"format_version": FORMAT_VERSION, "writer": self.writer, "seq": self.seq,
                  "segment": self.segment, "row": self.row, "quarantine": quarantine,
                  "run_id": self.run_id, "meta": self.meta,
                  "shards": len(self.batch.writes) if self.batch is not None else None}
        arrays = self.stats.to_arrays()
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        if self.batch is not None:
            arrays.update(self.batch.to_arrays())
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, path: str = "commit record") -> "CommitRecord":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            header = json.loads(arrays["header"].tobytes().decode())
            if header.get("format_version") != FORMAT_VERSION:
                raise CorruptStateError(f"{path}: commit record format "
                                        f"{header.get('format_version')}, expected "
                                        f"{FORMAT_VERSION}")
            batch = None
            if header["shards"] is not None:
                batch = UpdateBatch.from_arrays(arrays, writer=header["writer"],
                                                seq=header["seq"], shards=header["shards"])
            quarantine = None
            if header["quarantine"]:
                number, reason, rows = header["quarantine"]
                quarantine = (number, reason, {int(k): v for k, v in rows.items()})
            return cls(writer=header["writer"], seq=header["seq"], segment=header["segment"],
                       row=header["row"], stats=StreamStats.from_arrays(arrays), batch=batch,
                       quarantine=quarantine, run_id=header["run_id"], meta=header["meta"])
        except CorruptStateError:
            raise
        except Exception as exc:  # zip, JSON or missing-array errors: a damaged record
            raise CorruptStateError(f"{path}: unreadable commit record ({exc})") from None


class CommitStore:
    """The commit record of one stream job at ``location`` (a folder or pyarrow URI)."""

    def __init__(self, location: str):
        self.fs, self.dir = filesystem(location)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.path = f"{self.dir}/{RECORD}"
        self.fs.create_dir(self.dir, recursive=True)

    def load(self) -> CommitRecord | None:
        """The last committed record, or None for a new job."""
        if self.fs.get_file_info(self.path).type == pafs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(self.path) as fh:
            return CommitRecord.from_bytes(fh.read(), self.path)

    def save(self, record: CommitRecord) -> None:
        """Replaces the record atomically and durably (synced before this returns)."""
        data = record.to_bytes()
        tmp = f"{self.dir}/.{RECORD}.tmp"
        if self.local:
            publish(self.path, data)  # synced, renamed into place, folder synced
        else:  # object stores put whole objects
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, self.path)
