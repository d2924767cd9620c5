"""The pipelined client (issue 16, item 2): one call per shard per step, the previous update
travelling with the next search. Step for step equal to Memory, read-your-writes, and a failed
update raised and sent again, applied once."""

import errno
import os

import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.client import LocalShards
from lifelong.distributed.shard import MemoryShard
from lifelong.errors import DurabilityError
from lifelong.memory import Memory


def batches(steps, batch=8, d=16, values=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(values, d, generator=gen)
    for _ in range(steps):
        labels = torch.randint(0, values, (batch,), generator=gen)
        yield centres[labels] + 0.7 * torch.randn(batch, d, generator=gen), labels


def spec(shards, **kw):
    base = dict(name="pipe", key_dim=16, num_slots=61, num_values=12, shards=shards,
                choose_k=7, age_noise=0.0, storage="unused")
    base.update(kw)
    return MemorySpec(**base)


class CountingShards(LocalShards):
    def __init__(self, shards):
        super().__init__(shards)
        self.calls = []

    def call(self, method, args):
        self.calls.append(method)
        return super().call(method, args)


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_a_pipelined_memory_equals_memory_step_for_step_in_one_call_per_step(shards):
    s = spec(shards)
    group = CountingShards([MemoryShard(s, i, durable=False) for i in range(shards)])
    sharded = ShardedMemory(s, group, pipelined=True)
    local = Memory(key_dim=16, num_slots=61, num_values=12, choose_k=7, age_noise=0.0)
    previous = None
    for step, (q, labels) in enumerate(batches(30)):
        q1, q2 = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
        a, b = local.query(q1, labels), sharded.query(q2, labels)
        assert torch.equal(a.values, b.values), f"prediction differs at step {step}"
        assert torch.equal(a.slots, b.slots)
        torch.testing.assert_close(a.loss, b.loss)
        a.loss.backward()
        b.loss.backward()
        torch.testing.assert_close(q1.grad, q2.grad)
        assert b.written_slots is None  # on its way, with the next search
        if previous is not None:
            assert torch.equal(sharded.last_written, previous)
        previous = a.written_slots
    assert group.calls == ["search"] + ["step"] * 29  # one round trip per step
    a, b = local.state_dict(), sharded.state_dict()  # state_dict flushes the last update
    assert torch.equal(sharded.last_written, previous) and sharded.pending is None
    torch.testing.assert_close(a["keys"], b["keys"])
    for name in ("values", "ages", "recent_slots"):
        assert torch.equal(a[name], b[name]), name


def test_a_pipelined_writer_reads_its_own_write_at_the_next_step():
    memory = ShardedMemory.local(spec(2, num_values=100), pipelined=True)
    q = torch.randn(4, 16)
    memory.query(q, torch.tensor([5, 6, 7, 8]))
    assert memory.pending is not None  # not yet sent...
    out = memory.query(q)  # ...but sent first, with this search
    assert out.values.tolist() == [5, 6, 7, 8] and memory.pending is None


def test_predict_and_plan_carries_the_pending_update_and_apply_update_sends_its_plan():
    memory = ShardedMemory.local(spec(2), pipelined=True)
    data = list(batches(2))
    memory.query(*data[0])  # batch 1 pending
    _, plan = memory.predict_and_plan(*data[1])  # batch 1 travels with this search
    assert memory.pending is None and plan.seq == 2
    memory.apply_update(plan)
    assert [s["updates"] for s in memory.status()] == [2, 2]


def test_a_failed_pipelined_update_raises_from_the_call_that_carries_it_and_is_sent_again(
        tmp_path, monkeypatch):
    s = spec(2, storage=str(tmp_path), snapshot_every=1000)
    memory = ShardedMemory.local(s, durable=True, pipelined=True)
    data = list(batches(4))
    memory.query(*data[0])
    memory.query(*data[1])  # batch 1 acknowledged; batch 2 pending
    real_write = os.write

    def full_disk(fd, chunk):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("shard-001/log-00000000.bin"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, chunk)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(DurabilityError, match="shard-001"):
        memory.query(*data[2])
    assert memory.pending is not None and memory.pending.seq == 2  # kept, not lost
    monkeypatch.undo()
    memory.query(*data[2])  # sent again: shard 0 answers from its record, shard 1 applies
    memory.flush()
    status = memory.status()
    assert [st["updates"] for st in status] == [3, 3] and status[0]["duplicates"] == 1
    again = ShardedMemory(s, LocalShards([MemoryShard(s, i) for i in range(2)]))
    a, b = memory.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
