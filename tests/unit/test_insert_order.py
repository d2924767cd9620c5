"""The incrementally kept insert order (memory/insert_order.py, docs/design.md §1.5 and §3.4)
against brute-force recounts, the balance of a fresh sharded memory, and the cost per apply."""

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.shard import MemoryShard, ShardWrite
from lifelong.memory import Memory
from lifelong.memory.insert_order import EMPTY_BONUS, slot_rank
from memory_reference import golden_rank

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def brute_order(mem, offset=0, total=None):
    """(scores [N], slots [N]) of every slot: score descending, ties by global rank (a full
    sort of all N, independent of the module's queues)."""
    total = total or mem.num_slots
    rank = golden_rank(total)
    ages = (mem.clock - mem.write_time).tolist()
    values = mem.values.tolist()
    score = [a + (EMPTY_BONUS if v < 0 else 0) for a, v in zip(ages, values)]
    order = sorted(range(mem.num_slots), key=lambda s: (-score[s], rank[s + offset]))
    return [score[s] for s in order], order


def random_step(mem, gen, kind):
    """One random change of the state: a write of distinct slots (a few emptied, a few with a
    clock jump), a load_state_dict with random ages, or a clear."""
    n, d = mem.num_slots, mem.key_dim
    dev = mem.keys.device
    if kind == "load":
        values = torch.randint(-1, mem.num_values, (n,), generator=gen)
        ages = torch.randint(0, 6, (n,), generator=gen)
        mem.load_state_dict({"keys": F.normalize(torch.randn(n, d, generator=gen), dim=1),
                             "values": values, "ages": ages,
                             "recent_slots": torch.full((mem.num_values,), -1)})
    elif kind == "clear":
        mem.clear()
    else:
        w = int(torch.randint(1, 9, (1,), generator=gen))
        slots = torch.randperm(n, generator=gen)[:w]
        values = torch.randint(0 if kind == "write" else -1, mem.num_values, (w,), generator=gen)
        clock = int(mem.clock) + (1 if kind != "jump" else 3)
        mem.apply_write(slots.to(dev), F.normalize(torch.randn(w, d, generator=gen), dim=1).to(dev),
                        values.to(dev), clock=clock if kind == "jump" else None)


