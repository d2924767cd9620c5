"""Durability of a shard under faults injected at the OS level (issue 15, items 1-4 and 11):
failed writes and syncs, a file size limit hit in the middle of a frame, torn and damaged
logs, crafted snapshots and logs, failed and background snapshots, and the order of the
syncs a recovery depends on."""

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.client import LocalShards
from lifelong.distributed.shard import MemoryShard
from lifelong.distributed.records import Update
from lifelong.distributed.storage import ShardStore
from lifelong.errors import CorruptStateError, DurabilityError

ROOT = Path(__file__).resolve().parents[2]


def spec_at(path, **kw):
    base = dict(name="durable", key_dim=8, num_slots=50, num_values=20, shards=2, choose_k=5,
                age_noise=0.0, storage=str(path), snapshot_every=1000)
    base.update(kw)
    return MemorySpec(**base)


def batches(steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 8, generator=gen), torch.randint(0, 20, (6,), generator=gen))
            for _ in range(steps)]


def feed(mem, steps, seed=0):
    for q, y in batches(steps, seed):
        mem.query(q, y)


def shard_dir(tmp_path, index=0):
    return tmp_path / "durable" / f"shard-{index:03d}"


def log_of(tmp_path, index=0, gen=0):
    return shard_dir(tmp_path, index) / f"log-{gen:08d}.bin"


def reopened(spec):
    return ShardedMemory(spec, LocalShards([MemoryShard(spec, i) for i in range(spec.shards)]))


def states_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


# ------------------------------------------------------------------ item 1: failed appends
@pytest.mark.parametrize("fault", ["write", "fsync"])
def test_a_failed_append_leaves_the_log_exactly_as_before_and_is_never_replayed(
        tmp_path, monkeypatch, fault):
    spec = spec_at(tmp_path)
    mem = ShardedMemory.local(spec, durable=True)
    feed(mem, 3)
    shard0 = mem.shards.shards[0]
    log = log_of(tmp_path, 0)
    logged, state = log.read_bytes(), shard0.state()
    real_write, real_fsync = os.write, os.fsync

    def failing_write(fd, data):  # half the frame reaches the file, then the disk is full
        if fd_path(fd) == str(log):
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def failing_fsync(fd):  # the whole frame was written, its sync fails
        if fd_path(fd) == str(log) and os.fstat(fd).st_size > len(logged):
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, *(("write", failing_write) if fault == "write"
                              else ("fsync", failing_fsync)))
    q, y = batches(1, seed=9)[0]
    _, plan = mem.predict_and_plan(q, y)
    with pytest.raises(DurabilityError, match="log-00000000.bin: update not logged"):
        mem.apply_update(plan)
    assert log.read_bytes() == logged  # cut back, byte for byte
    after = shard0.state()
    assert all(np.array_equal(state[k], after[k]) for k in state)  # nothing applied
    monkeypatch.undo()
    assert reopened(spec).status()[0]["replayed"] == 3  # the failed update is not there
    mem.apply_update(plan)  # the same batch, sent again once the disk has room
    again = reopened(spec)
    assert again.status()[0]["replayed"] == 4 and states_equal(mem, again)


def test_a_file_size_limit_hit_in_the_middle_of_a_frame_leaves_the_log_as_before(tmp_path):
    """A real short write: RLIMIT_FSIZE lets the kernel write part of the frame, then EFBIG."""
    spec = spec_at(tmp_path)
    feed(ShardedMemory.local(spec, durable=True), 3)
    log = log_of(tmp_path, 0)
    size = log.stat().st_size
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from lifelong.distributed import MemorySpec, ShardedMemory
        from lifelong.errors import DurabilityError
        spec = MemorySpec.from_json({spec.to_json()!r})
        mem = ShardedMemory.local(spec, durable=True)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({size} + 100, resource.RLIM_INFINITY))
        gen = torch.Generator().manual_seed(9)
        try:
            mem.query(torch.randn(6, 8, generator=gen), torch.randint(0, 20, (6,), generator=gen))
        except DurabilityError as exc:
            print("refused:", exc)
            sys.exit(0)
        sys.exit("the update was acknowledged past the file size limit")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "platform"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "File too large" in done.stdout
    assert log.stat().st_size == size
    assert reopened(spec).status()[0]["replayed"] == 3


