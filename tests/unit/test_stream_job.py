"""The stream job in one process against in-process shards that outlive it: crashes injected at
every step (before/after the commit record is saved, between two shards' applies) lose and
repeat nothing; bad segments are quarantined and every good row is applied."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifelong.distributed import LocalShards, MemorySpec, ShardedMemory
from lifelong.distributed.shard import MemoryShard, ShardWrite
from lifelong.errors import ConfigError, MemoryStateError
from lifelong.streaming.commit import CommitStore
from lifelong.streaming.config import StreamSettings
from lifelong.streaming.encoders import payload_encoder
from lifelong.streaming.job import StreamRunner
from lifelong.streaming.segments import read_segment, segment_name, write_segment

DIM, CLASSES = 8, 40


class Crash(Exception):
    """A simulated kill of the stream job."""


def make_stream(location, segments=12, rows=30, seed=0):
    """Vector segments: each class a fixed direction plus noise, long-tailed labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, DIM))
    p = 1.0 / np.arange(1, CLASSES + 1)
    for n in range(segments):
        labels = rng.choice(CLASSES, size=rows, p=p / p.sum())
        x = (centres[labels] + 0.3 * rng.normal(size=(rows, DIM))).astype(np.float32)
        write_segment(location, n, x, labels, "test", f"float32[{DIM}]")
    return segments * rows


def spec(age_noise=8.0):
    return MemorySpec(name="m", key_dim=DIM, num_slots=96, num_values=CLASSES, shards=2,
                      choose_k=16, age_noise=age_noise, storage="/unused")


class FlakyShards(LocalShards):
    """Shards that outlive the job; a call that applies a batch (``apply``, or a pipelined
    ``step``: apply, then search) may crash the job after some shards applied."""

    def __init__(self, shards, rng, p):
        super().__init__(shards)
        self.rng, self.p = rng, p

    def call(self, method, args):
        if method not in ("apply", "step"):
            return super().call(method, args)
        out = []
        for shard, a in zip(self.shards, args):
            if self.rng.random() < self.p:
                raise Crash(f"killed before shard {shard.index} applied")
            out.append(getattr(shard, method)(*a))
        return out


class FlakyStore(CommitStore):
    def __init__(self, location, rng, p):
        super().__init__(location)
        self.rng, self.p = rng, p

    def save(self, record):
        if self.rng.random() < self.p:
            raise Crash("killed before the record was saved")
        super().save(record)
        if self.rng.random() < self.p:
            raise Crash("killed after the record was saved")


def runner(settings, shards, store):
    memory = ShardedMemory(spec(), shards, writer=f"stream:{settings.name}")
    return StreamRunner(settings, memory, store, lambda fmt: payload_encoder(fmt, None),
                        str(store.dir) + "/quarantine")


def run_to_end(settings, shards, store):
    crashes = []
    while True:
        try:
            return runner(settings, shards, store).run(), crashes
        except Crash as exc:
            crashes.append(str(exc))


def shard_contents(shards):
    return [(s.state(), {k: v for k, v in s.status().items() if k in
                         ("inserts", "refreshes", "updates", "clock", "occupied")})
            for s in shards.shards]


def test_crashes_at_any_step_lose_and_repeat_nothing(tmp_path):
    total = make_stream(str(tmp_path / "src"))
    settings = StreamSettings(source=str(tmp_path / "src"), name="t", batch_size=7,
                              idle_timeout_s=0, poll_s=0.02, log_every=50, windows=(100,))
    clean = LocalShards([MemoryShard(spec(), i, durable=False) for i in range(2)])
    expected, _ = run_to_end(settings, clean, CommitStore(str(tmp_path / "clean")))

    rng = np.random.default_rng(1)
    flaky = FlakyShards([MemoryShard(spec(), i, durable=False) for i in range(2)], rng, 0.08)
    store = FlakyStore(str(tmp_path / "flaky"), rng, 0.08)
    got, crashes = run_to_end(settings, flaky, store)

    assert len(crashes) >= 10 and set(crashes) == {  # every step of a batch was hit
        "killed before the record was saved", "killed after the record was saved",
        "killed before shard 0 applied", "killed before shard 1 applied"}
    assert got.stats.examples == expected.stats.examples == total
    for (state_a, counts_a), (state_b, counts_b) in zip(shard_contents(flaky),
                                                        shard_contents(clean)):
        assert counts_a == counts_b
        for name in state_a:
            np.testing.assert_array_equal(state_a[name], state_b[name], err_msg=name)
    assert sum(s.status()["duplicates"] for s in flaky.shards) > 0  # retries did happen
    assert sum(c["inserts"] + c["refreshes"] for _, c in shard_contents(flaky)) == total
    for name in ("seen", "shot_total", "shot_correct", "ring", "history_total",
                 "history_correct"):
        np.testing.assert_array_equal(getattr(got.stats, name), getattr(expected.stats, name))
    assert got.stats.correct == expected.stats.correct


