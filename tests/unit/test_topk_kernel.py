"""The streaming top-k kernel against torch.topk on the same numbers."""

import numpy as np
import pytest
import torch

from lifelong.memory.topk_kernel import RunningTopK


@pytest.mark.parametrize("parts,capacity,blocks", [(1, None, 1), (2, None, 3), (2, 9, 5),
                                                   (1, 5, 7), (3, 6, 40)])
def test_running_topk_matches_topk_over_all_blocks(parts, capacity, blocks):
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((1000, 37)).astype(np.float32)
    values = rng.integers(-1, 5, 1000)
    topk = RunningTopK(batch=37, k=4, parts=parts, capacity=capacity)
    for i, rows in enumerate(np.array_split(np.arange(1000), blocks)):
        topk.push_block(sims[rows], values[rows], int(rows[0]), part=i % parts)
    top, slots = topk.result()
    full = torch.from_numpy(sims).t().masked_fill(torch.from_numpy(values < 0), float("-inf"))
    expected = full.topk(4, dim=1)
    torch.testing.assert_close(top, expected.values)
    assert torch.equal(slots, expected.indices)


def test_fewer_filled_slots_than_k_give_minus_inf():
    topk = RunningTopK(batch=2, k=3, parts=2)
    block = np.array([[0.5, -0.5], [0.1, 0.2]], dtype=np.float32)
    topk.push_block(block, np.array([3, -1]), 10)
    top, slots = topk.result()
    assert top[:, 0].tolist() == [0.5, -0.5]
    assert torch.isinf(top[:, 1:]).all()
    assert slots[:, 0].tolist() == [10, 10]


def test_equal_similarities_keep_the_slot_seen_first():
    topk = RunningTopK(batch=1, k=2, parts=1, capacity=3)
    block = np.full((10, 1), 0.25, dtype=np.float32)
    topk.push_block(block, np.zeros(10, dtype=np.int64), 0)
    _, slots = topk.result()
    assert sorted(slots[0].tolist()) == [0, 1]


def test_ties_go_to_the_lowest_slot_across_parts_and_blocks():
    rng = np.random.default_rng(3)
    sims = rng.integers(0, 4, (600, 5)).astype(np.float32)  # heavy ties
    values = np.zeros(600, dtype=np.int64)
    topk = RunningTopK(batch=5, k=40, parts=3, capacity=50)
    for i, rows in enumerate(np.array_split(np.arange(600), 9)):
        topk.push_block(sims[rows], values[rows], int(rows[0]), part=(8 - i) % 3)
    top, slots = topk.result()
    for b in range(5):  # reference: sort by (similarity descending, slot ascending)
        order = sorted(range(600), key=lambda s: (-sims[s, b], s))[:40]
        assert slots[b].tolist() == order
        assert top[b].tolist() == [float(sims[s, b]) for s in order]


def test_first_block_bound_never_loses_a_neighbour():
    rng = np.random.default_rng(4)
    for rows, k in [(256, 64), (1000, 64), (5000, 7), (129, 64)]:
        sims = rng.standard_normal((rows, 3)).astype(np.float32)
        values = rng.integers(-1, 3, rows)
        topk = RunningTopK(batch=3, k=k)
        topk.push_block(sims, values, 0)
        top, slots = topk.result()
        full = torch.from_numpy(sims).t().masked_fill(torch.from_numpy(values < 0), float("-inf"))
        expected = full.topk(k, dim=1)
        torch.testing.assert_close(top, expected.values)
        assert torch.equal(slots, expected.indices)