def test_a_failed_undo_refuses_every_later_append_until_restart(tmp_path, monkeypatch):
    spec = spec_at(tmp_path, shards=1)
    mem = ShardedMemory.local(spec, durable=True)
    feed(mem, 2)
    log = log_of(tmp_path, 0)
    real_write = os.write

    def failing_write(fd, data):
        if fd_path(fd) == str(log):
            raise OSError(errno.EIO, "Input/output error")
        return real_write(fd, data)

    def failing_truncate(fd, length):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", failing_write)
    monkeypatch.setattr(os, "ftruncate", failing_truncate)
    q, y = batches(1, seed=4)[0]
    with pytest.raises(DurabilityError, match="update not logged"):
        mem.query(q, y)
    monkeypatch.undo()
    with pytest.raises(DurabilityError, match="accepts no writes until it restarts"):
        mem.query(q, y)
    assert reopened(spec).status()[0]["replayed"] == 2


# ------------------------------------------------------------------- item 2: torn frames
def test_a_torn_final_frame_is_dropped_counted_and_cut_off(tmp_path):
    spec = spec_at(tmp_path)
    mem = ShardedMemory.local(spec, durable=True)
    feed(mem, 3)
    good = reopened(spec)  # the state of the three acknowledged updates
    log = log_of(tmp_path, 1)
    whole = log.read_bytes()
    feed(mem, 1, seed=7)
    torn = log.read_bytes()[: len(whole) + 30]  # the crash came in the middle of the append
    log.write_bytes(torn)
    again = reopened(spec)
    status = again.status()[1]
    assert status["torn_frames"] == 1 and status["replayed"] == 3
    assert log.read_bytes() == whole  # cut back to the last whole frame
    assert np.array_equal(again.shards.shards[1].state()["keys"],
                          good.shards.shards[1].state()["keys"])
    feed(again, 2, seed=8)  # appends go on after the cut, and are replayed
    assert reopened(spec).status()[1]["replayed"] == 5


def test_a_tail_of_zeros_after_the_last_frame_is_dropped(tmp_path):
    spec = spec_at(tmp_path)
    feed(ShardedMemory.local(spec, durable=True), 3)
    log = log_of(tmp_path, 0)
    whole = log.read_bytes()
    log.write_bytes(whole + bytes(4096))  # allocated by the crash, never written
    assert reopened(spec).status()[0]["torn_frames"] == 1
    assert log.read_bytes() == whole


