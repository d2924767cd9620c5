"""Concurrent writers as real Ray clients of one named memory (issue 15, item 6): inserts never
evict while empty slots remain anywhere and never share a slot."""

import pytest
from test_concurrent_writers import assert_no_entry_lost, run_writers  # the threads' harness

from lifelong.distributed import MemorySpec, create_memory

pytestmark = pytest.mark.ray


def test_four_ray_clients_never_evict_while_empty_slots_remain_and_never_share_a_slot(
        ray_local, tmp_path):
    memory = create_memory(MemorySpec(name="conc", key_dim=16, num_slots=32, num_values=1000,
                                      shards=4, choose_k=4, age_noise=0.0,
                                      storage=str(tmp_path), num_cpus=0.5))
    results = run_writers(memory, writers=4, rounds=1, batch=8)  # 32 inserts, 32 slots
    assert sum(len(slots) for _, slots in results) == 4 * 8
    assert_no_entry_lost(memory, results)
