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
from numba import njit, types
from numba.extending import intrinsic

from lifelong.memory.fused_kernel import (AHEAD, LANES, PREFETCH_LOCALITY, ROWS, array_data,
                                          start_maxima, take_maxima)


@intrinsic
def _micro_tile_dot(typingctx, src, src_offset, src_stride, pairs_t, q_offset, q_stride, out,
                    out_offset, out_stride, npairs, stream, ahead, ahead_step):
    """``fused_kernel._micro_tile`` for bfloat16 keys and queries on CPUs with AVX512-BF16:
    src holds each key row as uint32 pairs of bfloat16 bits (elements 2p, 2p + 1), pairs_t
    the queries' pairs the same way, [npairs, LANES] per lane group. Step p broadcasts a row's
    pair p and adds both products to that row's <LANES x float> accumulator with one
    ``vdpbf16ps`` (products exact in float32, the higher element's added first, then the
    lower's, each sum rounded to nearest, denormals flushed: the instruction's definition),
    so a step does the work of two fma steps and reads half the bytes."""
    int_args = (src_offset, src_stride, q_offset, q_stride, out_offset, out_stride, npairs,
                ahead, ahead_step)
    if not all(isinstance(a, types.Integer) for a in int_args) or \
            not isinstance(stream, types.Array):
        return None

    def codegen(context, builder, signature, args):
        src_p = array_data(context, builder, signature.args[0], args[0])
        q_p = array_data(context, builder, signature.args[3], args[3])
        out_p = array_data(context, builder, signature.args[6], args[6])
        i64 = ir.IntType(64)
        (src_offset_, src_stride_, q_offset_, q_stride_, out_offset_, out_stride_, npairs_,
         ahead_, ahead_step_) = [context.cast(builder, args[i], signature.args[i], types.int64)
                                 for i in (1, 2, 4, 5, 7, 8, 9, 11, 12)]
        stream_p = array_data(context, builder, signature.args[10], args[10])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        prefetch = builder.module.declare_intrinsic("llvm.prefetch.p0", (), ir.FunctionType(
            ir.VoidType(), [i8p, i32, i32, i32]))
        vec = ir.VectorType(ir.FloatType(), LANES)
        words = ir.VectorType(i32, LANES)
        # acc += key pairs . query pairs; AT&T order: vdpbf16ps src2, src1, dst
        dot = ir.InlineAsm(ir.FunctionType(vec, [vec, words, words]),
                           "vdpbf16ps $3, $2, $0", "=v,0,v,v")
        zero = ir.Constant(vec, None)
        splat_mask = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
        rows = [builder.add(src_offset_, builder.mul(src_stride_, ir.Constant(i64, s)))
                for s in range(ROWS)]
        entry = builder.block
        loop = builder.append_basic_block("dot.loop")
        done = builder.append_basic_block("dot.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        p = builder.phi(i64)
        accs = [builder.phi(vec) for _ in range(ROWS)]
        q_at = builder.gep(q_p, [builder.add(q_offset_, builder.mul(p, q_stride_))])
        qv = builder.load(builder.bitcast(q_at, words.as_pointer()), align=4)
        pf_at = builder.gep(stream_p, [builder.add(ahead_, builder.mul(p, ahead_step_))])
        builder.call(prefetch, [builder.bitcast(pf_at, i8p), ir.Constant(i32, 0),
                                ir.Constant(i32, PREFETCH_LOCALITY), ir.Constant(i32, 1)])
        new = []
        for s in range(ROWS):
            pair = builder.load(builder.gep(src_p, [builder.add(rows[s], p)]))
            kv = builder.shuffle_vector(builder.insert_element(ir.Constant(words, ir.Undefined),
                                                               pair, ir.Constant(i64, 0)),
                                        ir.Constant(words, ir.Undefined), splat_mask)
            new.append(builder.call(dot, [accs[s], kv, qv]))
        p_next = builder.add(p, ir.Constant(i64, 1))
        builder.cbranch(builder.icmp_signed("<", p_next, npairs_), loop, done)
        p.add_incoming(ir.Constant(i64, 0), entry)
        p.add_incoming(p_next, loop)
        for acc, value in zip(accs, new):
            acc.add_incoming(zero, entry)
            acc.add_incoming(value, loop)
        builder.position_at_end(done)
        for s in range(ROWS):
            at = builder.add(out_offset_, builder.mul(out_stride_, ir.Constant(i64, s)))
            builder.store(new[s], builder.bitcast(builder.gep(out_p, [at]), vec.as_pointer()),
                          align=4)
        return context.get_dummy_value()

    return types.none(src, src_offset, src_stride, pairs_t, q_offset, q_stride, out,
                      out_offset, out_stride, npairs, stream, ahead, ahead_step), codegen


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
