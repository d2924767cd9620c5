"""Snapshots + update log: a shard rebuilt from storage equals the one that wrote it; corrupt
files stop the shard with the file's name; retried batches apply once."""

import os

import numpy as np
import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.client import LocalShards
from lifelong.distributed.shard import MemoryShard
from lifelong.errors import CorruptStateError


def spec_at(path, **kw):
    base = dict(name="durable", key_dim=8, num_slots=50, num_values=20, shards=2, choose_k=5,
                age_noise=0.0, storage=str(path), snapshot_every=7)
    base.update(kw)
    return MemorySpec(**base)


def feed(mem, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        mem.query(torch.randn(6, 8, generator=gen), torch.randint(0, 20, (6,), generator=gen))


def reopened(spec):
    return ShardedMemory(spec, LocalShards([MemoryShard(spec, i) for i in range(spec.shards)]))


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("steps", [3, 7, 18])  # log only, exactly one snapshot, snapshot + log
def test_rebuilt_from_snapshot_and_log(tmp_path, steps):
    spec = spec_at(tmp_path)
    mem = ShardedMemory.local(spec, durable=True)
    feed(mem, steps)
    again = reopened(spec)
    assert_same_state(mem, again)
    assert sum(s["replayed"] for s in again.status()) == 2 * (steps % 7)


def test_object_store_style_log(tmp_path):
    spec = spec_at(f"file://{tmp_path}", snapshot_every=1000)
    mem = ShardedMemory.local(spec, durable=True)
    for shard in mem.shards.shards:
        shard.store.local = False  # exercise the one-object-per-update layout
    feed(mem, 5)
    assert os.path.isdir(tmp_path / "durable" / "shard-000" / "log-00000000")
    again = ShardedMemory(spec, LocalShards([_object_store_shard(spec, i) for i in range(2)]))
    assert_same_state(mem, again)


def _object_store_shard(spec, index):
    from lifelong.distributed import storage

    real = storage.ShardStore.__init__

    def init(self, location, idx):
        real(self, location, idx)
        self.local = False

    storage.ShardStore.__init__ = init
    try:
        return MemoryShard(spec, index)
    finally:
        storage.ShardStore.__init__ = real


def test_retried_batch_is_applied_once(tmp_path):
    spec = spec_at(tmp_path)
    shard = MemoryShard(spec, 0)
    mem = ShardedMemory(spec, LocalShards([shard, MemoryShard(spec, 1)]))
    feed(mem, 2)
    sent = []
    original = shard.apply
    shard.apply = lambda w: sent.append((w, original(w))) or sent[-1][1]
    feed(mem, 1, seed=5)
    before = shard.state()
    write, answered = sent[-1]
    assert len(answered) > 0  # the batch inserted into this shard
    again = original(write)  # the same batch again, as a Ray retry would send it
    after = shard.state()
    for name in before:
        assert np.array_equal(before[name], after[name])
    assert shard.status()["duplicates"] == 1
    assert np.array_equal(again, answered)


@pytest.mark.parametrize("damage", ["flip", "cut"])  # a torn end is recovered: see
# tests/unit/test_durability_faults.py
def test_corrupt_log_refuses_to_start_and_names_the_file(tmp_path, damage):
    spec = spec_at(tmp_path, snapshot_every=1000)
    mem = ShardedMemory.local(spec, durable=True)
    feed(mem, 4)
    log = tmp_path / "durable" / "shard-001" / "log-00000000.bin"
    data = bytearray(log.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:  # 10 bytes gone in the middle
        del data[len(data) // 2: len(data) // 2 + 10]
    log.write_bytes(bytes(data))
    with pytest.raises(CorruptStateError, match="shard-001/log-00000000.bin"):
        MemoryShard(spec, 1)
    MemoryShard(spec, 0)  # the other shard is untouched


def test_corrupt_snapshot_refuses_to_start_and_names_the_file(tmp_path):
    spec = spec_at(tmp_path, snapshot_every=3)
    mem = ShardedMemory.local(spec, durable=True)
    feed(mem, 4)
    snap = next((tmp_path / "durable" / "shard-000").glob("snapshot-*.parquet"))
    data = bytearray(snap.read_bytes())
    data[len(data) // 3] ^= 0xFF
    snap.write_bytes(bytes(data))
    with pytest.raises(CorruptStateError, match=snap.name):
        MemoryShard(spec, 0)


def test_leftovers_of_a_crash_during_a_snapshot_are_dropped(tmp_path):
    spec = spec_at(tmp_path, snapshot_every=4)
    mem = ShardedMemory.local(spec, durable=True)
    feed(mem, 6)  # one snapshot (generation 1) and two logged updates per shard
    shard_dir = tmp_path / "durable" / "shard-000"
    (shard_dir / "snapshot-00000002.parquet.tmp").write_bytes(b"partial")
    (shard_dir / "snapshot-00000000.parquet").write_bytes(b"superseded")
    again = reopened(spec)
    assert_same_state(mem, again)
    assert sorted(p.name for p in shard_dir.iterdir()) == ["log-00000001.bin",
                                                           "snapshot-00000001.parquet"]
