"""Stream segments: round trip of every payload format, order, and typed errors for corrupt,
truncated, wrong-schema and NaN segments, which quarantine copies aside with their reason."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifelong.errors import ConfigError, CorruptSegmentError
from lifelong.streaming.segments import (list_segments, quarantine, read_segment, segment_name,
                                         write_segment)


def test_round_trip_of_each_payload_format(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_segment(str(tmp_path), 0, images, [1, 2, 3, 4, 5], "producer-a", "uint8[28,28]",
                  event_times=np.arange(5, dtype=np.int64))
    vectors = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    write_segment(str(tmp_path), 1, vectors, [0, 0, 1], "b", "float32[16]")
    write_segment(str(tmp_path), 2, ["ein Hund", "zwei Katzen"], [7, 8], "c", "utf-8")
    seg = read_segment(str(tmp_path), 0, "uint8[28,28]")
    assert np.array_equal(seg.payloads, images) and seg.labels.tolist() == [1, 2, 3, 4, 5]
    assert seg.event_times.tolist() == [0, 1, 2, 3, 4] and set(seg.source_ids) == {"producer-a"}
    assert np.array_equal(read_segment(str(tmp_path), 1).payloads, vectors)
    assert read_segment(str(tmp_path), 2).payloads == ["ein Hund", "zwei Katzen"]


def test_segments_are_listed_in_number_order_and_temporaries_are_ignored(tmp_path):
    for n in (10, 2, 7):
        write_segment(str(tmp_path), n, ["x"], [0], "s", "utf-8")
    (tmp_path / ".segment-000000000011.parquet.tmp").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("not a segment")
    assert [n for n, _ in list_segments(str(tmp_path))] == [2, 7, 10]
    assert [n for n, _ in list_segments(str(tmp_path), after=2)] == [7, 10]


def test_bad_segments_raise_typed_errors(tmp_path):
    loc = str(tmp_path)
    write_segment(loc, 0, np.zeros((4, 8), np.float32), [0, 1, 2, 3], "s", "float32[8]")
    data = (tmp_path / segment_name(0)).read_bytes()
    (tmp_path / segment_name(1)).write_bytes(data[: len(data) // 2])  # truncated
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    (tmp_path / segment_name(2)).write_bytes(bytes(flipped))  # a flipped byte
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / segment_name(3))  # another schema
    nan = np.zeros((2, 8), np.float32)
    nan[1, 3] = np.nan
    write_segment(loc, 4, nan, [0, 1], "s", "float32[8]")
    for number, reason in ((1, "unreadable"), (2, "unreadable|payloads"), (3, "schema"),
                           (4, "NaN")):
        with pytest.raises(CorruptSegmentError, match=reason):
            read_segment(loc, number, "float32[8]")
    with pytest.raises(CorruptSegmentError, match="payload format"):
        read_segment(loc, 0, "uint8[28,28]")
    with pytest.raises(ConfigError):
        write_segment(loc, 5, np.zeros((2, 3), np.float64), [0, 1], "s", "float32[3]")


def test_quarantine_copies_the_segment_with_its_reason_and_can_repeat(tmp_path):
    src, q = tmp_path / "stream", tmp_path / "quarantine"
    write_segment(str(src), 3, ["x"], [0], "s", "utf-8")
    original = (src / segment_name(3)).read_bytes()
    path = quarantine(str(src), 3, "wrong schema", str(q))
    assert [n for n, _ in list_segments(str(src))] == [3]  # the input is left alone
    assert (q / segment_name(3)).read_bytes() == original and path.endswith(segment_name(3))
    assert json.loads((q / (segment_name(3) + ".reason.json")).read_text())["reason"] == \
        "wrong schema"
    (src / segment_name(3)).unlink()  # a repeat after the source is gone keeps the copy
    quarantine(str(src), 3, "wrong schema", str(q))
    assert (q / segment_name(3)).read_bytes() == original


def test_produced_stream_is_long_tailed_and_continues_numbering(tmp_path):
    from lifelong.streaming.produce import OmniglotStream, ProduceSettings, produce

    images = np.random.default_rng(0).integers(0, 256, (30, 4, 12, 12), dtype=np.uint8)
    settings = ProduceSettings(examples=250, rows_per_segment=100, seed=3)
    paths = list(produce(str(tmp_path), images, settings, progress=False))
    assert [n for n, _ in list_segments(str(tmp_path))] == [0, 1, 2]
    list(produce(str(tmp_path), images, ProduceSettings(examples=10, seed=4), progress=False))
    assert [n for n, _ in list_segments(str(tmp_path))] == [0, 1, 2, 3]
    rows = [read_segment(str(tmp_path), n, "uint8[12,12]") for n in range(3)]
    labels = np.concatenate([s.labels for s in rows])
    assert len(paths) == 3 and len(labels) == 250 and labels.max() < 120  # 30 x 4 rotations
    counts = np.sort(np.bincount(labels, minlength=120))[::-1]
    assert counts[0] > 5 * max(counts[60], 1)  # long-tailed: the head is far above the middle
    # Equal seeds give equal streams; a class's first 4 appearances are its 4 real drawings.
    a, b = OmniglotStream(images, settings), OmniglotStream(images, settings)
    xa, ya = a.take(50)
    xb, yb = b.take(50)
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    rotated = np.concatenate([np.rot90(images, r, axes=(2, 3)) for r in range(4)])
    first = {}
    for x, y in zip(xa, ya):
        first.setdefault(int(y), []).append(x)
    for y, drawings in first.items():
        for x in drawings[:4]:
            assert any(np.array_equal(x, real) for real in rotated[y])


def test_bad_rows_can_be_dropped_with_their_reasons(tmp_path):
    loc = str(tmp_path)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    x[1, 2] = np.inf
    write_segment(loc, 0, x, [0, 1, 2, 3], "s", "float32[3]")
    with pytest.raises(CorruptSegmentError, match="1 bad rows .*row 1"):
        read_segment(loc, 0)
    seg = read_segment(loc, 0, bad_rows="drop")
    assert list(seg.labels) == [0, 2, 3] and np.array_equal(seg.payloads, x[[0, 2, 3]])
    assert list(seg.dropped) == [1] and "NaN or Inf" in seg.dropped[1]
    fewer = seg.without({1: "label out of range"})  # positions in seg: file row 2
    assert list(fewer.labels) == [0, 3] and sorted(fewer.dropped) == [1, 2]
    table = pq.read_table(tmp_path / segment_name(0))  # a short payload and bad UTF-8 rows
    rows = table.column("payload").to_pylist()
    rows[3] = rows[3][:5]
    pq.write_table(table.set_column(0, table.schema.field(0), pa.array(rows, pa.binary())),
                   tmp_path / segment_name(1))
    assert "of 5 bytes, not 12" in read_segment(loc, 1, bad_rows="drop").dropped[3]
    write_segment(loc, 2, ["gut", "x"], [0, 1], "s", "utf-8")
    table = pq.read_table(tmp_path / segment_name(2))
    pq.write_table(table.set_column(0, table.schema.field(0),
                                    pa.array([b"gut", b"\xff"], pa.binary())),
                   tmp_path / segment_name(2))
    text = read_segment(loc, 2, bad_rows="drop")
    assert text.payloads == ["gut"] and "UTF-8" in text.dropped[1]
