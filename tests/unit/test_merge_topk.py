"""The client's S-way merge of the shards' top-k lists (distributed/merge.py) against a
brute-force reference: sort every shard's entries by (similarity descending, global slot
ascending), the order of every lifelong search; and a sharded memory whose shards differ in
size (their lists differ in length) step for step equal to Memory."""

import numpy as np
import pytest
import torch

from lifelong.distributed import MemorySpec, ShardedMemory
from lifelong.distributed.merge import merge_topk
from lifelong.memory import Memory


def shard_lists(rng, shards, batch, width, offsets, filled, ties):
    """Each shard's lists as a search answers them: best first, equal sims by slot id, -inf
    (slot -1, value -1) past its filled slots."""
    sims = np.full((shards, batch, width), -np.inf, dtype=np.float32)
    slots = np.full((shards, batch, width), -1, dtype=np.int32)
    values = np.full((shards, batch, width), -1, dtype=np.int32)
    for s in range(shards):
        for b in range(batch):
            n = filled[s]
            local = rng.choice(64, size=n, replace=False)
            raw = rng.integers(0, 4, n) / 4 if ties else rng.standard_normal(n)
            order = np.lexsort((local, -raw))
            sims[s, b, :n] = raw[order]
            slots[s, b, :n] = local[order]
            values[s, b, :n] = rng.integers(0, 10, n)[order]
    return sims, slots, values


def reference(sims, slots, values, offsets, k):
    shards, batch, width = sims.shape
    out = []
    for b in range(batch):
        entries = [(-float(sims[s, b, j]), int(slots[s, b, j]) + int(offsets[s]), s, j)
                   for s in range(shards) for j in range(width) if np.isfinite(sims[s, b, j])]
        entries.sort()
        row = entries[:k] + [None] * (k - min(k, len(entries)))
        out.append(row)
    return out


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shards,filled,k", [(2, (7, 7), 7), (3, (7, 3, 0), 9), (4, (2, 7, 5, 7), 5),
                                             (1, (4,), 7)])
def test_the_merge_equals_a_full_sort_of_every_shards_entries(ties, shards, filled, k):
    rng = np.random.default_rng(shards * 10 + k + ties)
    width, batch = 7, 6
    offsets = np.arange(shards, dtype=np.int64) * 64
    sims, slots, values = shard_lists(rng, shards, batch, width, offsets, filled, ties)
    out_sims, out_slots, out_values, source = merge_topk(sims, slots, values, offsets, k)
    for b, row in enumerate(reference(sims, slots, values, offsets, k)):
        for j, entry in enumerate(row):
            if entry is None:  # fewer than k filled slots over all shards
                assert out_sims[b, j] == -np.inf and out_slots[b, j] == -1
                assert out_values[b, j] == -1 and source[b, j] == -1
                continue
            neg_sim, slot, s, pos = entry
            assert out_sims[b, j] == -neg_sim and out_slots[b, j] == slot
            assert out_values[b, j] == values[s, b, pos] and source[b, j] == s


def test_shards_of_unequal_sizes_equal_memory_step_for_step():
    # 13 slots over 3 shards (5, 4, 4) with choose_k 6: every shard answers fewer than k, in
    # lists of different lengths, which the client pads before it merges.
    spec = MemorySpec(name="ragged", key_dim=8, num_slots=13, num_values=5, shards=3,
                      choose_k=6, age_noise=0.0, storage="unused")
    sharded = ShardedMemory.local(spec)
    local = Memory(key_dim=8, num_slots=13, num_values=5, choose_k=6, age_noise=0.0)
    gen = torch.Generator().manual_seed(3)
    for step in range(25):
        q = torch.randn(4, 8, generator=gen)
        labels = torch.randint(0, 5, (4,), generator=gen)
        a, b = local.query(q, labels), sharded.query(q.clone(), labels)
        assert torch.equal(a.slots, b.slots), f"slots differ at step {step}"
        assert torch.equal(a.values, b.values) and torch.equal(a.written_slots, b.written_slots)
        torch.testing.assert_close(a.similarities, b.similarities)
        torch.testing.assert_close(a.loss, b.loss)
    for name in ("values", "ages", "recent_slots"):
        assert torch.equal(local.state_dict()[name], sharded.state_dict()[name]), name
