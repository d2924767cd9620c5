"""An endless source of examples: a directory (or pyarrow filesystem URI) of numbered Parquet
segments, ``segment-000000000042.parquet``, read in number order as they appear.

A segment's rows are examples: ``payload`` (bytes, decoded by the segment's payload format),
``label`` (int64), ``event_time`` (UTC microseconds) and ``source_id`` (string). The payload
format is stored in the file's schema metadata, so any encoder can use the same stream:

- ``uint8[H,W]``: an image, H*W bytes (Omniglot);
- ``float32[D]``: a feature vector, 4*D bytes, little-endian (NaN and Inf are rejected);
- ``utf-8``: text (a sentence for the translator).

A segment is written to a temporary name and moved into place, so a reader never sees half a
segment on a local filesystem (object stores put whole objects). A segment that cannot be read,
has another schema or holds bad payloads raises ``CorruptSegmentError`` naming the file and the
reason; the stream job copies it to a quarantine location (``quarantine``) and goes on. An I/O
error reading the file is retried a few times with backoff and then raised as it is (the job
stops and resumes later): a good segment is never quarantined for a transient fault. A segment
number is written once: ``write_segment`` refuses an existing one (``SegmentExistsError``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lifelong.distributed.storage import filesystem
from lifelong.errors import ConfigError, CorruptSegmentError, SegmentExistsError
from lifelong.files import publish

SEGMENT_PATTERN = re.compile(r"^segment-(\d{12})\.parquet$")
FORMAT_KEY = b"lifelong.payload_format"
SCHEMA = pa.schema([
    pa.field("payload", pa.binary(), nullable=False),
    pa.field("label", pa.int64(), nullable=False),
    pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("source_id", pa.string(), nullable=False),
])
_FORMAT = re.compile(r"^(uint8|float32)\[(\d+(?:,\d+)*)\]$|^utf-8$")


def segment_name(number: int) -> str:
    """``segment-<12 digits>.parquet``."""
    if not 0 <= number < 10**12:
        raise ConfigError(f"segment number {number} out of range")
    return f"segment-{number:012d}.parquet"


def check_format(payload_format: str) -> tuple[str, tuple[int, ...]]:
    """(dtype, shape) of a payload format; ``("utf-8", ())`` for text."""
    match = _FORMAT.match(payload_format)
    if not match:
        raise ConfigError(f"payload format must be uint8[...], float32[...] or utf-8, "
                          f"got {payload_format!r}")
    if payload_format == "utf-8":
        return "utf-8", ()
    return match.group(1), tuple(int(n) for n in match.group(2).split(","))


def vector_size(payload_format: str) -> int:
    """D of a ``float32[D]`` format: the key size of a memory its payloads are written into
    as they are.

    Raises:
        ConfigError: another format (its payloads need an encoder to become keys).
    """
    dtype, shape = check_format(payload_format)
    if dtype != "float32" or len(shape) != 1:
        raise ConfigError(f"{payload_format} payloads need an encoder: "
                          "encoder.checkpoint=PATH or encoder.run_id=ID")
    return shape[0]


@dataclass(frozen=True, eq=False)
class Segment:
    """The decoded rows of one segment.

    Attributes:
        number: The segment's number.
        payloads: [R, *shape] uint8/float32 array, or a list of R strings for utf-8.
        labels: [R] int64.
        event_times: [R] int64 microseconds since the epoch (UTC).
        source_ids: [R] object array of str.
        payload_format: As in the file.
        dropped: Rows of the file left out (read with ``bad_rows="drop"``): row -> reason.
    """

    number: int
    payloads: np.ndarray | list[str]
    labels: np.ndarray
    event_times: np.ndarray
    source_ids: np.ndarray
    payload_format: str
    dropped: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def without(self, bad: dict[int, str]) -> "Segment":
        """The segment less the rows ``bad`` (positions in this segment -> reason); their file
        rows join ``dropped``."""
        if not bad:
            return self
        keep = np.setdiff1d(np.arange(len(self)), np.fromiter(bad, np.int64))
        file_rows = np.setdiff1d(np.arange(len(self) + len(self.dropped)),
                                 np.fromiter(self.dropped, np.int64))  # file row of each row
        payloads = ([self.payloads[i] for i in keep] if isinstance(self.payloads, list)
                    else self.payloads[keep])
        dropped = {**self.dropped, **{int(file_rows[i]): why for i, why in bad.items()}}
        return Segment(number=self.number, payloads=payloads, labels=self.labels[keep],
                       event_times=self.event_times[keep], source_ids=self.source_ids[keep],
                       payload_format=self.payload_format, dropped=dict(sorted(dropped.items())))


def encode_payloads(payloads, payload_format: str) -> list[bytes]:
    """Rows of an array [R, *shape] (or R strings) as the format's bytes."""
    dtype, shape = check_format(payload_format)
    if dtype == "utf-8":
        return [str(p).encode("utf-8") for p in payloads]
    array = np.asarray(payloads)
    if array.dtype != np.dtype(dtype) or array.shape[1:] != shape:
        raise ConfigError(f"payloads must be {dtype} [R, {shape}], got {array.dtype} "
                          f"{array.shape}")
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return [row.tobytes() for row in array]


