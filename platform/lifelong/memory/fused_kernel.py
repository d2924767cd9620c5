"""The fused exact-search kernel for small batches on CPU (numba + LLVM vectors): keys read
once, similarities computed in registers, tile maxima for the running top-k's threshold test taken
on the way.

At a batch of a few queries the similarity product is a thin matrix product that BLAS runs far
below its peak rate (it packs the keys, then streams them through a kernel sized for large
batches). This kernel instead takes ROWS (8) key rows at a time and LANES (16) queries per
vector: its micro-kernel (``_micro_tile``, LLVM IR written here, so the vector width does not
depend on the compiler's cost model, which keeps numba's loops at 256 bits) holds one
<16 x float> accumulator per key row, i.e. 8 independent fused multiply-add chains, each step an
fma of a key element broadcast from memory with the 16 queries' elements. Every key is read once
from memory, the queries stay in L1 and the similarities leave registers only to be written to
the [R, B] block, whose tile maxima ([ceil(R / TILE), B], empty slots left out) are taken while
the rows are in L1: that is what ``RunningTopK.push_block`` compares with the thresholds.

Prefetch: a group of 8 rows of 128 float32 is one 4 KiB page, read column by column, and the
hardware prefetcher stops at page ends, so each group would start cold. Each step of the
micro-kernel therefore prefetches (into L2) a slice of the group AHEAD groups on, spread over the
d steps: on the 2-core Xeon this took the 1M x 128 float32 scan at batch 16 from ~72 to ~45 ms
on one thread (docs/design.md §1.2).

Summation order (the kernel's exactness contract): each similarity is
s = fma(key[j], query[j], s) for j = 0 .. d - 1 from s = 0 in float32 (llvm.fma: one rounding
per step, on any target), so a (query, slot) similarity is the same number wherever it is
computed by this kernel (block, batch, thread, other queries); it can differ from BLAS's in the
last bits (docs/design.md §1.2).

Compact keys: ``keys`` may be float32, or uint16 holding bfloat16 or float16 bits (the storage
of ``key_dtype`` bfloat16 / float16). Each group of rows is first widened exactly to float32 in
L1 (bfloat16: the 16 bits shifted into the high half, 16 at once; float16: LLVM's fpext, i.e.
vcvtph2ps, subnormals included), then multiplied in float32 as above; the prefetch then runs
over the compact rows, so the bytes streamed are halved, the arithmetic is not.

bfloat16 arithmetic, on CPUs that have it, is ``lifelong.memory.bf16_kernel``, built from this
module's pieces.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from lifelong.memory.topk_kernel import TILE

FLOAT32, BFLOAT16, FLOAT16 = 0, 1, 2  # how ``keys`` is stored (the ``kind`` argument)
LANES = 16  # queries per vector register: the batch is padded to a multiple of LANES
PREFETCH_LOCALITY = 1  # llvm.prefetch locality: 1 = into L2 (prefetcht2)
AHEAD = 4  # groups of ROWS rows prefetched ahead of the one multiplied
ROWS = 8  # key rows accumulated at once: 8 independent fma chains keep both FMA units busy


def array_data(context, builder, array_type, array):
    return context.make_array(array_type)(context, builder, array).data


def micro_tile(name: str, lane_type: ir.Type, accumulate):
    """A micro-kernel intrinsic ``(src, src_offset, src_stride, queries_t, q_offset, q_stride,
    out, out_offset, out_stride, steps, stream, ahead, ahead_step)``: for s < ROWS and
    lane < LANES, one <LANES x float> accumulator per key row s, from 0, updated for
    j = 0 .. steps - 1 by ``accumulate(builder, key, query, acc)`` with key the row's element
    src[src_offset + s * src_stride + j] broadcast to LANES lanes and query the vector
    queries_t[q_offset + j * q_stride:][:LANES], both of ``lane_type``; the accumulators are
    stored to out[out_offset + s * out_stride:][:LANES]. Step j also prefetches
    stream.flat[ahead + j * ahead_step] (stream: the keys), so that rows further on arrive
    while this tile is computed (requests spread over the loop, not in a burst that fills the
    line-fill buffers). Written in LLVM IR so that the vector width does not depend on the
    compiler's cost model."""
    def typer(typingctx, src, src_offset, src_stride, queries_t, q_offset, q_stride, out,
              out_offset, out_stride, steps, stream, ahead, ahead_step):
        int_args = (src_offset, src_stride, q_offset, q_stride, out_offset, out_stride, steps,
                    ahead, ahead_step)
        if not all(isinstance(a, types.Integer) for a in int_args) or \
                not isinstance(stream, types.Array):
            return None
        return (types.none(src, src_offset, src_stride, queries_t, q_offset, q_stride, out,
                           out_offset, out_stride, steps, stream, ahead, ahead_step),
                _tile_codegen(lane_type, accumulate))

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


