"""Concurrent writers of one sharded memory (issue 15, items 5-7): stale refreshes become
inserts, inserts never evict while empty slots remain and never share a slot, and the shards'
dedup tables stay bounded."""

import threading

import numpy as np
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.batches import ShardWrite
from lifelong.distributed.shard import MemoryShard


def spec(**kw):
    args = dict(name="conc", key_dim=16, num_slots=32, num_values=1000, shards=4, choose_k=4,
                age_noise=0.0, storage="/unused")
    args.update(kw)
    return MemorySpec(**args)


def client(memory: ShardedMemory) -> ShardedMemory:
    """Another writer (a fresh writer id) over the same shards."""
    return ShardedMemory(memory.spec, memory.shards)


def unit(i, d=16):
    return torch.eye(d)[i:i + 1]


def test_a_stale_refresh_becomes_an_insert_and_leaves_the_other_writers_entry_alone():
    memory = ShardedMemory.local(spec(num_slots=4, shards=2))
    for i in range(4):  # slot i holds e_i with class 10 + i; slot 0 is the oldest
        memory.query(unit(i), torch.tensor([10 + i]))
    a, b = client(memory), client(memory)
    out, plan = a.predict_and_plan(unit(0), torch.tensor([10]))
    assert bool(out.correct[0]) and plan.writes[0].refresh_slots.tolist() == [0]
    b_out = b.query(unit(5), torch.tensor([7]))  # B overwrites slot 0 with class 7
    assert b_out.written_slots.tolist() == [0]
    written = a.apply_update(plan)
    assert written.tolist() != [0]  # A's query was inserted, not blended into B's key
    state = memory.state_dict()
    torch.testing.assert_close(state["keys"][0], unit(5)[0])
    assert int(state["values"][0]) == 7
    assert memory.query(unit(5)).values.tolist() == [7]  # B's entry answers B's class
    assert memory.query(unit(0)).values.tolist() == [10]  # A's query answers A's class
    assert a.apply_update(plan).tolist() == written.tolist()  # a re-send: the same answer


def run_writers(memory, writers, rounds, batch, seed=0):
    """``writers`` threads, each a client of its own: every round they all search before
    any applies (a barrier), so their plans route inserts to the same empty slots."""
    barrier = threading.Barrier(writers)
    results, errors = [], []

    def work(t):
        try:
            me = client(memory)
            gen = torch.Generator().manual_seed(seed + t)
            for r in range(rounds):
                q = torch.randn(batch, memory.key_dim, generator=gen)
                labels = torch.arange(batch) + 1 + batch * (r + rounds * t)  # never correct
                _, plan = me.predict_and_plan(q, labels)
                barrier.wait()
                results.append((labels, me.apply_update(plan)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    return results


def assert_no_entry_lost(memory, results):
    labels = torch.cat([lab for lab, _ in results])
    slots = torch.cat([w for _, w in results])
    assert len(set(slots.tolist())) == len(slots), "two acknowledged inserts share a slot"
    assert memory.occupancy() == len(slots), "an entry was evicted while slots were empty"
    values = memory.state_dict()["values"]
    assert torch.equal(values[slots], labels)  # each acknowledged insert is where it was put


def test_concurrent_writers_never_evict_while_empty_slots_remain_and_never_share_a_slot():
    memory = ShardedMemory.local(spec())
    results = run_writers(memory, writers=4, rounds=1, batch=8)  # 32 inserts, 32 slots
    assert_no_entry_lost(memory, results)
    assert memory.occupancy() == memory.num_slots


def test_six_writers_over_several_rounds_with_age_noise_keep_every_entry():
    memory = ShardedMemory.local(spec(num_slots=80, shards=3, age_noise=4.0))
    results = run_writers(memory, writers=6, rounds=3, batch=4, seed=7)  # 72 of 80 slots
    assert_no_entry_lost(memory, results)


def one_insert(writer, seq, label, d=16):
    return ShardWrite(writer=writer, seq=seq, refresh_slots=np.zeros(0, np.int64),
                      refresh_q=np.zeros((0, d), np.float32),
                      refresh_labels=np.zeros(0, np.int64),
                      refresh_positions=np.zeros(0, np.int64),
                      insert_q=np.eye(d, dtype=np.float32)[label % d][None],
                      insert_labels=np.asarray([label], np.int64),
                      insert_positions=np.zeros(1, np.int64))


def test_the_dedup_table_stays_bounded_over_1000_fresh_writers_and_keeps_stream_writers():
    shard = MemoryShard(spec(shards=1), 0, durable=False)
    shard.writer_idle_updates = 50
    shard.apply(one_insert("stream:feed", 1, 1))
    sizes = []
    for i in range(1000):
        shard.apply(one_insert(f"{i:032x}", 1, i % 1000))
        shard.apply(one_insert(f"{i:032x}/1", 1, i % 1000))  # a re-route writer expires too
        sizes.append(len(shard.writers))
    assert max(sizes) <= 50 + 1
    assert "stream:feed" in shard.writers  # a named writer survives any idle time
    # the stream writer's retry is still recognised, its next batch still applies
    before = shard.status()["duplicates"]
    shard.apply(one_insert("stream:feed", 1, 1))
    assert shard.status()["duplicates"] == before + 1
    shard.apply(one_insert("stream:feed", 2, 2))
    assert shard.writers["stream:feed"][0] == 2


def test_a_resumed_writer_applies_each_step_redone_since_its_checkpoint_once():
    memory = ShardedMemory.local(spec(num_slots=64, shards=2))
    first = client(memory)
    gen = torch.Generator().manual_seed(3)
    step = lambda: (torch.randn(4, 16, generator=gen),  # noqa: E731
                    torch.randint(0, 1000, (4,), generator=gen))
    for _ in range(2):
        first.query(*step())
    checkpoint = (first.writer, first.seq)  # what a training checkpoint holds
    for _ in range(2):
        first.query(*step())  # applied; then the worker group dies
    before = memory.state_dict()
    again = client(memory)
    again.resume(*checkpoint)
    for _ in range(2):  # the redone steps: other queries (the encoder moved), same numbers
        out = again.query(*step())
        assert out.written_slots.tolist() == [-1] * 4
    after = memory.state_dict()
    for name in before:
        assert torch.equal(before[name], after[name]), name  # not applied a second time
    again.query(*step())  # the first step beyond what the shards applied is applied
    assert memory.occupancy() == 5 * 4
    assert again.seq == 5
