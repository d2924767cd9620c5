"""The fused exact-search kernel for small batches on CPU (numba): keys read once, similarities
computed in registers, tile maxima for the running top-k's threshold test taken on the way.

At a batch of a few queries the similarity product is a thin matrix product that BLAS runs far
below its peak rate (it packs the keys, then streams them through a kernel sized for large
batches). This kernel instead walks the slots two at a time and the queries two at a time:
each of the four dot products is a register accumulation over ``key_dim`` (vectorised by the
compiler), so every key is read once from memory and the queries stay in L1. Alongside the
[R, B] similarity block it writes the block's tile maxima ([ceil(R / TILE), B], empty slots left
out), which is what ``RunningTopK.push_block`` compares with the thresholds; the block itself is
small enough to stay in cache for the few rows the threshold test reads again.

Summation order: the compiler vectorises each dot product over ``key_dim`` (several float32
partial sums, fused multiply-adds, a final reduction of the lanes). The order is fixed for a
compiled kernel and does not depend on the block, the batch, the thread or the other queries, so
a (query, slot) similarity is the same number wherever it is computed by this kernel; it can
differ from BLAS's in the last bits (docs/design.md §1.2).

Compact keys: ``keys`` may be float32, or uint16 holding bfloat16 or float16 bits (the storage
of ``key_dtype`` bfloat16 / float16). Each pair of key rows is first widened exactly to float32
(bfloat16: the 16 bits shifted into the high half; float16: the IEEE conversion, subnormals
included), then multiplied in float32 as above.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lifelong.memory.topk_kernel import TILE

FLOAT32, BFLOAT16, FLOAT16 = 0, 1, 2  # how ``keys`` is stored (the ``kind`` argument)


@njit(nogil=True, cache=True)
def _widen_row(keys, row, kind, out):
    """out[:] = keys[row] as float32; keys: uint16 bits of bfloat16 (kind 1) or float16 (2)."""
    bits = out.view(np.uint32)
    d = keys.shape[1]
    if kind == BFLOAT16:
        for j in range(d):
            bits[j] = np.uint32(keys[row, j]) << np.uint32(16)
        return
    for j in range(d):
        h = np.uint32(keys[row, j])
        sign = (h & np.uint32(0x8000)) << np.uint32(16)
        exponent = (h >> np.uint32(10)) & np.uint32(0x1F)
        mantissa = h & np.uint32(0x3FF)
        if exponent == 0:  # zero or subnormal: mantissa * 2^-24, exact in float32
            value = np.float32(mantissa) * np.float32(5.9604644775390625e-08)
            out[j] = -value if sign else value
        elif exponent == 31:  # inf / nan
            bits[j] = sign | np.uint32(0x7F800000) | (mantissa << np.uint32(13))
        else:
            bits[j] = sign | ((exponent + np.uint32(112)) << np.uint32(23)) | \
                (mantissa << np.uint32(13))


@njit(nogil=True, cache=True, fastmath=True, inline="always")
def _dot2x2(k0, k1, q0, q1):
    d = k0.shape[0]
    s00 = np.float32(0.0)
    s01 = np.float32(0.0)
    s10 = np.float32(0.0)
    s11 = np.float32(0.0)
    for j in range(d):
        a0 = k0[j]
        a1 = k1[j]
        c0 = q0[j]
        c1 = q1[j]
        s00 += a0 * c0
        s01 += a0 * c1
        s10 += a1 * c0
        s11 += a1 * c1
    return s00, s01, s10, s11


@njit(nogil=True, cache=True, fastmath=True, inline="always")
def _pair(k0, k1, filled0, filled1, o0, o1, queries, out, maxima):
    """Rows o0 and o1 of ``out`` (keys k0, k1 [d] float32) and their tiles' maxima."""
    t0, t1 = o0 // TILE, o1 // TILE
    for b in range(0, queries.shape[0], 2):
        s00, s01, s10, s11 = _dot2x2(k0, k1, queries[b], queries[b + 1])
        out[o0, b] = s00
        out[o0, b + 1] = s01
        out[o1, b] = s10
        out[o1, b + 1] = s11
        if filled0:
            maxima[t0, b] = max(maxima[t0, b], s00)
            maxima[t0, b + 1] = max(maxima[t0, b + 1], s01)
        if filled1:
            maxima[t1, b] = max(maxima[t1, b], s10)
            maxima[t1, b + 1] = max(maxima[t1, b + 1], s11)


@njit(nogil=True, cache=True)
def _start_maxima(maxima, rows):
    for t in range((rows + TILE - 1) // TILE):
        for b in range(maxima.shape[1]):
            maxima[t, b] = -np.inf


@njit(nogil=True, cache=True, fastmath=True)
def _similarities_float32(keys, queries, values, first, last, out, maxima):
    _start_maxima(maxima, last - first)
    for r0 in range(first, last, 2):
        r1 = r0 + 1 if r0 + 1 < last else r0  # an odd last row is computed twice
        _pair(keys[r0], keys[r1], values[r0] >= 0, values[r1] >= 0, r0 - first, r1 - first,
              queries, out, maxima)


@njit(nogil=True, cache=True, fastmath=True)
def _similarities_compact(keys, kind, queries, values, first, last, out, maxima):
    _start_maxima(maxima, last - first)
    wide = np.empty((2, keys.shape[1]), dtype=np.float32)
    for r0 in range(first, last, 2):
        r1 = r0 + 1 if r0 + 1 < last else r0
        _widen_row(keys, r0, kind, wide[0])
        _widen_row(keys, r1, kind, wide[1])
        _pair(wide[0], wide[1], values[r0] >= 0, values[r1] >= 0, r0 - first, r1 - first,
              queries, out, maxima)


def fused_similarities(keys: np.ndarray, kind: int, queries: np.ndarray, values: np.ndarray,
                       first: int, last: int, out: np.ndarray, maxima: np.ndarray) -> None:
    """Similarities of slots first .. last - 1 with every query, and their tile maxima.

    Runs in numba and releases the GIL.

    Args:
        keys: [N, d] float32 (kind FLOAT32), or uint16 bits of bfloat16 / float16.
        kind: FLOAT32, BFLOAT16 or FLOAT16.
        queries: [B, d] float32, B even (the caller pads an odd batch with a copy of a query).
        values: [N] int64; slots with a negative value are left out of ``maxima``.
        first, last: the slot range; R = last - first.
        out: [R, B] float32, receives the similarities.
        maxima: [ceil(R / TILE), B] float32, receives each TILE rows' column maxima
            (-inf for a tile of empty slots).
    """
    if kind == FLOAT32:
        _similarities_float32(keys, queries, values, first, last, out, maxima)
    else:
        _similarities_compact(keys, kind, queries, values, first, last, out, maxima)
