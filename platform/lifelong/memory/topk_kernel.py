"""Streaming top-k over similarity blocks on CPU (numba).

``torch.topk`` over a million columns costs as much as the similarity product itself here, and
sorts most of what it reads. A running top-k needs far less: each query keeps a threshold (its
k-th best so far), and an element matters only if it beats it, which after the first few thousand
slots almost none do (about k ln(N/k) per query over N slots). The kernel compares 16 queries at
once against a contiguous array of thresholds and, on a hit, appends the element to the query's
candidate buffer. When a buffer fills up (``capacity`` entries) it is cut back to its k best with
one selection (``np.partition``), which raises the threshold. Appending instead of keeping a heap
makes a hit cost two stores instead of a sift through the heap.

Rows are split between threads, each with buffers of its own; ``result`` merges them.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

_LANES = 16  # queries compared at once


@njit(nogil=True, cache=True)
def _cut_to_k(sims, slots, count, k, scratch_sims, scratch_slots):
    """Keeps the k best of sims[:count] (ties: earliest entries), returns the k-th best value."""
    kth = np.partition(sims[:count].copy(), count - k)[count - k]
    kept = 0
    for i in range(count):
        if sims[i] > kth:
            scratch_sims[kept] = sims[i]
            scratch_slots[kept] = slots[i]
            kept += 1
    for i in range(count):
        if kept < k and sims[i] == kth:
            scratch_sims[kept] = sims[i]
            scratch_slots[kept] = slots[i]
            kept += 1
    sims[:k] = scratch_sims[:k]
    slots[:k] = scratch_slots[:k]
    return kth


def _push_block_impl(block, values, offset, cand_sims, cand_slots, counts, thresholds, k):
    """Offers every (slot, query) similarity of ``block`` [R, B] to the buffers [T, B, cap].

    Rows whose value is negative (empty slots) are skipped.
    """
    threads, batch, capacity = cand_sims.shape
    rows = block.shape[0]
    per_thread = (rows + threads - 1) // threads
    for t in prange(threads):
        sims_t, slots_t = cand_sims[t], cand_slots[t]
        counts_t, thr_t = counts[t], thresholds[t]
        scratch_sims = np.empty(capacity, dtype=np.float32)
        scratch_slots = np.empty(capacity, dtype=np.int64)
        for r in range(t * per_thread, min(rows, (t + 1) * per_thread)):
            if values[r] < 0:
                continue
            row = block[r]
            for first in range(0, batch, _LANES):
                last = min(batch, first + _LANES)
                hits = 0
                for b in range(first, last):
                    hits += row[b] > thr_t[b]
                if hits == 0:
                    continue
                for b in range(first, last):
                    if row[b] > thr_t[b]:
                        n = counts_t[b]
                        sims_t[b, n] = row[b]
                        slots_t[b, n] = offset + r
                        n += 1
                        if n == capacity:
                            thr_t[b] = _cut_to_k(sims_t[b], slots_t[b], n, k,
                                                 scratch_sims, scratch_slots)
                            n = k
                        counts_t[b] = n


# Two compilations of one body: across threads, and on the calling thread alone (for small
# blocks, where waking another thread pool costs more than the scan).
_push_block = njit(parallel=True, nogil=True, cache=True)(_push_block_impl)
_push_block_serial = njit(nogil=True, cache=True)(_push_block_impl)


class RunningTopK:
    """Running top-k of B queries, fed block by block.

    Args:
        batch: B, the number of queries.
        k: how many best slots to keep per query.
        threads: buffers per query (one per thread); default numba's thread count.
        capacity: buffer entries per query before it is cut back to k (default 4k).
    """

    def __init__(self, batch: int, k: int, threads: int | None = None,
                 capacity: int | None = None):
        self.threads = threads or numba.get_num_threads()
        self.k = k
        capacity = capacity or 4 * k
        if capacity <= k:
            raise ValueError("capacity must exceed k")
        self.sims = np.empty((self.threads, batch, capacity), dtype=np.float32)
        self.slots = np.empty((self.threads, batch, capacity), dtype=np.int64)
        self.counts = np.zeros((self.threads, batch), dtype=np.int64)
        self.thresholds = np.full((self.threads, batch), -np.inf, dtype=np.float32)

    def push_block(self, block: np.ndarray, values: np.ndarray, offset: int) -> None:
        """Offers a block of similarities.

        Args:
            block: [R, B] float32 similarities of slots offset .. offset + R - 1.
            values: [R] int64 their values; negative marks an empty slot, which is skipped.
            offset: slot id of the block's first row.
        """
        push = _push_block if self.threads > 1 else _push_block_serial
        push(block, values, offset, self.sims, self.slots, self.counts, self.thresholds, self.k)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best per query: sims [B, k] (-inf where fewer were offered), slots [B, k]."""
        batch, capacity = self.sims.shape[1], self.sims.shape[2]
        sims = torch.from_numpy(self.sims).permute(1, 0, 2).reshape(batch, -1)
        slots = torch.from_numpy(self.slots).permute(1, 0, 2).reshape(batch, -1)
        filled = torch.arange(capacity) < torch.from_numpy(self.counts).unsqueeze(2)
        sims = sims.masked_fill(~filled.permute(1, 0, 2).reshape(batch, -1), float("-inf"))
        top, pos = sims.topk(self.k, dim=1)
        return top, torch.where(torch.isinf(top), 0, slots.gather(1, pos))
