"""Explicit 16-lane vector steps for the selection scans, as numba intrinsics (LLVM vector IR).

numba's loop vectoriser leaves a running float max scalar (`maxss`) and its SLP vectoriser is off by
default, so the scans' two hot steps are written as whole vectors: a lane-wise running max, and a
compare against a bar that yields a bit mask. LLVM lowers them to AVX-512, AVX2 or SSE as the CPU has.
Measured on a 1024 x 1024 cosine matrix, one thread, top-8 plus self: 415 ns per row against 870 ns for
the block-maxima scan (select_kernels' _block_maxima, _floor, and a collect over the passing blocks).

Two more steps replace data-dependent branches, which mispredict on most steps with these inputs: the
k-th largest of 16 lane maxima (a row's floor), and the ranks of up to 16 entries (a row's queue). At
VGG 32x32 C64 B=32 on 2 threads the first took the symmetric selection from 25.8 to 22.9 ms; the second,
with the per-row helpers inlined, from 23.3 to 22.5 ms.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

LANES = 16  # one vector: an AVX-512 register of float32, two of float64


def _vector_at(context, builder, arr_type, arr, idx):
    """A pointer to the LANES elements of the 1-D array arr from index idx, as one vector."""
    ary = context.make_array(arr_type)(context, builder, arr)
    vty = ir.VectorType(context.get_data_type(arr_type.dtype), LANES)
    return builder.bitcast(builder.gep(ary.data, [idx]), vty.as_pointer())


def _splat(builder, value, vec_type):
    """A vector of vec_type with every lane equal to the scalar value."""
    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(vec_type, ir.Undefined), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, ir.Constant(vec_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))


def _popcount(builder, bits):
    """The number of set bits of an integer, as an int64."""
    ctpop = builder.module.declare_intrinsic("llvm.ctpop", [bits.type])
    return builder.zext(builder.call(ctpop, [bits]), ir.IntType(64))


def _is_float_vector_array(a) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and isinstance(a.dtype, types.Float)


@intrinsic
def lane_max_into(typingctx, acc, acc_idx, src, idx):
    """acc[acc_idx + l] = max(that, src[idx + l]) for l < LANES (same dtype; no bounds check)."""
    if not (_is_float_vector_array(acc) and _is_float_vector_array(src) and acc.dtype == src.dtype):
        return None

    def codegen(context, builder, sig, args):
        pa = _vector_at(context, builder, acc, args[0], args[1])
        ps = _vector_at(context, builder, src, args[2], args[3])
        va = builder.load(pa, align=1)
        vs = builder.load(ps, align=1)
        builder.store(builder.select(builder.fcmp_ordered(">", va, vs), va, vs), pa, align=1)
        return context.get_dummy_value()

    return types.none(acc, types.intp, src, types.intp), codegen


@intrinsic
def at_least_each_mask(typingctx, src, idx, bars, bars_idx):
    """A uint64 whose bit l is set where src[idx + l] >= bars[bars_idx + l], l < LANES (same dtype)."""
    if not (_is_float_vector_array(src) and _is_float_vector_array(bars) and src.dtype == bars.dtype):
        return None

    def codegen(context, builder, sig, args):
        vs = builder.load(_vector_at(context, builder, src, args[0], args[1]), align=1)
        vb = builder.load(_vector_at(context, builder, bars, args[2], args[3]), align=1)
        bits = builder.bitcast(builder.fcmp_ordered(">=", vs, vb), ir.IntType(LANES))
        return builder.zext(bits, ir.IntType(64))

    return types.uint64(src, types.intp, bars, types.intp), codegen


@intrinsic
def at_least_mask(typingctx, src, idx, bar):
    """A uint64 whose bit l is set where src[idx + l] >= bar, l < LANES (bar is rounded to src's dtype; a
    float32 entry at or above a float64 bar is also at or above that rounding, so none is lost)."""
    if not (_is_float_vector_array(src) and isinstance(bar, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        vs = builder.load(_vector_at(context, builder, src, args[0], args[1]), align=1)
        splat = _splat(builder, context.cast(builder, args[2], sig.args[2], src.dtype), vs.type)
        bits = builder.bitcast(builder.fcmp_ordered(">=", vs, splat), ir.IntType(LANES))
        return builder.zext(bits, ir.IntType(64))

    return types.uint64(src, types.intp, bar), codegen


@intrinsic
def kth_largest_lane(typingctx, acc, k):
    """The k-th largest of acc[:LANES] (1 <= k <= LANES; no bounds check), without branches: it is the largest
    entry that has at least k entries at or above it. An insertion queue mispredicts most of its steps on
    lane maxima (a quarter of the symmetric selection's scan time went there); this is LANES compares and
    counts."""
    if not (_is_float_vector_array(acc) and isinstance(k, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        vec = builder.load(_vector_at(context, builder, acc, args[0], ir.Constant(ir.IntType(64), 0)), align=1)
        k_needed = context.cast(builder, args[1], sig.args[1], types.int64)
        best = ir.Constant(vec.type.element, float("-inf"))
        for lane in range(LANES):
            entry = builder.extract_element(vec, ir.Constant(ir.IntType(32), lane))
            bits = builder.bitcast(builder.fcmp_ordered(">=", vec, _splat(builder, entry, vec.type)), ir.IntType(LANES))
            qualifies = builder.icmp_signed(">=", _popcount(builder, bits), k_needed)
            higher = builder.fcmp_ordered(">", entry, best)
            best = builder.select(builder.and_(qualifies, higher), entry, best)
        return best

    return acc.dtype(acc, k), codegen


@intrinsic
def rank_counts(typingctx, vals, n, ranks):
    """ranks[e] = how many of vals[:n] rank above vals[e], for e < n <= LANES: those larger, and equal ones
    earlier in the array (no bounds check; vals and ranks hold LANES entries, those from n on are ignored).
    The ranks of distinct (value, position) keys are a permutation of range(n); counting them takes no branch."""
    if not (_is_float_vector_array(vals) and isinstance(n, types.Integer) and isinstance(ranks, types.Array)
            and ranks.ndim == 1 and ranks.layout == "C" and ranks.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        i64, mask_type = ir.IntType(64), ir.IntType(LANES)
        vec = builder.load(_vector_at(context, builder, vals, args[0], ir.Constant(i64, 0)), align=1)
        count = context.cast(builder, args[1], sig.args[1], types.int64)
        valid = builder.trunc(builder.sub(builder.shl(ir.Constant(i64, 1), count), ir.Constant(i64, 1)), mask_type)
        out = context.make_array(ranks)(context, builder, args[2]).data
        for e in range(LANES):
            splat = _splat(builder, builder.extract_element(vec, ir.Constant(ir.IntType(32), e)), vec.type)
            larger = builder.bitcast(builder.fcmp_ordered(">", vec, splat), mask_type)
            equal = builder.bitcast(builder.fcmp_ordered("==", vec, splat), mask_type)
            above = builder.or_(larger, builder.and_(equal, ir.Constant(mask_type, (1 << e) - 1)))
            builder.store(_popcount(builder, builder.and_(above, valid)), builder.gep(out, [ir.Constant(i64, e)]))
        return context.get_dummy_value()

    return types.none(vals, n, ranks), codegen