def test_a_restart_goes_on_where_the_record_says(tmp_path):
    make_stream(str(tmp_path / "src"), segments=4, rows=10)
    shards = LocalShards([MemoryShard(spec(), i, durable=False) for i in range(2)])
    settings = StreamSettings(source=str(tmp_path / "src"), name="t", batch_size=4,
                              idle_timeout_s=0, poll_s=0.02, max_examples=15)
    store = CommitStore(str(tmp_path / "state"))
    first = runner(settings, shards, store).run()
    assert (first.examples, first.stats.examples) == (15, 15)
    record = store.load()
    assert (record.segment, record.row) == (1, 5)  # 10 rows of segment 0, 5 of segment 1
    again = runner(StreamSettings(**{**settings.__dict__, "max_examples": None}), shards,
                   store).run()
    assert (again.resumed_at, again.examples, again.stats.examples) == (15, 25, 40)
    make_stream(str(tmp_path / "src2"), segments=1, rows=3)  # new segments are picked up
    write_segment(str(tmp_path / "src"), 7, np.zeros((3, DIM), np.float32) + 1, [0, 1, 2],
                  "late", f"float32[{DIM}]")
    last = runner(settings.__class__(**{**settings.__dict__, "max_examples": None}), shards,
                  store).run()
    assert (last.examples, last.stats.examples, store.load().segment) == (3, 43, 8)


def corrupt_segments(src):
    """Good segments 0, 2, 5 (9 rows each); 1 truncated and 3 of another schema (nothing
    readable); 4 with NaN payloads in rows 2 and 5, 6 with a label out of range in row 1 (the
    other rows good). Returns the number of good rows."""
    rng = np.random.default_rng(0)
    for n in range(7):
        labels = rng.integers(CLASSES, size=9)
        x = rng.normal(size=(9, DIM)).astype(np.float32)
        if n == 4:
            x[[2, 5], 3] = np.nan
        if n == 6:
            labels[1] = CLASSES
        write_segment(str(src), n, x, labels, "t", f"float32[{DIM}]")
    path = src / segment_name(1)
    path.write_bytes(path.read_bytes()[:-40])
    pq.write_table(pa.table({"x": [1, 2, 3]}), src / segment_name(3))
    return 3 * 9 + 7 + 8


def test_bad_segments_are_quarantined_and_every_good_row_applied(tmp_path):
    src = tmp_path / "src"
    good_rows = corrupt_segments(src)
    shards = LocalShards([MemoryShard(spec(), i, durable=False) for i in range(2)])
    store = CommitStore(str(tmp_path / "state"))
    settings = StreamSettings(source=str(src), name="t", batch_size=4, idle_timeout_s=0,
                              poll_s=0.02)
    result = runner(settings, shards, store).run()
    assert result.stats.examples == good_rows
    assert sum(s.status()["inserts"] + s.status()["refreshes"] for s in shards.shards) == \
        good_rows
    assert [n for n, _ in result.quarantined] == [1, 3, 4, 6]
    assert (result.stats.quarantined, result.stats.dropped_rows) == (4, 3)
    reasons = dict(result.quarantined)
    assert "unreadable" in reasons[1] and "schema" in reasons[3]
    assert "2 of 9 rows" in reasons[4] and "NaN" in reasons[4]
    assert "label 40 outside [0, 40)" in reasons[6]
    q = tmp_path / "state" / "quarantine"
    for n in (1, 3, 4, 6):
        assert (q / segment_name(n)).read_bytes() == (src / segment_name(n)).read_bytes()
        assert json.loads((q / f"{segment_name(n)}.reason.json").read_text())["segment"] == n
    rows = json.loads((q / f"{segment_name(4)}.reason.json").read_text())["rows"]
    assert sorted(rows) == ["2", "5"]
    # The rows applied are exactly the good ones: segment 4's good rows, in order.
    seen = np.zeros(CLASSES, np.int64)
    for n in (0, 2, 4, 5, 6):
        seg = read_segment(str(src), n, bad_rows="drop")
        keep = seg.labels < CLASSES
        np.add.at(seen, seg.labels[keep], 1)
    np.testing.assert_array_equal(result.stats.seen, seen)


