"""ShardedMemory against Memory: with age noise 0 and the exact search, step for step equal."""

import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.errors import InvalidLabelError, InvalidQueryError, MemoryNameError
from lifelong.memory import Memory


def scripted_batches(steps=25, batch=8, d=16, values=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(values, d, generator=gen)
    for _ in range(steps):
        labels = torch.randint(0, values, (batch,), generator=gen)
        q = centres[labels] + 0.7 * torch.randn(batch, d, generator=gen)
        yield q, labels


def run_pair(sharded, local, steps=25, batch=8, use_labels_every=1):
    for step, (q, labels) in enumerate(scripted_batches(steps, batch)):
        q1 = q.clone().requires_grad_(True)
        q2 = q.clone().requires_grad_(True)
        with_labels = step % use_labels_every == 0
        a = local.query(q1, labels if with_labels else None)
        b = sharded.query(q2, labels if with_labels else None)
        assert torch.equal(a.values, b.values), f"prediction differs at step {step}"
        assert torch.equal(a.slots, b.slots)
        torch.testing.assert_close(a.similarities, b.similarities)
        if with_labels:
            torch.testing.assert_close(a.loss, b.loss)
            a.loss.backward()
            b.loss.backward()
            torch.testing.assert_close(q1.grad, q2.grad)
            assert torch.equal(a.written_slots, b.written_slots)


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_sharded_memory_equals_memory_step_for_step(shards):
    spec = MemorySpec(name="parity", key_dim=16, num_slots=61, num_values=12, shards=shards,
                      choose_k=7, age_noise=0.0, storage="unused")
    sharded = ShardedMemory.local(spec)
    local = Memory(key_dim=16, num_slots=61, num_values=12, choose_k=7, age_noise=0.0)
    run_pair(sharded, local, steps=30, batch=8, use_labels_every=1)
    a, b = local.state_dict(), sharded.state_dict()
    torch.testing.assert_close(a["keys"], b["keys"])
    for name in ("values", "ages", "recent_slots"):
        assert torch.equal(a[name], b[name]), name


def test_bad_queries_change_nothing():
    spec = MemorySpec(name="bad", key_dim=4, num_slots=10, num_values=3, shards=2,
                      storage="unused")
    mem = ShardedMemory.local(spec)
    mem.query(torch.randn(2, 4), torch.tensor([0, 1]))
    before = mem.state_dict()
    for q, y, err in [(torch.randn(2, 5), None, InvalidQueryError),
                      (torch.randn(2, 4).double(), None, InvalidQueryError),
                      (torch.tensor([[float("nan"), 0, 0, 0]]), None, InvalidQueryError),
                      (torch.randn(2, 4), torch.tensor([0, 3]), InvalidLabelError),
                      (torch.randn(2, 4), torch.tensor([0.0, 1.0]), InvalidLabelError)]:
        with pytest.raises(err):
            mem.query(q, y)
    after = mem.state_dict()
    for name in before:
        assert torch.equal(before[name], after[name])


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 65, "a..b", None])
def test_names_that_escape_the_storage_location_are_refused(name):
    with pytest.raises(MemoryNameError):
        MemorySpec(name=name, key_dim=4, num_slots=10, num_values=3, storage="/tmp")


def test_unlabelled_queries_in_between_change_nothing_but_the_answer():
    spec = MemorySpec(name="mixed", key_dim=16, num_slots=40, num_values=12, shards=2,
                      choose_k=5, age_noise=0.0, storage="unused")
    sharded = ShardedMemory.local(spec)
    local = Memory(key_dim=16, num_slots=40, num_values=12, choose_k=5, age_noise=0.0)
    run_pair(sharded, local, steps=20, batch=6, use_labels_every=2)
    a, b = local.state_dict(), sharded.state_dict()
    for name in ("values", "ages", "recent_slots"):
        assert torch.equal(a[name], b[name]), name