def kinds(gen, steps):
    choices = ["write"] * 20 + ["empty", "jump", "load", "clear"]
    return [choices[int(i)] for i in torch.randint(0, len(choices), (steps,), generator=gen)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offset,total", [(0, None), (40, 131)])
def test_incremental_choice_equals_a_full_sort_over_long_random_traffic(device, offset, total):
    gen = torch.Generator().manual_seed(11)
    mem = Memory(key_dim=4, num_slots=53, num_values=5, choose_k=4, age_noise=0,
                 slot_offset=offset, total_slots=total).to(device)
    for step, kind in enumerate(kinds(gen, 600)):
        random_step(mem, gen, kind)
        scores, order = brute_order(mem, offset, total)
        count = int(torch.randint(1, 20, (1,), generator=gen))
        got_scores, got = mem.oldest_candidates(count)
        assert got.tolist() == order[:count] and got_scores.tolist() == scores[:count], step
        exclude = torch.tensor(order[:3] + order[10:12])
        expected = [s for s in order if s not in set(exclude.tolist())][:count]
        assert mem.oldest_slots(count, exclude=exclude.to(device)).tolist() == expected, step
        filled = [a for a, v in zip(mem.ages.tolist(), mem.values.tolist()) if v >= 0]
        assert mem.occupancy() == len(filled)
        assert mem.oldest_age() == (max(filled) if filled else 0)


def test_slot_rank_is_a_bijection_that_spreads_consecutive_ranks():
    for n in (1, 2, 3, 8, 12, 61, 256, 4096, 10007):
        rank = slot_rank(np.arange(n, dtype=np.int64), n)
        assert sorted(rank.tolist()) == list(range(n))
        assert rank.tolist() == golden_rank(n)
        assert torch.equal(slot_rank(torch.arange(n), n), torch.from_numpy(rank))


@pytest.mark.parametrize("noise", [0.5, 2.0, 8.0])
def test_noisy_choice_lies_in_the_window_of_the_noiseless_one(noise):
    gen = torch.Generator().manual_seed(12)
    mem = Memory(key_dim=4, num_slots=97, num_values=5, choose_k=4, age_noise=noise, seed=3)
    chosen_beyond = 0
    for step, kind in enumerate(kinds(gen, 400)):
        random_step(mem, gen, kind)
        scores, order = brute_order(mem)
        score = dict(zip(order, scores))
        exclude = set(order[:2])
        allowed = [s for s in order if s not in exclude]
        count = int(torch.randint(1, 12, (1,), generator=gen))
        got = mem.oldest_slots(count, exclude=torch.tensor(sorted(exclude))).tolist()
        assert len(set(got)) == count and not set(got) & exclude
        empties = [s for s in allowed if score[s] >= EMPTY_BONUS][:count]
        assert got[:len(empties)] == empties  # empty slots first, in the noiseless order
        floor = score[allowed[count - 1]] - math.ceil(2 * noise)
        assert all(score[s] >= floor for s in got), step
        chosen_beyond += len(set(got) - set(allowed[:count]))
    assert chosen_beyond > 0  # the noise does move the choice


@pytest.mark.parametrize("shards", [2, 4])
def test_fresh_sharded_memory_fills_its_shards_evenly(shards):
    spec = MemorySpec(name="balance", key_dim=8, num_slots=4096, num_values=4096, shards=shards,
                      choose_k=4, age_noise=0.0, storage="unused")
    mem = ShardedMemory.local(spec)
    gen = torch.Generator().manual_seed(13)
    for step in range(32):  # distinct labels: every query is inserted
        labels = torch.arange(step * 64, step * 64 + 64)
        mem.query(torch.randn(64, 8, generator=gen), labels)
        occupied = [s["occupied"] for s in mem.status()]
        share = sum(occupied) / shards
        assert max(occupied) - min(occupied) <= max(4, 0.03 * share), (step, occupied)
    assert sum(occupied) == 2048


def test_shard_status_equals_a_recount_after_random_traffic():
    spec = MemorySpec(name="gauges", key_dim=8, num_slots=203, num_values=30, shards=3,
                      choose_k=4, age_noise=2.0, storage="unused")
    mem = ShardedMemory.local(spec)
    gen = torch.Generator().manual_seed(14)
    centres = torch.randn(30, 8, generator=gen)
    for step in range(120):
        labels = torch.randint(0, 30, (16,), generator=gen)
        mem.query(centres[labels] + 0.3 * torch.randn(16, 8, generator=gen), labels)
        if step == 60:  # a load rebuilds the order
            state = mem.state_dict()
            state["values"][::5] = -1
            mem.load_state_dict(state)
        for shard, status in zip(mem.shards.shards, mem.status()):
            values, ages = shard.memory.values, shard.memory.ages
            assert status["occupied"] == int((values >= 0).sum())
            assert status["oldest_age"] == max(ages[values >= 0].tolist(), default=0), step


def _apply_seconds(size, steps=60, batch=16):
    """Median seconds of one MemoryShard.apply (16 refreshes of the last step's inserts, 16
    inserts evicting with age noise 8) on a full shard of ``size`` slots, one write time each."""
    spec = MemorySpec(name="cost", key_dim=16, num_slots=size, num_values=1000, shards=1,
                      choose_k=4, age_noise=8.0, storage="unused")
    shard = MemoryShard(spec, 0, durable=False)
    gen = torch.Generator().manual_seed(15)
    shard.memory.load_slots(F.normalize(torch.randn(size, 16, generator=gen), dim=1),
                            torch.randint(0, 1000, (size,), generator=gen),
                            torch.randperm(size, generator=gen), size)
    times, refresh = [], np.zeros(0, dtype=np.int64)
    for seq in range(1, steps + 1):
        q = F.normalize(torch.randn(2 * batch, 16, generator=gen), dim=1).numpy()
        write = ShardWrite(
            writer="w", seq=seq, refresh_slots=refresh, refresh_q=q[batch:batch + len(refresh)],
            refresh_labels=shard.memory.values[torch.from_numpy(refresh)].numpy(),
            refresh_positions=np.arange(batch, batch + len(refresh)), insert_q=q[:batch],
            insert_labels=torch.randint(0, 1000, (batch,), generator=gen).numpy(),
            insert_positions=np.arange(batch), insert_empty=0, redo_after=-1)
        start = time.perf_counter()
        refresh = shard.apply(write)[:batch]  # the next step refreshes this step's inserts
        times.append(time.perf_counter() - start)
    return float(np.median(times[steps // 3:]))


def test_apply_cost_does_not_grow_with_the_memory_size():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops on a busy pool measure the pool, not the apply
    try:
        small = _apply_seconds(4096)
        large = _apply_seconds(1 << 20)  # 256x the slots
    finally:
        torch.set_num_threads(threads)
    assert large < 5 * small, (small, large)