@pytest.mark.parametrize("damage", ["cut", "flip-middle", "flip-last"])
def test_damage_before_the_end_or_a_bad_checksum_is_refused_naming_the_file(tmp_path, damage):
    spec = spec_at(tmp_path)
    feed(ShardedMemory.local(spec, durable=True), 4)
    log = log_of(tmp_path, 1)
    data = bytearray(log.read_bytes())
    if damage == "cut":  # bytes missing in the middle: the frames after it do not line up
        del data[len(data) // 2: len(data) // 2 + 10]
    elif damage == "flip-middle":
        data[len(data) // 2] ^= 0xFF
    else:  # the final frame is whole but one of its bytes changed: not a torn append
        data[-5] ^= 0xFF
    log.write_bytes(bytes(data))
    with pytest.raises(CorruptStateError, match="shard-001/log-00000000.bin"):
        MemoryShard(spec, 1)
    assert log.read_bytes() == bytes(data)  # left as found


# --------------------------------------------------------- item 3: what is synced, in order
def record_syncs(monkeypatch, placing: str, kind: str) -> list[tuple[str, str]]:
    """Records, in order, every os.fsync (the synced file or folder) and every call of
    os.<placing> (``replace`` or ``link``: the path it creates, as ``kind``)."""
    events = []
    real_fsync, real_place = os.fsync, getattr(os, placing)
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", fd_path(fd)))
                        or real_fsync(fd))
    monkeypatch.setattr(os, placing, lambda a, b: events.append((kind, str(b)))
                        or real_place(a, b))
    return events


def test_every_file_recovery_needs_is_synced_before_the_write_is_acknowledged(
        tmp_path, monkeypatch):
    events = record_syncs(monkeypatch, "replace", "rename")
    spec = spec_at(tmp_path, shards=1, snapshot_every=2)
    mem = ShardedMemory.local(spec, durable=True)
    folder = str(shard_dir(tmp_path))
    assert ("fsync", str(tmp_path / "durable")) in events  # the new shard folder's entry
    events.clear()
    feed(mem, 1)
    log0 = f"{folder}/log-00000000.bin"
    assert events == [("fsync", folder), ("fsync", log0)]  # new log's name, then its frame
    events.clear()
    feed(mem, 1)  # the second update: logged, then snapshot 1 is written
    snap = f"{folder}/snapshot-00000001.parquet"
    tmp = [path for kind, path in events if kind == "fsync" and path.endswith(".tmp")]
    assert events[0] == ("fsync", log0) and len(tmp) == 1
    assert events[1:] == [("fsync", tmp[0]), ("rename", snap), ("fsync", folder)]
    assert not Path(log0).exists()  # dropped only after the snapshot is durable
    events.clear()
    feed(mem, 1)
    assert events == [("fsync", folder), ("fsync", f"{folder}/log-00000001.bin")]


def test_a_stream_segment_is_synced_before_it_appears_and_never_replaced(tmp_path,
                                                                         monkeypatch):
    from lifelong.errors import SegmentExistsError
    from lifelong.streaming.segments import write_segment

    events = record_syncs(monkeypatch, "link", "link")
    payloads = np.zeros((3, 4), np.float32)
    path = write_segment(str(tmp_path), 0, payloads, [0, 1, 2], "test", "float32[4]")
    assert [kind for kind, _ in events] == ["fsync", "link", "fsync"]
    assert events[0][1].endswith(".tmp") and events[1][1] == path
    assert events[2] == ("fsync", str(tmp_path))
    first = Path(path).read_bytes()
    with pytest.raises(SegmentExistsError):
        write_segment(str(tmp_path), 0, payloads + 1, [0, 1, 2], "test", "float32[4]")
    assert Path(path).read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(path).name]  # no temp left


# ------------------------------------------------------------------ item 4: failed snapshots
def fail_snapshot_syncs(monkeypatch, error=errno.ENOSPC):
    real_fsync = os.fsync

    def fsync(fd):
        if fd_path(fd).endswith(".tmp"):
            raise OSError(error, os.strerror(error))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_failed_snapshot_never_fails_the_acknowledged_apply_and_is_retried(tmp_path,
                                                                            monkeypatch):
    spec = spec_at(tmp_path, snapshot_every=3)
    mem = ShardedMemory.local(spec, durable=True)
    feed(mem, 2)
    fail_snapshot_syncs(monkeypatch)
    feed(mem, 1)  # the third update is acknowledged; its snapshot fails
    status = mem.status()[0]
    assert status["snapshot_failures"] == 1 and "No space left" in status["snapshot_error"]
    assert status["generation"] == 0 and status["logged_since_snapshot"] == 3
    assert not [p for p in shard_dir(tmp_path).iterdir() if p.name.endswith(".tmp")]
    assert states_equal(mem, reopened(spec))  # nothing lost: the logs hold it all
    feed(mem, 3, seed=1)  # retried after 1, then 2 more updates: failing each time
    assert mem.status()[0]["snapshot_failures"] == 3
    monkeypatch.undo()
    feed(mem, 4, seed=2)  # the next retry succeeds
    status = mem.status()[0]
    assert status["snapshot_error"] is None and status["snapshot_failures"] == 3
    assert status["generation"] >= 1
    again = reopened(spec)
    assert states_equal(mem, again)
    assert sorted(p.name.split("-")[0] for p in shard_dir(tmp_path).iterdir()) in (
        ["snapshot"], ["log", "snapshot"])  # the failed generations' logs are gone


