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
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

from lifelong.memory.topk_kernel import TILE

FLOAT32, BFLOAT16, FLOAT16 = 0, 1, 2  # how ``keys`` is stored (the ``kind`` argument)
LANES = 16  # queries per vector register: the batch is padded to a multiple of LANES
ROWS = 4  # key rows accumulated at once (ROWS vector accumulators); TILE is a multiple


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


@intrinsic
def _stack_floats(typingctx, count):
    """A pointer to ``count`` (a literal int) float32 on the stack: accumulators that the
    compiler keeps in vector registers (a heap array would be reloaded at every step)."""
    if not isinstance(count, types.IntegerLiteral):
        return None
    size = count.literal_value

    def codegen(context, builder, signature, args):
        block = builder.alloca(ir.ArrayType(ir.FloatType(), size))
        return builder.bitcast(block, ir.PointerType(ir.FloatType()))

    return types.CPointer(types.float32)(count), codegen


@njit(nogil=True, cache=True, fastmath={"contract"}, inline="always")
def _rows_into(src, base, count, queries_t, values, first_slot, offset, out, maxima, acc):
    """Similarities of the ROWS key rows src[base:] with every query; the first ``count`` of
    them (slots first_slot ...) go to out[offset:] and to the tile maxima.

    Each similarity is s = fma(key[j], query[j], s) for j = 0 .. d - 1 from s = 0, LANES
    queries in one vector register per row. (Every index of ``acc`` is a constant once the
    loops are unrolled, so the accumulators live in registers.)
    """
    d, padded = queries_t.shape
    for c in range(padded // LANES):
        c0 = c * LANES
        for lane in range(LANES):
            acc[0, lane] = 0.0
            acc[1, lane] = 0.0
            acc[2, lane] = 0.0
            acc[3, lane] = 0.0
        for j in range(d):
            k0 = src[base, j]
            k1 = src[base + 1, j]
            k2 = src[base + 2, j]
            k3 = src[base + 3, j]
            for lane in range(LANES):
                qv = queries_t[j, c0 + lane]
                acc[0, lane] += k0 * qv
                acc[1, lane] += k1 * qv
                acc[2, lane] += k2 * qv
                acc[3, lane] += k3 * qv
        for s in range(ROWS):
            if s < count:
                row = offset + s
                tile = row // TILE
                for lane in range(LANES):
                    out[row, c0 + lane] = acc[s, lane]
                if values[first_slot + s] >= 0:
                    for lane in range(LANES):
                        maxima[tile, c0 + lane] = max(maxima[tile, c0 + lane], acc[s, lane])


@njit(nogil=True, cache=True)
def _start_maxima(maxima, rows):
    for t in range((rows + TILE - 1) // TILE):
        for b in range(maxima.shape[1]):
            maxima[t, b] = -np.inf


@njit(nogil=True, cache=True, fastmath={"contract"})
def _similarities_float32(keys, queries_t, values, first, last, out, maxima):
    _start_maxima(maxima, last - first)
    acc = carray(_stack_floats(64), (ROWS, LANES))  # ROWS * LANES
    rows = np.zeros((ROWS, keys.shape[1]), dtype=np.float32)
    for r in range(first, last, ROWS):
        count = min(ROWS, last - r)
        # A copy to a local block (in L1): the compiler then knows it overlaps nothing.
        for s in range(count):
            for j in range(keys.shape[1]):
                rows[s, j] = keys[r + s, j]
        _rows_into(rows, 0, count, queries_t, values, r, r - first, out, maxima, acc)


@njit(nogil=True, cache=True, fastmath={"contract"})
def _similarities_compact(keys, kind, queries_t, values, first, last, out, maxima):
    _start_maxima(maxima, last - first)
    acc = carray(_stack_floats(64), (ROWS, LANES))
    wide = np.zeros((ROWS, keys.shape[1]), dtype=np.float32)
    for r in range(first, last, ROWS):
        count = min(ROWS, last - r)
        for s in range(count):
            _widen_row(keys, r + s, kind, wide[s])
        _rows_into(wide, 0, count, queries_t, values, r, r - first, out, maxima, acc)


def fused_similarities(keys: np.ndarray, kind: int, queries_t: np.ndarray, values: np.ndarray,
                       first: int, last: int, out: np.ndarray, maxima: np.ndarray) -> None:
    """Similarities of slots first .. last - 1 with every query, and their tile maxima.

    Runs in numba and releases the GIL.

    Args:
        keys: [N, d] float32 (kind FLOAT32), or uint16 bits of bfloat16 / float16.
        kind: FLOAT32, BFLOAT16 or FLOAT16.
        queries_t: [d, B] float32 (the queries transposed), B a multiple of LANES (the caller
            pads the batch with copies of a query).
        values: [N] int64; slots with a negative value are left out of ``maxima``.
        first, last: the slot range; R = last - first.
        out: [R, B] float32, receives the similarities.
        maxima: [ceil(R / TILE), B] float32, receives each TILE rows' column maxima
            (-inf for a tile of empty slots).
    """
    if kind == FLOAT32:
        _similarities_float32(keys, queries_t, values, first, last, out, maxima)
    else:
        _similarities_compact(keys, kind, queries_t, values, first, last, out, maxima)
