"""The fused exact-search kernel with bfloat16 arithmetic (``ExactSearch(kernel="bf16")``), for
CPUs with AVX512-BF16: bfloat16 keys multiplied with the queries rounded to bfloat16 by
``vdpbf16ps``, one instruction per two elements, where ``lifelong.memory.fused_kernel`` widens
compact keys to float32 and multiplies in float32 fma chains.

The structure is the float32 kernel's (ROWS key rows x LANES queries per micro-tile, prefetch
AHEAD groups on, tile maxima taken while the rows are in L1); the key rows are read as uint32
pairs of bfloat16 bits and the queries packed the same way (``bfloat16_pairs``). The LLVM
intrinsic takes ``<32 x bfloat>`` vectors, a type llvmlite cannot write, so the instruction is
inline assembly (which needs LLVM's native assembly parser: ``has_bfloat16_dot`` starts it).
Its arithmetic is this kernel's exactness contract (docs/design.md §1.2): per pair, the higher
element's product (exact in float32) is added first, then the lower's, each sum rounded to
nearest with denormals flushed, for pairs 0 .. d/2 - 1 from 0.
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit

from lifelong.memory.fused_kernel import (AHEAD, LANES, ROWS, micro_tile, start_maxima,
                                          take_maxima)


def _dpbf16ps(builder, key_pair, query_pairs, acc):
    """acc += key_pair . query_pairs per lane (``vdpbf16ps``: both products exact in float32,
    the higher element's added first, then the lower's, each sum rounded to nearest,
    denormals flushed). AT&T operand order: vdpbf16ps src2, src1, dst."""
    vec = ir.VectorType(ir.FloatType(), LANES)
    words = ir.VectorType(ir.IntType(32), LANES)
    dot = ir.InlineAsm(ir.FunctionType(vec, [vec, words, words]), "vdpbf16ps $3, $2, $0",
                       "=v,0,v,v")
    return builder.call(dot, [acc, key_pair, query_pairs])


# ``fused_kernel.micro_tile`` over uint32 pairs of bfloat16 bits: src holds each key row as
# pairs (elements 2p, 2p + 1), queries_t the queries' pairs the same way ([d / 2, LANES] per
# lane group); step p adds both products of pair p with one ``vdpbf16ps``, the work of two
# fma steps on half the bytes.
_micro_tile_dot = micro_tile("_micro_tile_dot", ir.IntType(32), _dpbf16ps)


@njit(nogil=True, cache=True)
def _similarities_bf16_dot(pairs, pairs_t, values, first, last, out, maxima):
    """``_similarities_float32`` for bfloat16 keys as uint32 pairs [N, d / 2] with the
    queries' pairs [d / 2, B] (``_micro_tile_dot``)."""
    start_maxima(maxima, last - first)
    npairs, padded = pairs_t.shape
    stride = pairs.strides[0] // pairs.itemsize
    full = first + (last - first) // ROWS * ROWS
    for r in range(first, full, ROWS):
        ahead = min((r + AHEAD * ROWS) * stride, (pairs.shape[0] - 1) * stride)
        step = ROWS * stride // npairs if ahead + ROWS * stride <= pairs.shape[0] * stride \
            else 0
        for c in range(padded // LANES):
            _micro_tile_dot(pairs, r * stride, stride, pairs_t, c * LANES, padded, out,
                            (r - first) * padded + c * LANES, padded, npairs, pairs, ahead,
                            step if c == 0 else 0)
        take_maxima(out, values, first, r - first, ROWS, maxima)
    if full < last:  # the tail: fewer than ROWS rows, through zero-padded copies
        count = last - full
        rows = np.zeros((ROWS, npairs), dtype=np.uint32)
        tail = np.empty((ROWS, padded), dtype=np.float32)
        for s in range(count):
            for j in range(npairs):
                rows[s, j] = pairs[full + s, j]
        for c in range(padded // LANES):
            _micro_tile_dot(rows, 0, npairs, pairs_t, c * LANES, padded, tail, c * LANES,
                            padded, npairs, rows, 0, 0)
        for s in range(count):
            for b in range(padded):
                out[full - first + s, b] = tail[s, b]
        take_maxima(out, values, first, full - first, count, maxima)


def bfloat16_pairs(a: np.ndarray) -> np.ndarray:
    """float32 [n, d] (d even) rounded to bfloat16 (to nearest, ties to even) and packed in
    pairs: [n, d / 2] uint32, element 2p in the low half, 2p + 1 in the high half."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
               >> np.uint32(16)).astype(np.uint16)
    return np.ascontiguousarray(rounded).view(np.uint32)


def has_bfloat16_dot() -> bool:
    """Whether this CPU has the bfloat16 dot product (AVX512-BF16: ``vdpbf16ps``)."""
    global _HAS_BF16_DOT
    if _HAS_BF16_DOT is None:
        features = llvm_binding.get_host_cpu_features()
        _HAS_BF16_DOT = bool(features.get("avx512bf16", False))
        if _HAS_BF16_DOT:
            llvm_binding.initialize_native_asmparser()  # the kernel's inline assembly
    return _HAS_BF16_DOT


_HAS_BF16_DOT: bool | None = None


def bf16_dot_similarities(pairs: np.ndarray, pairs_t: np.ndarray, values: np.ndarray,
                          first: int, last: int, out: np.ndarray, maxima: np.ndarray) -> None:
    """``fused_similarities`` of bfloat16 keys with bfloat16 queries by the CPU's bfloat16
    dot product (check ``has_bfloat16_dot`` first).

    Args:
        pairs: [N, d / 2] uint32, the keys' bfloat16 bits in pairs (a uint16 [N, d] key
            array viewed as uint32).
        pairs_t: [d / 2, B] uint32, the queries rounded to bfloat16 in pairs
            (``bfloat16_pairs``), transposed; B a multiple of LANES.
        values, first, last, out, maxima: as ``fused_similarities``.
    """
    if not has_bfloat16_dot():
        raise ValueError("this CPU has no bfloat16 dot product (AVX512-BF16)")
    if pairs.strides[1] != pairs.itemsize or not (pairs_t.flags.c_contiguous
                                                   and out.flags.c_contiguous):
        raise ValueError("pairs need contiguous rows, pairs_t and out C order")
    _similarities_bf16_dot(pairs, pairs_t, values, first, last, out, maxima)
