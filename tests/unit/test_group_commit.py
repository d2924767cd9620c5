"""Group commit (issue 16, item 4): several writers of one durable shard share log syncs, an
answer is sent only once every update it reflects is durable, and a failed sync loses exactly
the updates nobody was told were applied (real threads, real files, os.fsync made slow or
failing at the OS level)."""

import errno
import os
import threading
import time

import numpy as np
import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.client import LocalShards
from lifelong.distributed.shard import MemoryShard
from lifelong.errors import DurabilityError

WRITERS = 8


def spec_at(path, **kw):
    base = dict(name="grouped", key_dim=8, num_slots=400, num_values=50, shards=1, choose_k=5,
                age_noise=0.0, storage=str(path), snapshot_every=100_000)
    base.update(kw)
    return MemorySpec(**base)


def log_path(tmp_path):
    return str(tmp_path / "grouped" / "shard-000" / "log-00000000.bin")


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def batch(seed, n=4):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=gen), torch.randint(0, 50, (n,), generator=gen)


def reopened(spec):
    return ShardedMemory(spec, LocalShards([MemoryShard(spec, i) for i in range(spec.shards)]))


class LogSyncs:
    """Counts the syncs of one log and can hold them (``gate``) or fail the next ``fail``."""

    def __init__(self, monkeypatch, path, delay_s=0.0):
        self.path, self.delay_s = path, delay_s
        self.count, self.fail = 0, 0
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        real = os.fsync

        def fsync(fd):
            if fd_path(fd) == self.path:
                self.started.set()
                self.gate.wait()
                time.sleep(self.delay_s)
                if self.fail:
                    self.fail -= 1
                    raise OSError(errno.EIO, "Input/output error")
                self.count += 1
            return real(fd)

        monkeypatch.setattr(os, "fsync", fsync)


def writers_in_threads(memory, steps, start_seed):
    """WRITERS clients (own writer ids) writing ``steps`` batches each at once; returns
    {writer index: [written slots or the exception, per step]}."""
    out = {t: [] for t in range(WRITERS)}
    barrier = threading.Barrier(WRITERS)

    def work(t):
        me = ShardedMemory(memory.spec, memory.shards)
        barrier.wait()
        for s in range(steps):
            q, y = batch(start_seed + 100 * t + s)
            try:
                out[t].append(me.query(q, y).written_slots)
            except DurabilityError as exc:
                out[t].append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(WRITERS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    return out


def test_writers_that_arrive_together_share_one_sync_and_every_acknowledged_update_is_durable(
        tmp_path, monkeypatch):
    spec = spec_at(tmp_path)
    memory = ShardedMemory.local(spec, durable=True)
    memory.query(*batch(0))  # the log exists (its folder synced) before the writers start
    syncs = LogSyncs(monkeypatch, log_path(tmp_path), delay_s=0.02)  # a slow disk
    steps = 5
    out = writers_in_threads(memory, steps, start_seed=1)
    monkeypatch.undo()
    updates = WRITERS * steps
    assert all(isinstance(w, torch.Tensor) for ws in out.values() for w in ws)
    assert syncs.count < updates / 2, f"{syncs.count} syncs for {updates} updates"
    again = reopened(spec)
    assert again.status()[0]["replayed"] == updates + 1  # all of them, once each
    mine, theirs = memory.state_dict(), again.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_an_answer_waits_until_the_updates_it_reflects_are_durable(tmp_path, monkeypatch):
    spec = spec_at(tmp_path)
    memory = ShardedMemory.local(spec, durable=True)
    memory.query(*batch(0))
    syncs = LogSyncs(monkeypatch, log_path(tmp_path))
    syncs.gate.clear()  # the disk holds every sync of the log
    q, y = batch(1)
    written, answered = [], []
    writer = threading.Thread(target=lambda: written.append(memory.query(q, y)))
    reader = threading.Thread(target=lambda: answered.append(
        ShardedMemory(spec, memory.shards).query(q)))
    writer.start()
    assert syncs.started.wait(10)
    reader.start()  # its search sees the update, whose frame is not durable yet
    time.sleep(0.3)
    assert not written and not answered  # neither answer left before the sync
    syncs.gate.set()
    writer.join(10)
    reader.join(10)
    assert written and answered
    assert answered[0].values.tolist() == y.tolist()  # the reader saw the durable update


def test_a_failed_sync_loses_only_unacknowledged_updates_and_the_shard_reloads_its_files(
        tmp_path, monkeypatch):
    spec = spec_at(tmp_path)
    memory = ShardedMemory.local(spec, durable=True)
    for s in range(3):
        memory.query(*batch(s))
    size = os.path.getsize(log_path(tmp_path))
    syncs = LogSyncs(monkeypatch, log_path(tmp_path), delay_s=0.01)
    syncs.fail = 1  # one sync of the log fails (EIO) while several writers wait on it
    out = writers_in_threads(memory, 3, start_seed=10)
    monkeypatch.undo()
    failed = [e for ws in out.values() for e in ws if isinstance(e, DurabilityError)]
    acked = sum(isinstance(w, torch.Tensor) for ws in out.values() for w in ws)
    assert failed and all("update not logged" in str(e) for e in failed)
    assert acked + len(failed) == WRITERS * 3
    assert os.path.getsize(log_path(tmp_path)) > size  # the acknowledged ones are logged
    status = memory.status()[0]
    assert status["sync_failures"] == 1 and "Input/output error" in status["sync_error"]
    again = reopened(spec)
    assert again.status()[0]["replayed"] == 3 + acked  # none of the failed ones is there
    mine, theirs = memory.state_dict(), again.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)  # rebuilt from its files


def test_a_failed_sync_fails_a_reader_whose_answer_reflected_the_lost_update(
        tmp_path, monkeypatch):
    spec = spec_at(tmp_path)
    memory = ShardedMemory.local(spec, durable=True)
    memory.query(*batch(0))
    before = memory.state_dict()
    syncs = LogSyncs(monkeypatch, log_path(tmp_path))
    syncs.gate.clear()
    syncs.fail = 1
    q, y = batch(1)
    results = []

    def run(fn):
        try:
            results.append(fn())
        except DurabilityError as exc:
            results.append(exc)

    writer = threading.Thread(target=run, args=(lambda: memory.query(q, y),))
    writer.start()
    assert syncs.started.wait(10)
    reader = threading.Thread(target=run, args=(
        lambda: ShardedMemory(spec, memory.shards).query(q),))
    reader.start()
    time.sleep(0.3)
    syncs.gate.set()
    writer.join(10)
    reader.join(10)
    monkeypatch.undo()
    assert len(results) == 2 and all(isinstance(r, DurabilityError) for r in results)
    after = memory.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # as if never sent
    out = memory.query(q)  # the shard serves again, from its files
    assert np.isfinite(out.similarities.numpy()).any()