def test_concurrent_style_writers_never_share_a_slot_with_noise():
    spec = MemorySpec(name="noisy", key_dim=8, num_slots=64, num_values=50, shards=3,
                      choose_k=4, age_noise=8.0, storage="unused")
    mem = ShardedMemory.local(spec)
    other = ShardedMemory(spec, mem.shards)  # a second writer on the same shards
    gen = torch.Generator().manual_seed(3)
    for step in range(20):
        for client in (mem, other):
            q = torch.randn(8, 8, generator=gen)
            out = client.query(q, torch.randint(0, 50, (8,), generator=gen))
            inserted = out.written_slots[~out.correct].tolist()
            assert len(set(inserted)) == len(inserted)
    assert mem.occupancy() == 64


def test_loaded_state_then_equal_steps():
    torch.manual_seed(2)
    local = Memory(key_dim=16, num_slots=61, num_values=12, choose_k=7, age_noise=0.0)
    for q, y in scripted_batches(steps=10, batch=8, seed=9):
        local.query(q, y)
    spec = MemorySpec(name="loaded", key_dim=16, num_slots=61, num_values=12, shards=2,
                      choose_k=7, age_noise=0.0, storage="unused")
    sharded = ShardedMemory.local(spec)
    sharded.load_state_dict(local.state_dict())
    local.recent_slots.fill_(-1)  # loading starts the recent-slot table afresh
    run_pair(sharded, local, steps=10, batch=8)
    a, b = local.state_dict(), sharded.state_dict()
    for name in ("values", "ages"):
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("key_dtype", ["bfloat16", "float16"])
def test_a_compact_sharded_memory_equals_a_compact_memory_and_survives_a_restart(
        tmp_path, key_dtype):
    """Compact keys in shards: step for step a local Memory of the same key_dtype (the write
    records are float32, narrowed exactly when applied), the state in that dtype, and a restart
    (snapshot + log replay) answers identically."""
    from lifelong.distributed.client import LocalShards
    from lifelong.distributed.shard import MemoryShard

    spec = MemorySpec(name="compact", key_dim=16, num_slots=61, num_values=12, shards=2,
                      choose_k=7, age_noise=0.0, storage=str(tmp_path), snapshot_every=11,
                      key_dtype=key_dtype)
    sharded = ShardedMemory.local(spec, durable=True)
    local = Memory(key_dim=16, num_slots=61, num_values=12, choose_k=7, age_noise=0.0,
                   key_dtype=key_dtype)
    run_pair(sharded, local, steps=30, batch=8, use_labels_every=1)
    a, b = local.state_dict(), sharded.state_dict()
    assert b["keys"].dtype == getattr(torch, key_dtype)
    for name in ("keys", "values", "ages", "recent_slots"):
        assert torch.equal(a[name], b[name]), name
    sharded.flush()
    again = ShardedMemory(spec, LocalShards([MemoryShard(spec, i) for i in range(2)]))
    c = again.state_dict()
    for name in ("keys", "values", "ages", "recent_slots"):
        assert torch.equal(a[name], c[name]), name
    q = torch.randn(5, 16, generator=torch.Generator().manual_seed(9))
    x, y = local.query(q), again.query(q)
    assert torch.equal(x.slots, y.slots) and torch.equal(x.similarities, y.similarities)
    run_pair(again, local, steps=5, batch=8)  # and it goes on learning in step


def test_a_compact_sharded_memory_loads_a_local_state_as_bench_sharded_does():
    """bench_sharded's use: a full local memory (bench_memory.make_memory) loaded into a sharded
    memory of the same key_dtype answers with the same top-k, and steps."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_memory import BenchConfig, make_memory, memory_step

    cfg = BenchConfig(key_dim=16, choose_k=8, batches=(4,), slots=(300,))
    local = make_memory(300, cfg, "bfloat16")
    spec = MemorySpec(name="bench", key_dim=16, num_slots=300, num_values=local.num_values,
                      shards=2, choose_k=8, storage="unused", key_dtype="bfloat16")
    sharded = ShardedMemory.local(spec)
    sharded.load_state_dict(local.state_dict())
    assert torch.equal(sharded.state_dict()["keys"], local.keys)
    q = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
    a, b = local.query(q), sharded.query(q)
    assert torch.equal(a.slots, b.slots) and torch.equal(a.values, b.values)
    memory_step(sharded, q, torch.tensor([1, 2, 3, 4]))
