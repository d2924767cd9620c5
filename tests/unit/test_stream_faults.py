"""Stream segments under I/O faults and out-of-order producers: a transient read error is retried
and never quarantines a good segment; a segment number is written once; a segment that appears
below the read offset is counted and reported, never silently skipped."""

import errno

import numpy as np
import pytest

import lifelong.streaming.segments as segments
from lifelong import metrics
from lifelong.distributed import LocalShards, MemorySpec, ShardedMemory
from lifelong.distributed.shard import MemoryShard
from lifelong.errors import SegmentExistsError
from lifelong.streaming.commit import CommitStore
from lifelong.streaming.config import StreamSettings
from lifelong.streaming.encoders import payload_encoder
from lifelong.streaming.job import StreamRunner
from lifelong.streaming.report import stream_metrics
from lifelong.streaming.segments import read_segment, segment_name, write_segment

DIM, CLASSES, ROWS = 8, 10, 6


def spec():
    return MemorySpec(name="m", key_dim=DIM, num_slots=64, num_values=CLASSES, shards=2,
                      choose_k=8, storage="/unused")


def write(src, numbers):
    rng = np.random.default_rng(0)
    for n in numbers:
        write_segment(str(src), n, rng.normal(size=(ROWS, DIM)).astype(np.float32),
                      rng.integers(CLASSES, size=ROWS), "t", f"float32[{DIM}]")


def runner(tmp_path, make_encoder=None, idle_timeout_s=0.0):
    shards = LocalShards([MemoryShard(spec(), i, durable=False) for i in range(2)])
    settings = StreamSettings(source=str(tmp_path / "src"), name="t", batch_size=4,
                              idle_timeout_s=idle_timeout_s, poll_s=0.02)
    store = CommitStore(str(tmp_path / "state"))
    memory = ShardedMemory(spec(), shards, writer="stream:t")
    return StreamRunner(settings, memory, store,
                        make_encoder or (lambda fmt: payload_encoder(fmt, None)),
                        str(tmp_path / "quarantine")), store


class FlakyFS:
    """The local filesystem, but opening segment ``number`` for reading fails with EIO the
    first ``failures`` times (a disk or network blip)."""

    def __init__(self, fs, number, failures):
        self.fs, self.name, self.failures, self.opened = fs, segment_name(number), failures, 0

    def open_input_file(self, path):
        if path.endswith("/" + self.name):
            self.opened += 1
            if self.opened <= self.failures:
                raise OSError(errno.EIO, "Input/output error", path)
        return self.fs.open_input_file(path)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def flaky(monkeypatch, number, failures):
    real = segments.filesystem
    holder = {}

    def patched(location):
        fs, base = real(location)
        holder.setdefault("fs", FlakyFS(fs, number, failures))
        return holder["fs"], base

    monkeypatch.setattr(segments, "filesystem", patched)
    monkeypatch.setattr(segments, "READ_BACKOFF_S", 0.001)
    return holder


def test_a_transient_read_error_is_retried_and_the_good_segment_is_not_quarantined(
        tmp_path, monkeypatch):
    write(tmp_path / "src", range(3))
    holder = flaky(monkeypatch, 1, failures=segments.READ_ATTEMPTS - 1)
    job, store = runner(tmp_path)
    result = job.run()
    assert holder["fs"].opened == segments.READ_ATTEMPTS  # failed, failed, failed, read
    assert result.quarantined == [] and result.stats.quarantined == 0
    assert result.stats.examples == 3 * ROWS
    assert not (tmp_path / "quarantine").exists()


def test_a_read_error_that_persists_stops_the_job_and_quarantines_nothing(tmp_path,
                                                                          monkeypatch):
    write(tmp_path / "src", range(3))
    flaky(monkeypatch, 1, failures=10**6)
    job, store = runner(tmp_path)
    with pytest.raises(OSError) as caught:
        job.run()
    assert caught.value.errno == errno.EIO
    record = store.load()
    assert (record.segment, record.stats.quarantined, record.stats.examples) == (1, 0, ROWS)
    assert not (tmp_path / "quarantine").exists()
    monkeypatch.undo()  # the fault is gone: a restart reads segment 1 and goes on
    again, _ = runner(tmp_path)
    assert again.run().stats.examples == 3 * ROWS


def test_writing_an_existing_segment_number_is_refused_and_changes_nothing(tmp_path):
    write(tmp_path / "src", [4])
    path = tmp_path / "src" / segment_name(4)
    before = path.read_bytes()
    with pytest.raises(SegmentExistsError):
        write_segment(str(tmp_path / "src"), 4, np.zeros((2, DIM), np.float32), [0, 1], "other",
                      f"float32[{DIM}]")
    assert path.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == [segment_name(4)]
    assert len(read_segment(str(tmp_path / "src"), 4)) == ROWS


def test_a_segment_appearing_below_the_read_offset_is_counted_and_reported(tmp_path, capsys,
                                                                           caplog):
    src = tmp_path / "src"
    write(src, [0, 1, 3])  # 2 is missing: the reader reads 0, 1, 3 and skips 2

    def make_encoder(fmt):
        encode = payload_encoder(fmt, None)
        calls = []

        def encoder(payloads):
            calls.append(1)
            if len(calls) == 3:  # segment 3 read: now 2 arrives, below the offset
                write(src, [2])
            return encode(payloads)
        return encoder

    job, store = runner(tmp_path, make_encoder, idle_timeout_s=0.5)
    with caplog.at_level("WARNING"):
        result = job.run()
    assert result.stats.examples == 3 * ROWS  # 2 is not read: the stream is read in order
    assert result.stats.late_segments == 1 and store.load().stats.late_segments == 1
    assert "late segment 2" in capsys.readouterr().out
    assert any("late segment 2" in r.getMessage() for r in caplog.records)
    assert stream_metrics(result.stats, (100,), (0,), {})[metrics.STREAM_LATE_SEGMENTS] == 1
    again, _ = runner(tmp_path)  # a restart counts it once, not again
    assert again.run().stats.late_segments == 1