def write_segment(location: str, number: int, payloads, labels, source_id: str,
                  payload_format: str, event_times: np.ndarray | None = None) -> str:
    """Writes segment ``number`` at ``location`` (a folder or URI); returns its path.

    Args:
        payloads: [R, *shape] array of the format's dtype, or R strings for utf-8.
        labels: [R] integer labels.
        source_id: Who produced the rows.
        event_times: [R] int64 microseconds since the epoch (default: now).

    Raises:
        SegmentExistsError: segment ``number`` is already there (nothing is written).
    """
    fs, base = filesystem(location)
    if fs.get_file_info(f"{base}/{segment_name(number)}").type != pafs.FileType.NotFound:
        raise SegmentExistsError(f"{base}/{segment_name(number)} exists; a segment is never "
                                 "replaced (readers may have read it)")
    rows = encode_payloads(payloads, payload_format)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(rows),):
        raise ConfigError(f"labels must be [{len(rows)}], got {labels.shape}")
    if event_times is None:
        event_times = np.full(len(rows), int(time.time() * 1e6), np.int64)
    table = pa.table({"payload": pa.array(rows, pa.binary()), "label": labels,
                      "event_time": pa.array(event_times, pa.timestamp("us", tz="UTC")),
                      "source_id": pa.array([source_id] * len(rows), pa.string())},
                     schema=SCHEMA.with_metadata({FORMAT_KEY: payload_format.encode()}))
    fs.create_dir(base, recursive=True)
    path = f"{base}/{segment_name(number)}"
    if isinstance(fs, pafs.LocalFileSystem):  # synced, linked into place only if still new
        try:
            publish(path, lambda tmp: pq.write_table(table, tmp, write_page_checksum=True),
                    exclusive=True)
        except FileExistsError:
            raise SegmentExistsError(f"{path} exists; a segment is never replaced (readers "
                                     "may have read it)") from None
        return path
    tmp = f"{base}/.{segment_name(number)}.tmp"  # object stores put whole objects durably
    pq.write_table(table, tmp, filesystem=fs, write_page_checksum=True)
    fs.move(tmp, path)
    return path


def list_segments(location: str, after: int = -1) -> list[tuple[int, str]]:
    """(number, path) of the segments numbered above ``after``, in number order."""
    fs, base = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    found = []
    for info in infos:
        match = SEGMENT_PATTERN.match(info.base_name)
        if match and info.type == pafs.FileType.File and int(match.group(1)) > after:
            found.append((int(match.group(1)), info.path))
    return sorted(found)


