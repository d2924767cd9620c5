"""Streaming top-k over similarity blocks on CPU (numba).

``torch.topk`` over a million columns costs as much as the similarity product itself here, and
sorts most of what it reads. A running top-k needs far less: each query keeps a threshold (its
k-th best so far), and an element matters only if it beats it, which after the first few thousand
slots almost none do (about k ln(N/k) per query over N slots).

* Threshold from the first block: the block's rows are grouped into at least k tiles; the k-th
  largest of a query's tile maxima is a lower bound of its k-th best similarity (k tiles hold an
  element at least that large), and only slightly below it, so the first block already yields
  few more than k candidates per query instead of thousands.
* Scan: the kernel reads a block [R, B] (slots x queries, the layout the BLAS product writes
  fastest) in tiles of ``TILE`` rows, takes the column-wise maximum of the tile (element-wise
  maxima of whole rows, which vectorise) and compares it with the thresholds; only a column
  whose maximum beats its threshold is read again, and its hits are appended to the query's
  candidate buffer. A full buffer (``capacity`` entries) is cut back to its k best, which raises
  the threshold.
* Order: candidates are ranked by one 64-bit key per entry, the similarity's bits (descending)
  above the slot id (ascending), so equal similarities go to the lowest slot id in every cut and
  in the final sort, whatever the blocks and threads were.

A ``RunningTopK`` has several ``parts``, each with buffers of its own, so that threads can feed
disjoint slot ranges at once without sharing anything; ``result`` merges them.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

TILE = 16  # rows whose column maxima are compared with the thresholds at once
_LOW_BITS = np.uint64(32)
_SLOT_MASK = np.uint64(0xFFFFFFFF)


@njit(nogil=True, cache=True)
def _rank_keys(sims, slots, count, out):
    """out[i] = a uint64 that sorts ascending as (sims[i] descending, slots[i] ascending)."""
    bits = sims[:count].view(np.int32)
    for i in range(count):
        b = np.int64(bits[i])
        if b < 0:  # negative floats: flip the magnitude bits so that integer order = float order
            b ^= 0x7FFFFFFF
        out[i] = (np.uint64(2**31 - 1 - b) << _LOW_BITS) | np.uint64(slots[i])


@njit(nogil=True, cache=True)
def _cut_to_k(sims, slots, count, k, keys, scratch_sims, scratch_slots):
    """Keeps the k best of the first ``count`` entries, in their order; returns the k-th best."""
    _rank_keys(sims, slots, count, keys)
    kth_key = np.partition(keys[:count], k - 1)[k - 1]  # a sorted copy: keys stay in order
    kept = 0
    kth = sims[0]
    for i in range(count):
        if keys[i] <= kth_key:
            scratch_sims[kept] = sims[i]
            scratch_slots[kept] = slots[i]
            if keys[i] == kth_key:
                kth = sims[i]
            kept += 1
    sims[:k] = scratch_sims[:k]
    slots[:k] = scratch_slots[:k]
    return kth


@njit(nogil=True, cache=True)
def _tile_maxima(block, values, group):
    """[ceil(R / group), B] column-wise maxima of each ``group`` rows, empty slots left out."""
    rows, batch = block.shape
    tiles = -(-rows // group)
    maxima = np.full((tiles, batch), -np.inf, dtype=np.float32)
    for t in range(tiles):
        for r in range(t * group, min(rows, (t + 1) * group)):
            if values[r] < 0:
                continue
            for b in range(batch):
                sim = block[r, b]
                maxima[t, b] = sim if sim > maxima[t, b] else maxima[t, b]  # vectorises
    return maxima


def _bound_thresholds(maxima: np.ndarray, k: int) -> np.ndarray:
    """[B] thresholds just below the k-th largest of each query's tile maxima [T >= k, B]
    (strict > then keeps an element equal to the bound). numpy's partition: numba's is slow
    when called once per query in a loop."""
    tiles = maxima.shape[0]
    bound = np.partition(maxima.T, tiles - k, axis=1)[:, tiles - k]
    return np.nextafter(bound, np.float32(-np.inf)).astype(np.float32)


@njit(nogil=True, cache=True)
def _push_block(block, values, offset, maxima, sims, slots, counts, thresholds, k):
    """Offers every (slot, query) similarity of ``block`` [R, B] to the buffers [B, capacity].

    maxima: [ceil(R / TILE), B] the block's tile maxima (``_tile_maxima``). Slots whose value
    is negative (empty) never enter a buffer. Runs on the calling thread and releases the GIL.
    Within a query, hits arrive in slot order.
    """
    rows, batch = block.shape
    capacity = sims.shape[1]
    keys = np.empty(capacity, dtype=np.uint64)
    scratch_sims = np.empty(capacity, dtype=np.float32)
    scratch_slots = np.empty(capacity, dtype=np.int64)
    for t in range(maxima.shape[0]):
        for b in range(batch):
            if not maxima[t, b] > thresholds[b]:
                continue
            for r in range(t * TILE, min(rows, (t + 1) * TILE)):
                sim = block[r, b]
                if sim > thresholds[b] and values[r] >= 0:
                    n = counts[b]
                    sims[b, n] = sim
                    slots[b, n] = offset + r
                    n += 1
                    if n == capacity:
                        thresholds[b] = _cut_to_k(sims[b], slots[b], n, k, keys,
                                                  scratch_sims, scratch_slots)
                        n = k
                    counts[b] = n


@njit(nogil=True, cache=True)
def _rank_all(sims, slots, counts, out_keys):
    """Rank keys of every buffered entry [P, B, cap] side by side: out_keys [B, W] (W at least
    each query's entry count; the maximum uint64 pads)."""
    parts, batch, capacity = sims.shape
    for b in range(batch):
        n = 0
        for p in range(parts):
            c = counts[p, b]
            _rank_keys(sims[p, b], slots[p, b], c, out_keys[b, n:n + c])
            n += c
        out_keys[b, n:] = np.iinfo(np.uint64).max


def _decode(ranked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverts _rank_keys: [B, k] uint64 -> similarities float32 (-inf for padding), slots."""
    slots = (ranked & _SLOT_MASK).astype(np.int64)
    bits = np.int64(2**31 - 1) - (ranked >> _LOW_BITS).astype(np.int64)
    bits = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits).astype(np.int32)
    padding = ranked == np.iinfo(np.uint64).max
    sims = np.where(padding, np.float32(-np.inf), bits.view(np.float32))
    return sims, np.where(padding, 0, slots)


class RunningTopK:
    """Running top-k of B queries, fed block by block.

    Args:
        batch: B, the number of queries.
        k: how many best slots to keep per query.
        parts: independent sets of buffers; threads that feed disjoint slot ranges at once each
            use their own part.
        capacity: buffer entries per query before it is cut back to k (default 4k).
    """

    def __init__(self, batch: int, k: int, parts: int = 1, capacity: int | None = None):
        self.k = k
        capacity = capacity or 4 * k
        if capacity <= k or parts < 1:
            raise ValueError("capacity must exceed k and parts be >= 1")
        self.sims = np.empty((parts, batch, capacity), dtype=np.float32)
        self.slots = np.empty((parts, batch, capacity), dtype=np.int64)
        self.counts = np.zeros((parts, batch), dtype=np.int64)
        self.thresholds = np.full((parts, batch), -np.inf, dtype=np.float32)

    def push_block(self, block: np.ndarray, values: np.ndarray, offset: int,
                   part: int = 0, maxima: np.ndarray | None = None) -> None:
        """Offers a block of similarities.

        Args:
            block: [R, B] float32 similarities of slots offset .. offset + R - 1.
            values: [R] int64 their values; negative marks an empty slot, which is skipped.
            offset: slot id of the block's first row.
            part: which buffers to feed (one thread per part at a time).
            maxima: [ceil(R / TILE), B] the block's column maxima per TILE rows, empty slots
                left out, where the caller already has them (the fused kernel writes them);
                computed here otherwise.
        """
        k, rows = self.k, block.shape[0]
        if maxima is None:
            maxima = _tile_maxima(block, values, TILE)
        thresholds = self.thresholds[part]
        if rows >= k and not self.counts[part].any() and np.isneginf(thresholds).all():
            # The first block: start from the tile-maxima bound instead of -inf. With fewer
            # than 2k tiles of TILE rows the bound is loose: use smaller tiles for it.
            bound_from = maxima if maxima.shape[0] >= 2 * k else \
                _tile_maxima(block, values, max(1, rows // (2 * k)))
            thresholds[:] = _bound_thresholds(bound_from, k)
        _push_block(block, values, offset, maxima, self.sims[part], self.slots[part],
                    self.counts[part], thresholds, k)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best per query, best first, equal similarities by slot id.

        Returns:
            sims: [B, k] float32, -inf where fewer than k non-empty slots were offered.
            slots: [B, k] int64 (0 for -inf entries).
        """
        width = max(self.k, int(self.counts.sum(axis=0).max()))
        ranked = np.empty((self.sims.shape[1], width), dtype=np.uint64)
        _rank_all(self.sims, self.slots, self.counts, ranked)
        if width > self.k:  # numpy's partition and sort: numba's are slow in a loop here
            ranked = np.partition(ranked, self.k - 1, axis=1)[:, : self.k]
        ranked.sort(axis=1)
        sims, slots = _decode(ranked)
        return torch.from_numpy(sims), torch.from_numpy(slots)
