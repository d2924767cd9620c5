"""The streaming top-k kernel against torch.topk on the same numbers."""

import numpy as np
import pytest
import torch

from lifelong.memory.topk_kernel import RunningTopK


@pytest.mark.parametrize("threads,capacity,blocks", [(1, None, 1), (2, None, 3), (2, 9, 5),
                                                     (1, 5, 7)])
def test_running_topk_matches_topk_over_all_blocks(threads, capacity, blocks):
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((1000, 37)).astype(np.float32)
    values = rng.integers(-1, 5, 1000)
    topk = RunningTopK(batch=37, k=4, threads=threads, capacity=capacity)
    for part in np.array_split(np.arange(1000), blocks):
        topk.push_block(sims[part], values[part], int(part[0]))
    top, slots = topk.result()
    full = torch.from_numpy(sims).t().masked_fill(torch.from_numpy(values < 0), float("-inf"))
    expected = full.topk(4, dim=1)
    torch.testing.assert_close(top, expected.values)
    assert torch.equal(slots, expected.indices)


def test_fewer_filled_slots_than_k_give_minus_inf():
    topk = RunningTopK(batch=2, k=3, threads=2)
    block = np.array([[0.5, -0.5], [0.1, 0.2]], dtype=np.float32)
    topk.push_block(block, np.array([3, -1]), 10)
    top, slots = topk.result()
    assert top[:, 0].tolist() == [0.5, -0.5]
    assert torch.isinf(top[:, 1:]).all()
    assert slots[:, 0].tolist() == [10, 10]


def test_equal_similarities_keep_the_slot_seen_first():
    topk = RunningTopK(batch=1, k=2, threads=1, capacity=3)
    block = np.full((10, 1), 0.25, dtype=np.float32)
    topk.push_block(block, np.zeros(10, dtype=np.int64), 0)
    _, slots = topk.result()
    assert sorted(slots[0].tolist()) == [0, 1]