def read_segment(location: str, number: int, payload_format: str | None = None,
                 bad_rows: str = "raise") -> Segment:
    """Reads and checks segment ``number``.

    Args:
        payload_format: The format the reader expects (None: whatever the file says).
        bad_rows: What a readable segment's bad rows (a payload of the wrong size, NaN/Inf,
            invalid UTF-8) do: "raise" CorruptSegmentError, or "drop" them (listed in
            ``Segment.dropped`` with their reason).

    Raises:
        CorruptSegmentError: unreadable or truncated content, another schema or payload
            format, or (with bad_rows="raise") bad rows.
        OSError: the file could not be read (``READ_ATTEMPTS`` tries): a transient fault,
            not bad content, so the segment is not quarantined.
    """
    if bad_rows not in ("raise", "drop"):
        raise ConfigError(f"bad_rows must be 'raise' or 'drop', got {bad_rows!r}")
    fs, base = filesystem(location)
    path = f"{base}/{segment_name(number)}"
    data = _read_bytes(fs, path)  # I/O errors: retried, then raised as they are
    try:  # the bytes are in hand: whatever fails now is the content
        table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
    except (OSError, pa.ArrowException) as exc:
        raise CorruptSegmentError(f"{path}: unreadable segment ({exc})") from None
    if not table.schema.remove_metadata().equals(SCHEMA):
        raise CorruptSegmentError(f"{path}: schema {table.schema.remove_metadata()} is not "
                                  f"the stream schema {SCHEMA}")
    found = (table.schema.metadata or {}).get(FORMAT_KEY, b"").decode()
    if payload_format is not None and found != payload_format:
        raise CorruptSegmentError(f"{path}: payload format {found!r}, expected "
                                  f"{payload_format!r}")
    try:
        dtype, shape = check_format(found)
    except ConfigError as exc:
        raise CorruptSegmentError(f"{path}: {exc}") from None
    payloads, bad = _decode(table.column("payload"), dtype, shape)
    if bad and bad_rows == "raise":
        first = min(bad)
        raise CorruptSegmentError(f"{path}: {len(bad)} bad rows (first: row {first}, "
                                  f"{bad[first]})")
    segment = Segment(number=number, payloads=payloads,
                      labels=table.column("label").to_numpy(),
                      event_times=table.column("event_time").cast(pa.int64()).to_numpy(),
                      source_ids=np.asarray(table.column("source_id").to_pylist(), dtype=object),
                      payload_format=found)
    return segment.without(bad)


READ_ATTEMPTS = 4        # reads of a segment file before an I/O error is given up on
READ_BACKOFF_S = 0.05    # doubled after each failed attempt


def _read_bytes(fs, path: str) -> bytes:
    """The file's bytes; an ``OSError`` (EIO, a network blip) is retried with backoff."""
    for attempt in range(READ_ATTEMPTS):
        try:
            with fs.open_input_file(path) as fh:
                return fh.read()
        except FileNotFoundError:  # gone since it was listed: nothing to read, as before
            raise CorruptSegmentError(f"{path}: unreadable segment (no such file)") from None
        except OSError:
            if attempt == READ_ATTEMPTS - 1:
                raise
            time.sleep(READ_BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")


def _decode(column: pa.ChunkedArray, dtype: str, shape: tuple[int, ...]):
    """(payloads of every row, {row: why it is bad}); a bad row decodes as zeros / ""."""
    rows = column.to_pylist()
    bad: dict[int, str] = {}
    if dtype == "utf-8":
        texts = []
        for i, row in enumerate(rows):
            try:
                texts.append(row.decode("utf-8"))
            except UnicodeDecodeError as exc:
                bad[i] = f"payload is not UTF-8 ({exc.reason})"
                texts.append("")
        return texts, bad
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    for i, row in enumerate(rows):
        if len(row) != size:
            bad[i] = f"payload of {len(row)} bytes, not {size}"
    blank = bytes(size)
    data = b"".join(blank if i in bad else row for i, row in enumerate(rows))
    array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
    array = array.astype(dtype).reshape(len(rows), *shape)
    if dtype == "float32":
        finite = np.isfinite(array.reshape(len(rows), -1)).all(axis=1)
        for i in np.flatnonzero(~finite):
            bad[int(i)] = "payload holds NaN or Inf"
    return array, dict(sorted(bad.items()))


def quarantine(location: str, number: int, reason: str, quarantine_location: str,
               rows: dict[int, str] | None = None) -> str:
    """Copies segment ``number`` to the quarantine location, with ``<name>.reason.json`` beside
    it (the reason, and the bad rows with theirs when only some rows were set aside); returns
    the copy's path. The source is left as it is (a reader never deletes its
    input: another job may read it, and a producer numbers on after the last segment there).
    Repeating it is harmless, also once the source is gone."""
    fs, base = filesystem(location)
    qfs, qbase = filesystem(quarantine_location)
    qfs.create_dir(qbase, recursive=True)
    name = segment_name(number)
    target = f"{qbase}/{name}"
    if fs.get_file_info(f"{base}/{name}").type == pafs.FileType.File:
        pafs.copy_files(f"{base}/{name}", target, source_filesystem=fs,
                        destination_filesystem=qfs)
    with qfs.open_output_stream(f"{target}.reason.json") as out:
        out.write(json.dumps({"segment": number, "reason": reason, "source": location,
                              "rows": {str(r): why for r, why in (rows or {}).items()},
                              "quarantined_at": time.time()}).encode())
    return target