def test_crashes_after_committing_quarantines_copy_on_restart_and_count_once(tmp_path):
    src = tmp_path / "src"
    good_rows = corrupt_segments(src)
    shards = LocalShards([MemoryShard(spec(), i, durable=False) for i in range(2)])
    settings = StreamSettings(source=str(src), name="t", batch_size=4, idle_timeout_s=0,
                              poll_s=0.02)
    crashed = set()

    class CrashingRunner(StreamRunner):
        def _copy_to_quarantine(self, number, reason, rows):
            if number not in crashed:  # killed once at each, before the copy
                crashed.add(number)
                raise Crash(f"killed before copying segment {number}")
            super()._copy_to_quarantine(number, reason, rows)

    store = CommitStore(str(tmp_path / "state"))
    q = tmp_path / "state" / "quarantine"
    while True:
        memory = ShardedMemory(spec(), shards, writer="stream:t")
        try:
            result = CrashingRunner(settings, memory, store, lambda f: payload_encoder(f, None),
                                    str(q)).run()
            break
        except Crash:
            assert store.load().quarantine is not None  # committed before the copy
    assert crashed == {1, 3, 4, 6}
    assert (result.stats.quarantined, result.stats.dropped_rows) == (4, 3)
    assert result.stats.examples == good_rows
    assert all((q / segment_name(n)).exists() for n in crashed)


def test_a_second_client_with_the_same_writer_id_is_refused():
    shard = MemoryShard(spec(age_noise=0), 0, durable=False)
    q = np.eye(DIM, dtype=np.float32)[:2]

    def write(labels):
        return ShardWrite(writer="w", seq=1, refresh_slots=np.zeros(0, np.int64),
                          refresh_q=np.zeros((0, DIM), np.float32),
                          refresh_labels=np.zeros(0, np.int64),
                          refresh_positions=np.zeros(0, np.int64), insert_q=q,
                          insert_labels=np.asarray(labels, np.int64),
                          insert_positions=np.arange(2))

    first = shard.apply(write([1, 2]))
    np.testing.assert_array_equal(shard.apply(write([1, 2])), first)  # a retry: same answer
    with pytest.raises(MemoryStateError, match="different contents"):
        shard.apply(write([3, 4]))
    assert shard.status()["updates"] == 1


def test_a_record_of_another_memory_or_shape_is_refused(tmp_path):
    make_stream(str(tmp_path / "src"), segments=1, rows=5)
    shards = LocalShards([MemoryShard(spec(), i, durable=False) for i in range(2)])
    settings = StreamSettings(source=str(tmp_path / "src"), name="t", idle_timeout_s=0, poll_s=0.02)
    store = CommitStore(str(tmp_path / "state"))
    runner(settings, shards, store).run()
    other = ShardedMemory(spec(), shards, writer="stream:other")
    with pytest.raises(ConfigError, match="belongs to writer"):
        StreamRunner(settings, other, store, lambda f: payload_encoder(f, None), "q")
    with pytest.raises(ConfigError, match="windows"):
        runner(StreamSettings(**{**settings.__dict__, "windows": (5,)}), shards, store)


def test_stream_settings_reject_bad_values():
    with pytest.raises(ConfigError, match="source"):
        StreamSettings()
    with pytest.raises(ConfigError):
        StreamSettings(source="x", batch_size=0)
    with pytest.raises(ConfigError):
        StreamSettings(source="x", shots=(11,))
    with pytest.raises(ConfigError):
        StreamSettings(source="x", name="../up")


def test_two_stream_jobs_feed_one_memory(tmp_path):
    a = make_stream(str(tmp_path / "a"), segments=3, rows=20, seed=1)
    b = make_stream(str(tmp_path / "b"), segments=2, rows=25, seed=2)
    shards = LocalShards([MemoryShard(spec(), i, durable=False) for i in range(2)])
    jobs = {name: (StreamSettings(source=str(tmp_path / name), name=name, batch_size=6,
                                  idle_timeout_s=0, poll_s=0.02, max_examples=n),
                   CommitStore(str(tmp_path / f"state-{name}")))
            for name, n in (("a", a), ("b", b))}
    done = {}
    for limit in (10, 30, 60):  # the two jobs take turns, each resuming where it stopped
        for name, (settings, store) in jobs.items():
            capped = StreamSettings(**{**settings.__dict__,
                                       "max_examples": min(limit, settings.max_examples)})
            done[name] = runner(capped, shards, store).run().stats.examples
    assert done == {"a": a, "b": b}
    status = [s.status() for s in shards.shards]
    assert sum(s["inserts"] + s["refreshes"] for s in status) == a + b
    # Each of the 4 restarts re-sent its last recorded batch: both shards answered it from
    # memory, nothing applied twice.
    assert sum(s["duplicates"] for s in status) == 4 * 2
    assert set(shards.shards[0].writers) == {"stream:a", "stream:b"}
