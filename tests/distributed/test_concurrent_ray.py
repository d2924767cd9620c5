"""Concurrent writers as real Ray clients of one named memory (issue 15, item 6): inserts never
evict while empty slots remain anywhere and never share a slot."""

import threading

import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory, create_memory

pytestmark = pytest.mark.ray


def test_four_ray_clients_never_evict_while_empty_slots_remain_and_never_share_a_slot(
        ray_local, tmp_path):
    memory = create_memory(MemorySpec(name="conc", key_dim=16, num_slots=32, num_values=1000,
                                      shards=4, choose_k=4, age_noise=0.0,
                                      storage=str(tmp_path), num_cpus=0.5))
    writers, batch = 4, 8
    barrier = threading.Barrier(writers)
    results, errors = [], []

    def work(t):
        try:
            me = ShardedMemory(memory.spec, memory.shards)  # its own writer id
            q = torch.randn(batch, 16, generator=torch.Generator().manual_seed(t))
            labels = torch.arange(batch) + 1 + batch * t  # distinct: every query an insert
            _, plan = me.predict_and_plan(q, labels)  # all search the empty memory first
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
    labels = torch.cat([lab for lab, _ in results])
    slots = torch.cat([w for _, w in results])
    assert len(set(slots.tolist())) == writers * batch, "two acknowledged inserts share a slot"
    assert memory.occupancy() == writers * batch, "an entry was evicted while slots were empty"
    assert torch.equal(memory.state_dict()["values"][slots], labels)
