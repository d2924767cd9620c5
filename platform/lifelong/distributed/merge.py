"""The client's merge of the shards' top-k lists into the global top-k (numba).

Each shard answers its k' best slots per query, best first, equal similarities by slot id, and
shard s holds lower slot ids than shard s + 1. The global order (similarity descending, slot id
ascending, the order of ``lifelong.memory`` searches) is then an S-way merge that prefers the
lower shard on equal similarities: O(k S) per query, where a sort of the S k' entries costs
O(S k' log(S k')) and, in numpy, several passes and copies.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def _merge(sims, slots, values, offsets, k, out_sims, out_slots, out_values, out_source):
    shards, batch, width = sims.shape
    heads = np.zeros(shards, dtype=np.int64)
    for b in range(batch):
        heads[:] = 0
        for j in range(k):
            best = -1
            best_sim = np.float32(-np.inf)
            for s in range(shards):
                h = heads[s]
                if h < width and (best < 0 or sims[s, b, h] > best_sim):
                    best, best_sim = s, sims[s, b, h]
            if best < 0 or best_sim == -np.inf:  # every list is spent, or only empty entries
                out_sims[b, j:] = -np.inf
                out_slots[b, j:] = -1
                out_values[b, j:] = -1
                out_source[b, j:] = -1
                break
            h = heads[best]
            out_sims[b, j] = best_sim
            out_slots[b, j] = slots[best, b, h] + offsets[best]
            out_values[b, j] = values[best, b, h]
            out_source[b, j] = best
            heads[best] = h + 1


def merge_topk(sims: np.ndarray, slots: np.ndarray, values: np.ndarray, offsets: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The global top-k of S shards' lists.

    Args:
        sims: [S, B, k'] float32 each shard's similarities, best first, -inf past its filled
            slots; slots / values: [S, B, k'] its local slot ids and their values.
        offsets: [S] int64 the global id of each shard's local slot 0 (ascending).
        k: how many to keep, k <= S k'.

    Returns:
        sims [B, k] float32, slots [B, k] int64 global ids, values [B, k] int64, and source
        [B, k] int64, the shard each entry came from; -inf / -1 / -1 / -1 past the filled
        slots.
    """
    _, batch, _ = sims.shape
    out_sims = np.empty((batch, k), dtype=np.float32)
    out_slots = np.empty((batch, k), dtype=np.int64)
    out_values = np.empty((batch, k), dtype=np.int64)
    out_source = np.empty((batch, k), dtype=np.int64)
    _merge(sims, slots, values, offsets, k, out_sims, out_slots, out_values, out_source)
    return out_sims, out_slots, out_values, out_source
