"""Streaming top-k over similarity blocks on CPU: one k-element min-heap per query (numba).

``torch.topk`` over a million columns costs as much as the similarity product itself here, and
sorts most of what it reads. A running top-k needs far less: once a query's heap is full, an
element enters only if it beats the heap's root (the k-th best so far), which after the first few
thousand slots almost none do (about k ln(N/k) entries per query over N slots). The kernel checks
16 queries at a time with one vectorised compare against a contiguous copy of the roots and
touches the heap only on a hit, so selection is close to one streaming pass over the block.

Rows are split between threads, each with heaps of its own; ``result`` merges them.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

_LANES = 16  # queries compared at once: one AVX-512 register of float32


@njit(inline="always")
def _replace_root(heap_sims, heap_slots, roots, b, sim, slot, k):
    """Replaces the root of query b's min-heap with (sim, slot) and restores the heap order."""
    i = 0
    while True:
        child = 2 * i + 1
        if child >= k:
            break
        if child + 1 < k and heap_sims[b, child + 1] < heap_sims[b, child]:
            child += 1
        if heap_sims[b, child] >= sim:
            break
        heap_sims[b, i] = heap_sims[b, child]
        heap_slots[b, i] = heap_slots[b, child]
        i = child
    heap_sims[b, i] = sim
    heap_slots[b, i] = slot
    roots[b] = heap_sims[b, 0]


@njit(parallel=True, nogil=True, cache=True)
def _push_block(block, values, offset, heap_sims, heap_slots, roots):
    """Offers every (slot, query) similarity of ``block`` [R, B] to the heaps [T, B, k].

    Rows whose value is negative (empty slots) are skipped; equal similarities keep the slot
    seen first.
    """
    threads, batch, k = heap_sims.shape
    rows = block.shape[0]
    per_thread = (rows + threads - 1) // threads
    for t in prange(threads):
        sims_t, slots_t, roots_t = heap_sims[t], heap_slots[t], roots[t]
        for r in range(t * per_thread, min(rows, (t + 1) * per_thread)):
            if values[r] < 0:
                continue
            row = block[r]
            for first in range(0, batch, _LANES):
                last = min(batch, first + _LANES)
                hit = False
                for b in range(first, last):
                    hit |= row[b] > roots_t[b]
                if hit:
                    for b in range(first, last):
                        if row[b] > roots_t[b]:
                            _replace_root(sims_t, slots_t, roots_t, b, row[b], offset + r, k)


class Heaps:
    """Running top-k of B queries, fed block by block.

    Args:
        batch: B, the number of queries.
        k: how many best slots to keep per query.
        threads: heaps per query (one per thread); default numba's thread count.
    """

    def __init__(self, batch: int, k: int, threads: int | None = None):
        self.threads = threads or numba.get_num_threads()
        self.k = k
        self.sims = np.full((self.threads, batch, k), -np.inf, dtype=np.float32)
        self.slots = np.zeros((self.threads, batch, k), dtype=np.int64)
        self.roots = np.full((self.threads, batch), -np.inf, dtype=np.float32)

    def push_block(self, block: np.ndarray, values: np.ndarray, offset: int) -> None:
        """Offers a block of similarities.

        Args:
            block: [R, B] float32 similarities of slots offset .. offset + R - 1.
            values: [R] int64 their values; negative marks an empty slot, which is skipped.
            offset: slot id of the block's first row.
        """
        _push_block(block, values, offset, self.sims, self.slots, self.roots)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best per query: sims [B, k] (-inf where fewer were offered), slots [B, k]."""
        batch = self.sims.shape[1]
        sims = torch.from_numpy(self.sims).permute(1, 0, 2).reshape(batch, -1)
        slots = torch.from_numpy(self.slots).permute(1, 0, 2).reshape(batch, -1)
        top, pos = sims.topk(self.k, dim=1)
        return top, slots.gather(1, pos)