def test_an_explicit_snapshot_that_fails_raises_and_changes_nothing(tmp_path, monkeypatch):
    spec = spec_at(tmp_path, shards=1)
    mem = ShardedMemory.local(spec, durable=True)
    feed(mem, 2)
    fail_snapshot_syncs(monkeypatch, errno.EIO)
    with pytest.raises(DurabilityError, match="snapshot-00000001.parquet: snapshot not written"):
        mem.shards.shards[0].snapshot()
    monkeypatch.undo()
    assert states_equal(mem, reopened(spec))


def test_a_large_shard_snapshots_in_the_background_while_writes_go_on(tmp_path, monkeypatch):
    spec = spec_at(tmp_path, shards=1, snapshot_every=2)
    monkeypatch.setattr(MemoryShard, "background_snapshot_bytes", 0)
    mem = ShardedMemory.local(spec, durable=True)
    release, started = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd):  # the snapshot's disk is slow: it waits until released
        if fd_path(fd).endswith(".tmp"):
            started.set()
            assert release.wait(60)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    feed(mem, 2)  # the second update starts snapshot 1 and returns at once
    assert started.wait(60)
    feed(mem, 3, seed=1)  # appends go to log 1 meanwhile; queries are answered
    status = mem.status()[0]
    assert status["snapshot_in_progress"] and status["generation"] == 0
    copy = tmp_path / "crash"  # the files as a crash now would leave them
    shutil.copytree(tmp_path / "durable", copy / "durable")
    crashed = reopened(spec_at(copy, shards=1))  # no snapshot yet: logs 0 and 1 replayed
    assert states_equal(mem, crashed) and crashed.status()[0]["replayed"] == 5
    release.set()
    shard = mem.shards.shards[0]
    shard.wait_for_snapshot()
    status = mem.status()[0]
    assert not status["snapshot_in_progress"] and status["generation"] == 1
    again = reopened(spec)
    assert states_equal(mem, again) and again.status()[0]["replayed"] == 3


# -------------------------------------------------------- item 11: crafted snapshots and logs
CRAFTED = {
    "nan key": lambda s: s.keys.__setitem__((0, 0), np.nan),
    "value >= num_values": lambda s: s.values.__setitem__(1, 20),
    "write time after the clock": lambda s: s.write_time.__setitem__(2, s.clock + 1),
    "recent slot out of range": lambda s: s.recent_slots.__setitem__(3, 25),
    "malformed writer entry": lambda s: s.writers.__setitem__("w", ["x", []]),
}


@pytest.mark.parametrize("craft", sorted(CRAFTED))
def test_a_crafted_snapshot_with_valid_checksums_is_refused_naming_the_file(tmp_path, craft):
    spec = spec_at(tmp_path, snapshot_every=2)
    feed(ShardedMemory.local(spec, durable=True), 2)
    store = ShardStore(spec.location, 0)
    snapshot, _ = store.load()
    CRAFTED[craft](snapshot)
    store.write_snapshot(snapshot)  # a well-formed Parquet file with bad contents
    with pytest.raises(CorruptStateError, match="shard-000/snapshot-00000002.parquet"):
        MemoryShard(spec, 0)


@pytest.mark.parametrize("craft", ["slot out of range", "nan key", "label out of range",
                                   "clock goes back"])
def test_a_crafted_log_frame_with_a_valid_checksum_is_refused_naming_the_file(tmp_path,
                                                                            craft):
    spec = spec_at(tmp_path)
    feed(ShardedMemory.local(spec, durable=True), 2)
    store = ShardStore(spec.location, 0)
    _, updates = store.load()
    update = Update.from_bytes(updates[-1].to_bytes())
    update.seq += 1
    update.clock += 1
    if craft == "slot out of range":
        update.slots[0] = 25
    elif craft == "nan key":
        update.keys[0, 0] = np.nan
    elif craft == "label out of range":
        update.values[0] = -3
    else:
        update.clock = 1
    store.append(update)
    with pytest.raises(CorruptStateError, match="shard-000/log-00000000.bin"):
        MemoryShard(spec, 0)


def test_snapshot_checks_accept_every_state_the_shard_writes(tmp_path):
    spec = spec_at(tmp_path, snapshot_every=3)
    mem = ShardedMemory.local(spec, durable=True)
    feed(mem, 30)  # full shards: evictions, refreshes, several snapshots
    assert states_equal(mem, reopened(spec))