def _tile_codegen(lane_type: ir.Type, accumulate):
    def codegen(context, builder, signature, args):
        src_p = array_data(context, builder, signature.args[0], args[0])
        q_p = array_data(context, builder, signature.args[3], args[3])
        out_p = array_data(context, builder, signature.args[6], args[6])
        stream_p = array_data(context, builder, signature.args[10], args[10])
        i64 = ir.IntType(64)
        (src_offset_, src_stride_, q_offset_, q_stride_, out_offset_, out_stride_, steps_,
         ahead_, ahead_step_) = [context.cast(builder, args[i], signature.args[i], types.int64)
                                 for i in (1, 2, 4, 5, 7, 8, 9, 11, 12)]
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        prefetch = builder.module.declare_intrinsic("llvm.prefetch.p0", (), ir.FunctionType(
            ir.VoidType(), [i8p, i32, i32, i32]))
        vec = ir.VectorType(ir.FloatType(), LANES)
        lanes = ir.VectorType(lane_type, LANES)
        zero = ir.Constant(vec, None)
        splat_mask = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
        rows = [builder.add(src_offset_, builder.mul(src_stride_, ir.Constant(i64, s)))
                for s in range(ROWS)]
        entry = builder.block
        loop = builder.append_basic_block("micro.loop")
        done = builder.append_basic_block("micro.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        j = builder.phi(i64)
        accs = [builder.phi(vec) for _ in range(ROWS)]
        q_at = builder.gep(q_p, [builder.add(q_offset_, builder.mul(j, q_stride_))])
        qv = builder.load(builder.bitcast(q_at, lanes.as_pointer()), align=4)
        pf_at = builder.gep(stream_p, [builder.add(ahead_, builder.mul(j, ahead_step_))])
        builder.call(prefetch, [builder.bitcast(pf_at, i8p), ir.Constant(i32, 0),
                                ir.Constant(i32, PREFETCH_LOCALITY), ir.Constant(i32, 1)])
        new = []
        for s in range(ROWS):
            key = builder.load(builder.gep(src_p, [builder.add(rows[s], j)]))
            kv = builder.shuffle_vector(builder.insert_element(ir.Constant(lanes, ir.Undefined),
                                                               key, ir.Constant(i64, 0)),
                                        ir.Constant(lanes, ir.Undefined), splat_mask)
            new.append(accumulate(builder, kv, qv, accs[s]))
        j_next = builder.add(j, ir.Constant(i64, 1))
        builder.cbranch(builder.icmp_signed("<", j_next, steps_), loop, done)
        j.add_incoming(ir.Constant(i64, 0), entry)
        j.add_incoming(j_next, loop)
        for acc, value in zip(accs, new):
            acc.add_incoming(zero, entry)
            acc.add_incoming(value, loop)
        builder.position_at_end(done)
        for s in range(ROWS):
            at = builder.add(out_offset_, builder.mul(out_stride_, ir.Constant(i64, s)))
            builder.store(new[s], builder.bitcast(builder.gep(out_p, [at]), vec.as_pointer()),
                          align=4)
        return context.get_dummy_value()

    return codegen


def _fma(builder, key, query, acc):
    """acc = fma(key, query, acc) (llvm.fma: one rounding per step, on any target)."""
    vec = ir.VectorType(ir.FloatType(), LANES)
    fma = builder.module.declare_intrinsic(f"llvm.fma.v{LANES}f32", (),
                                           ir.FunctionType(vec, [vec, vec, vec]))
    return builder.call(fma, [key, query, acc])


# The float32 micro-kernel: s = fma(key[j], query[j], s) for j = 0 .. d - 1 per key row and
# query (8 independent fma chains).
_micro_tile = micro_tile("_micro_tile", ir.FloatType(), _fma)


@intrinsic
def _widen_bfloat16(typingctx, src, src_offset, dst, dst_offset):
    """dst.flat[dst_offset:][:LANES] = src.flat[src_offset:][:LANES] widened from bfloat16 bits
    (uint16) to float32, LANES at once: zero-extend, shift into the high half."""
    if not isinstance(src_offset, types.Integer) or not isinstance(dst_offset, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        src_p = array_data(context, builder, signature.args[0], args[0])
        dst_p = array_data(context, builder, signature.args[2], args[2])
        at_src = builder.gep(src_p, [context.cast(builder, args[1], signature.args[1],
                                                  types.int64)])
        at_dst = builder.gep(dst_p, [context.cast(builder, args[3], signature.args[3],
                                                  types.int64)])
        halves = builder.load(builder.bitcast(at_src, ir.VectorType(ir.IntType(16), LANES)
                                              .as_pointer()), align=2)
        words = builder.zext(halves, ir.VectorType(ir.IntType(32), LANES))
        words = builder.shl(words, ir.Constant(ir.VectorType(ir.IntType(32), LANES),
                                               [16] * LANES))
        vec = ir.VectorType(ir.FloatType(), LANES)
        builder.store(builder.bitcast(words, vec), builder.bitcast(at_dst, vec.as_pointer()),
                      align=4)
        return context.get_dummy_value()

    return types.none(src, src_offset, dst, dst_offset), codegen


@intrinsic
def _half_to_float(typingctx, bits):
    """The float32 value of the IEEE half ``bits`` (uint16): LLVM's fpext (vcvtph2ps with F16C),
    exact, subnormals included."""
    if not isinstance(bits, types.Integer) or bits.bitwidth != 16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@njit(nogil=True, cache=True)
def _widen_rows(keys, first, count, kind, out):
    """out[s] = keys[first + s] as float32 for s < count, zeros after; keys: uint16 bits of
    bfloat16 (kind 1: the bits shifted into the high half) or float16 (kind 2)."""
    bits = out.view(np.uint32)
    d = keys.shape[1]
    stride = keys.strides[0] // keys.itemsize
    for s in range(count):
        if kind == BFLOAT16:
            whole = d // LANES * LANES
            row = (first + s) * stride
            for j in range(0, whole, LANES):
                _widen_bfloat16(keys, row + j, out, s * d + j)
            for j in range(whole, d):
                bits[s, j] = np.uint32(keys[first + s, j]) << np.uint32(16)
        else:
            for j in range(d):
                out[s, j] = _half_to_float(keys[first + s, j])
    for s in range(count, out.shape[0]):
        for j in range(d):
            out[s, j] = 0.0


@njit(nogil=True, cache=True)
def start_maxima(maxima, rows):
    for t in range((rows + TILE - 1) // TILE):
        for b in range(maxima.shape[1]):
            maxima[t, b] = -np.inf


@njit(nogil=True, cache=True, inline="always")
def _tile_into(src, src_offset, src_stride, queries_t, out, out_row, stream, ahead,
               ahead_step):
    """Similarities of the ROWS rows src[src_offset:] (row stride ``src_stride``) with every
    query, into out[out_row: out_row + ROWS] (out: [*, B] C-contiguous); prefetches
    stream.flat[ahead + j * ahead_step] on the way (``_micro_tile``)."""
    d, padded = queries_t.shape
    for c in range(padded // LANES):
        _micro_tile(src, src_offset, src_stride, queries_t, c * LANES, padded, out,
                    out_row * padded + c * LANES, padded, d, stream, ahead,
                    ahead_step if c == 0 else 0)


@njit(nogil=True, cache=True, inline="always")
def take_maxima(out, values, first, row, count, maxima):
    """Folds rows out[row: row + count] (slots first + row ...) into the tile maxima, empty
    slots left out; the rows were just written, so they are read from L1."""
    padded = out.shape[1]
    for s in range(count):
        if values[first + row + s] >= 0:
            tile = (row + s) // TILE
            for b in range(padded):
                sim = out[row + s, b]
                maxima[tile, b] = sim if sim > maxima[tile, b] else maxima[tile, b]


@njit(nogil=True, cache=True)
def _similarities_float32(keys, queries_t, values, first, last, out, maxima):
    start_maxima(maxima, last - first)
    d, padded = queries_t.shape
    stride = keys.strides[0] // keys.itemsize
    full = first + (last - first) // ROWS * ROWS
    for r in range(first, full, ROWS):  # straight from the keys: each row read once
        # the group AHEAD groups on, spread over the d steps (clipped to the last row)
        ahead = min((r + AHEAD * ROWS) * stride, (keys.shape[0] - 1) * stride)
        step = ROWS * stride // d if ahead + ROWS * stride <= keys.shape[0] * stride else 0
        _tile_into(keys, r * stride, stride, queries_t, out, r - first, keys, ahead, step)
        take_maxima(out, values, first, r - first, ROWS, maxima)
    if full < last:  # the tail: fewer than ROWS rows, through zero-padded copies
        count = last - full
        wide = np.zeros((ROWS, d), dtype=np.float32)
        tail = np.empty((ROWS, padded), dtype=np.float32)
        for s in range(count):
            for j in range(d):
                wide[s, j] = keys[full + s, j]
        _tile_into(wide, 0, d, queries_t, tail, 0, wide, 0, 0)
        for s in range(count):
            for b in range(padded):
                out[full - first + s, b] = tail[s, b]
        take_maxima(out, values, first, full - first, count, maxima)


@njit(nogil=True, cache=True)
def _similarities_compact(keys, kind, queries_t, values, first, last, out, maxima):
    start_maxima(maxima, last - first)
    d, padded = queries_t.shape
    wide = np.zeros((ROWS, d), dtype=np.float32)  # ROWS rows widened, in L1
    tail = np.empty((ROWS, padded), dtype=np.float32)
    stride = keys.strides[0] // keys.itemsize
    for r in range(first, last, ROWS):
        count = min(ROWS, last - r)
        _widen_rows(keys, r, count, kind, wide)
        if count == ROWS:
            # as for float32 keys: the group AHEAD groups on (half the bytes per row)
            ahead = min((r + AHEAD * ROWS) * stride, (keys.shape[0] - 1) * stride)
            step = ROWS * stride // d if ahead + ROWS * stride <= keys.shape[0] * stride else 0
            _tile_into(wide, 0, d, queries_t, out, r - first, keys, ahead, step)
        else:
            _tile_into(wide, 0, d, queries_t, tail, 0, wide, 0, 0)
            for s in range(count):
                for b in range(padded):
                    out[r - first + s, b] = tail[s, b]
        take_maxima(out, values, first, r - first, count, maxima)


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
    if keys.strides[1] != keys.itemsize or not (queries_t.flags.c_contiguous
                                                 and out.flags.c_contiguous):
        raise ValueError("keys need contiguous rows, queries_t and out C order")
    if kind == FLOAT32:
        _similarities_float32(keys, queries_t, values, first, last, out, maxima)
    else:
        _similarities_compact(keys, kind, queries_t, values, first, last, out, maxima)
