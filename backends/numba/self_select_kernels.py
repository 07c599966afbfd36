"""Numba selection when the queries are themselves candidates (sampling all, keys = queries): half the GEMM.

Cosine and dot affinities are symmetric, so each image computes only the upper block rows of the Gram
matrix of its query rows: block row I covers rows i0..i1 and columns i0..n, kept for later rows. A row
of block I finds its candidates before i0 in the kept tiles and the rest in its own tile.

Where the slots to fill fit one vector (simd.LANES; with self_first the self entry is set aside first),
a row's floor on the last slot is the slots-th largest of 16 lane maxima (entries by position mod 16),
and its entries at or above the floor are found by one vector compare per 16 entries. These tiles are
stored transposed, [n - i0, R]: BLAS computes that orientation at about 190 GFLOP/s against 150 (one
thread), and every part of a row is either contiguous or contiguous across the block's rows (see
_lane_candidates). Larger K keeps row-major tiles and scans as select_kernels does: the earlier part
transposed into a row buffer, block maxima, a run-max floor, and the passing blocks. Measured at VGG
32x32 C64 B=32 on 2 threads: about 20.8 ms, against 36 ms for the block-maxima scan and 49 ms for
select_kernels.

Rows whose features are all zero have affinity exactly 0 with everything, so they take no GEMM: they
are offered last, lowest token first, and a zero query's neighbours are simply the lowest tokens. The
queue ranks (affinity, token) pairs, larger affinity then lower token (SPEC.md's order), so offering
them out of token order changes nothing. One image per thread: its kept tiles are its own.

The helpers called per row are inlined and take (array, start) rather than row views: numba increfs and
decrefs every array argument of a call it does not inline, two atomic operations each, and with a helper
per row that had grown to a tenth of the scan's time.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange
from numba.cpython.unsafe.numbers import trailing_zeros

from convnn.affinity import EPS_NORM

from .select_kernels import BLOCK_ELEMENTS, SCAN_BLOCK, _block_maxima, _floor, _insert, sum_squares
from .simd import LANES, at_least_each_mask, at_least_mask, kth_largest_lane, lane_max_into, rank_counts

BLOCK_ROWS = 128  # query rows per block row (64-192 measured the same or slower); whole words of 4 vectors
assert BLOCK_ROWS % (4 * LANES) == 0
ROW_PAD = 16  # the transposed rows' stride is kept off multiples of 512 bytes: 46 -> 39 ms at VGG 32x32 (cache sets)


@njit(cache=True)
def _transform(v, metric, inv_scale):
    """A raw dot product as the affinity: clamped cosine (rows arrive unit length) or scaled dot."""
    if metric == 0:
        return 1.0 if v > 1.0 else (-1.0 if v < -1.0 else v)
    return v * inv_scale


@njit(cache=True)
def _raw_bound(v, metric, inv_scale):
    """A raw dot product at or below every raw value whose affinity is >= v (float64; exact for cosine,
    whose clamp only lifts values at -1 and below, so those all pass; one rounding step of slack for dot)."""
    if metric == 0:
        return v if v > -1.0 else -np.inf
    raw = v / inv_scale
    return raw - abs(raw) * 1e-15


@njit(cache=True)
def _scan(seg, toks, bmax, floor, qtok, self_first, count, slots, vals, ids, metric, inv_scale):
    """Offer the raw entries seg (tokens toks) to one row's queue, skipping blocks whose best affinity bmax[b]
    is below floor (a lower bound on the final K-th affinity, or -inf) or the current K-th. Return the count."""
    n = seg.shape[0]
    thr = max(floor, vals[slots - 1]) if count == slots else floor
    bar = _raw_bound(thr, metric, inv_scale)
    for b in range(bmax.shape[0]):
        if bmax[b] < thr:
            continue
        for j in range(b * SCAN_BLOCK, min(b * SCAN_BLOCK + SCAN_BLOCK, n)):
            if seg[j] < bar:
                continue
            v = _transform(seg[j], metric, inv_scale)
            if v < thr:
                continue
            tok = toks[j]
            if self_first and tok == qtok:
                continue
            count = _insert(v, tok, count, slots, vals, ids)
            if count == slots and vals[slots - 1] > thr:
                thr = vals[slots - 1]
                bar = _raw_bound(thr, metric, inv_scale)
    return count


@njit(cache=True)
def _collect(seg, bmax, floor, bar, offset, buf_val, buf_pos, n, blist):
    """Append the entries of seg at or above the raw bound bar, from blocks whose best affinity reaches floor, to
    buf_val / buf_pos (position offset + j) from n on; return the new n. Branch-free: the passing blocks are
    listed first (blist: scratch), then every entry of theirs is written and the count only moves past those
    that pass (the buffers hold SCAN_BLOCK spare entries). Listing first saves a branch mispredicted per
    passing block: about 11% of a row's scan (980 -> 870 ns per row of 1024, one thread)."""
    n_pass = 0
    for b in range(bmax.shape[0]):
        blist[n_pass] = b
        n_pass += 1 if bmax[b] >= floor else 0
    size = seg.shape[0]
    for q in range(n_pass):
        b = blist[q]
        for j in range(b * SCAN_BLOCK, min(b * SCAN_BLOCK + SCAN_BLOCK, size)):
            x = seg[j]
            buf_val[n] = x
            buf_pos[n] = offset + j
            n += 1 if x >= bar else 0
    return n


@njit(cache=True, inline="always")
def _lane_maxima(src, start, size, acc):
    """acc[l] = max(acc[l], every entry src[start + j], j < size, with j congruent to l mod LANES): whole
    vectors, then the tail. Lanes are disjoint sets of entries, so the k-th largest lane max has k entries at
    or above it."""
    n_vec = size // LANES
    for v in range(n_vec):
        lane_max_into(acc, 0, src, start + v * LANES)
    for j in range(n_vec * LANES, size):
        lane = j - n_vec * LANES
        x = src[start + j]
        acc[lane] = acc[lane] if acc[lane] > x else x


@njit(cache=True, inline="always")
def _at_least(src, start, size, bar, offset, buf_val, buf_pos, row, n):
    """Append the entries src[start + j], j < size, at or above bar to row `row` of buf_val / buf_pos (position
    offset + j) from n on; return the new n. Four vector compares make one 64-bit mask, whose set bits are
    visited (few pass: about 12 of 1,024 at K=9), so a row costs one compare per vector and one branch per 64
    entries plus one per entry kept."""
    n_vec = size // LANES
    n_word = n_vec // 4
    for w in range(n_word):
        j0 = w * 4 * LANES
        s0 = start + j0
        m = (at_least_mask(src, s0, bar) | (at_least_mask(src, s0 + LANES, bar) << np.uint64(LANES))
             | (at_least_mask(src, s0 + 2 * LANES, bar) << np.uint64(2 * LANES))
             | (at_least_mask(src, s0 + 3 * LANES, bar) << np.uint64(3 * LANES)))
        while m:
            j = j0 + np.int64(trailing_zeros(m))
            buf_val[row, n] = src[start + j]
            buf_pos[row, n] = offset + j
            n += 1
            m &= m - np.uint64(1)
    for v in range(n_word * 4, n_vec):
        m = at_least_mask(src, start + v * LANES, bar)
        while m:
            j = v * LANES + np.int64(trailing_zeros(m))
            buf_val[row, n] = src[start + j]
            buf_pos[row, n] = offset + j
            n += 1
            m &= m - np.uint64(1)
    for j in range(n_vec * LANES, size):
        if src[start + j] >= bar:
            buf_val[row, n] = src[start + j]
            buf_pos[row, n] = offset + j
            n += 1
    return n


@njit(cache=True, inline="always")
def _append_bits(m, first, src, start, pos, rb_val, rb_pos, rb_n):
    """For each set bit l of m: append src[start + first + l] (position pos) to row first + l's entries."""
    while m:
        rr = first + np.int64(trailing_zeros(m))
        rb_val[rr, rb_n[rr]] = src[start + rr]
        rb_pos[rr, rb_n[rr]] = pos
        rb_n[rr] += 1
        m &= m - np.uint64(1)


@njit(cache=True)
def _lane_candidates(upper, offsets, starts, blk, n_act, need, metric, inv_scale, acc_rows, acc, floors,
                     bars, bars_k, rb_val, rb_pos, rb_n):
    """For every row rr of block row blk: floors[rr], and in rb_val / rb_pos[rr, :rb_n[rr]] (ascending
    position) its entries at or above the floor's raw bound. Tiles are stored transposed: block row I's tile
    is [n - i0, R], entry (a, c) the raw affinity of rows i0 + a and i0 + c. So a row's part before i0 is
    one contiguous segment of each earlier tile, its part in the block is a row of the tile's top square,
    and its part from i1 on lies in the tile's later rows, contiguous across the block's rows: their lane
    maxima and compares run 16 rows at a time (lane of an entry: its position mod LANES). acc_rows
    [LANES * BLOCK_ROWS]: lane l's max over those later rows, per block row, from l * BLOCK_ROWS. Only the
    last block row can be shorter than BLOCK_ROWS, and it has no later rows, so those run in whole words
    of four vectors."""
    i0 = starts[blk]
    r = starts[blk + 1] - i0
    width = n_act - i0
    t0 = offsets[blk]
    for lane in range(LANES):
        for rr in range(r):
            acc_rows[lane * BLOCK_ROWS + rr] = -np.inf
    for a in range(r, width):  # the later rows' entries: lane (i0 + a) mod LANES of every block row
        src0 = t0 + a * BLOCK_ROWS
        lane0 = (a % LANES) * BLOCK_ROWS
        for c in range(0, BLOCK_ROWS, LANES):
            lane_max_into(acc_rows, lane0 + c, upper, src0 + c)
    for rr in range(r):
        for lane in range(LANES):
            acc[lane] = acc_rows[lane * BLOCK_ROWS + rr]
        for prev in range(blk):
            p0 = starts[prev]
            pr = starts[prev + 1] - p0
            _lane_maxima(upper, offsets[prev] + (i0 + rr - p0) * pr, pr, acc)
        _lane_maxima(upper, t0 + rr * r, r, acc)
        floors[rr] = _transform(np.float64(kth_largest_lane(acc, need)), metric, inv_scale)
        bars[rr] = _raw_bound(floors[rr], metric, inv_scale)
        bars_k[rr] = bars[rr]  # rounded to the rows' dtype: no entry at or above bars[rr] falls below it
        n = 0
        for prev in range(blk):
            p0 = starts[prev]
            pr = starts[prev + 1] - p0
            n = _at_least(upper, offsets[prev] + (i0 + rr - p0) * pr, pr, bars[rr], p0, rb_val, rb_pos, rr, n)
        rb_n[rr] = _at_least(upper, t0 + rr * r, r, bars[rr], i0, rb_val, rb_pos, rr, n)
    for a in range(r, width):
        src0 = t0 + a * BLOCK_ROWS
        for c in range(0, BLOCK_ROWS, 4 * LANES):
            m = (at_least_each_mask(upper, src0 + c, bars_k, c)
                 | (at_least_each_mask(upper, src0 + c + LANES, bars_k, c + LANES) << np.uint64(LANES))
                 | (at_least_each_mask(upper, src0 + c + 2 * LANES, bars_k, c + 2 * LANES) << np.uint64(2 * LANES))
                 | (at_least_each_mask(upper, src0 + c + 3 * LANES, bars_k, c + 3 * LANES) << np.uint64(3 * LANES)))
            _append_bits(m, c, upper, src0, i0 + a, rb_val, rb_pos, rb_n)


@njit(cache=True)
def _rank_entries(buf_val, buf_pos, row, n_buf, floor, metric, inv_scale, act_tok, qtok, self_first, slots,
                  queue_vals, queue_ids, q):
    """Rank row `row` of buf_val / buf_pos (n_buf entries, ascending position) into queue q of queue_vals /
    queue_ids; return the count. In token order, so a tie with the K-th never enters."""
    vals = queue_vals[q]
    ids = queue_ids[q]
    c = 0
    for e in range(n_buf):
        v = _transform(buf_val[row, e], metric, inv_scale)
        if v < floor or (c == slots and not v > vals[slots - 1]):
            continue
        tok = act_tok[buf_pos[row, e]]
        if self_first and tok == qtok:
            continue
        c = _insert(v, tok, c, slots, vals, ids)
    return c


@njit(cache=True, inline="always")
def _rank_few(buf_val, buf_pos, row, n_buf, floor, metric, inv_scale, act_tok, qtok, self_first, slots, queue_vals,
              queue_ids, q, few_val, few_pos, few_rank):
    """_rank_entries for a row with at most LANES entries at or above its floor (few_*: scratch of LANES): an
    entry's place in the queue is the number of entries that rank above it, counted by rank_counts without a
    branch, where an insertion queue mispredicts on most entries. Rows with more take _rank_entries."""
    n = 0
    for e in range(n_buf):
        v = _transform(buf_val[row, e], metric, inv_scale)
        pos = buf_pos[row, e]
        if v < floor or (self_first and act_tok[pos] == qtok):
            continue
        if n == LANES:
            return _rank_entries(buf_val, buf_pos, row, n_buf, floor, metric, inv_scale, act_tok, qtok, self_first,
                                 slots, queue_vals, queue_ids, q)
        few_val[n] = v
        few_pos[n] = pos
        n += 1
    rank_counts(few_val, n, few_rank)  # entries in ascending position: a tie ranks the lower token first
    for e in range(n):
        if few_rank[e] < slots:
            queue_vals[q, few_rank[e]] = few_val[e]
            queue_ids[q, few_rank[e]] = act_tok[few_pos[e]]
    return min(n, slots)


@njit(cache=True)
def _block_starts(n):
    """Row offsets of the block rows over n query rows, BLOCK_ROWS each, ending with n."""
    count = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    starts = np.empty(count + 1, dtype=np.int64)
    for i in range(count):
        starts[i] = i * BLOCK_ROWS
    starts[count] = n
    return starts


@njit(parallel=True, cache=True)
def select_self(kf, queries, heads, metric, slots, self_first, out_idx, want_aff, out_aff):
    """out_idx [B, H, Nq, K] for queries [Nq] (ascending token indices of kf [B, N, F]) among all N tokens,
    the queries' rows being kf's own (what select_kernels.select_topk computes with cand = every token).
    metric: 0 cosine or 2 dot. Each head h uses channel group h of F. With want_aff, out_aff [B, H, Nq, K]
    receives the slots' affinities as the scan saw them (rounded to out_aff's dtype)."""
    n_batch, n_tok, n_feat = kf.shape[0], kf.shape[1], kf.shape[2]
    n_query = queries.shape[0]
    fh = n_feat // heads
    first = 1 if self_first else 0
    inv_scale = 1.0 / math.sqrt(fh) if fh > 0 else 1.0
    for bh in prange(n_batch * heads):
        b = bh // heads
        h = bh % heads
        # unit (cosine) or raw (dot) rows; zero rows are set aside
        is_query = np.zeros(n_tok, dtype=np.bool_)
        for i in range(n_query):
            is_query[queries[i]] = True
        nonzero = np.zeros(n_tok, dtype=np.bool_)
        scale = np.ones(n_tok, dtype=np.float64)
        for t in range(n_tok):
            feats = kf[b, t, h * fh:(h + 1) * fh]
            any_set = False
            for f in range(fh):
                if feats[f] != 0.0:
                    any_set = True
                    break
            nonzero[t] = any_set  # by its entries: the squares of tiny float32 entries underflow to 0
            if metric == 0 and any_set:
                scale[t] = 1.0 / max(math.sqrt(sum_squares(feats)), EPS_NORM)
        n_act = 0
        n_other = 0
        n_zero = 0
        for t in range(n_tok):
            if nonzero[t]:
                if is_query[t]:
                    n_act += 1
                else:
                    n_other += 1
            else:
                n_zero += 1
        act_tok = np.empty(n_act, dtype=np.int64)
        act_query = np.empty(n_act, dtype=np.int64)  # each active row's position in queries
        other_tok = np.empty(n_other, dtype=np.int64)
        zero_tok = np.empty(n_zero, dtype=np.int64)
        a = 0
        o = 0
        z = 0
        qi = 0
        for t in range(n_tok):
            while qi < n_query and queries[qi] < t:
                qi += 1
            if not nonzero[t]:
                zero_tok[z] = t
                z += 1
            elif is_query[t]:
                act_tok[a] = t
                act_query[a] = qi
                a += 1
            else:
                other_tok[o] = t
                o += 1
        rows = np.empty((n_act, fh), dtype=kf.dtype)
        for a in range(n_act):
            t = act_tok[a]
            feats = kf[b, t, h * fh:(h + 1) * fh]  # a slice: its indices are known to be in range, so the
            for f in range(fh):  # copy is whole vectors rather than gathers
                rows[a, f] = feats[f] * scale[t]
        vals = np.empty((n_act, max(slots, 1)), dtype=np.float64)
        ids = np.empty((n_act, max(slots, 1)), dtype=np.int64)
        count = np.zeros(n_act, dtype=np.int64)
        self_aff = np.zeros(n_act, dtype=np.float64)  # each active row's affinity with itself
        gmax = np.empty(2 * slots + 2, dtype=np.float64)
        work = np.empty(slots + 1, dtype=np.float64)
        need = slots + 1 if self_first else slots  # block-maxima scan: entries at or above its floor, self among them
        by_lanes = slots <= LANES  # by lanes, the self entry is set aside first: slots entries to find
        acc = np.empty(LANES, dtype=kf.dtype)
        few_val = np.empty(LANES, dtype=np.float64)
        few_pos = np.empty(LANES, dtype=np.int64)
        few_rank = np.empty(LANES, dtype=np.int64)
        bmax = np.empty((n_tok + SCAN_BLOCK - 1) // SCAN_BLOCK, dtype=np.float64)
        blist = np.empty(bmax.shape[0], dtype=np.int64)
        if slots > 0 and n_act > 0:
            starts = _block_starts(n_act)
            n_blk = starts.shape[0] - 1
            offsets = np.zeros(n_blk + 1, dtype=np.int64)  # where each block row's tile lies in upper
            for blk in range(n_blk):
                offsets[blk + 1] = offsets[blk] + (starts[blk + 1] - starts[blk]) * (n_act - starts[blk])
            upper = np.empty(offsets[n_blk], dtype=kf.dtype)  # the upper block rows, kept for later rows
            # by lanes, per row of a block: lane maxima, floor, bound, and the entries that may enter;
            # otherwise left: each row's part before the block, transposed from the earlier tiles
            lane_rows = BLOCK_ROWS if by_lanes else 0
            acc_rows = np.empty(LANES * lane_rows, dtype=kf.dtype)
            floors = np.empty(lane_rows, dtype=np.float64)
            bars = np.empty(lane_rows, dtype=np.float64)
            bars_k = np.empty(lane_rows + LANES, dtype=kf.dtype)
            rb_val = np.empty((lane_rows, n_act), dtype=kf.dtype)
            rb_pos = np.empty((lane_rows, n_act), dtype=np.int64)
            rb_n = np.zeros(lane_rows, dtype=np.int64)
            left = np.empty(0 if by_lanes else BLOCK_ROWS * (n_act + ROW_PAD), dtype=kf.dtype)
            buf_val = np.empty(n_act + SCAN_BLOCK, dtype=kf.dtype)  # one row's entries that may enter
            buf_pos = np.empty(n_act + SCAN_BLOCK, dtype=np.int64)
            buf_rows_val = buf_val.reshape((1, buf_val.shape[0]))
            buf_rows_pos = buf_pos.reshape((1, buf_pos.shape[0]))
            for blk in range(n_blk if by_lanes else 0):  # K fits one vector: transposed tiles, the lane scan
                i0 = starts[blk]
                r = starts[blk + 1] - i0
                tile_t = upper[offsets[blk]:offsets[blk + 1]].reshape((n_act - i0, r))
                np.dot(rows[i0:], rows[i0:i0 + r].T, tile_t)  # this orientation: 190 GFLOP/s, the other 150
                for rr in range(r):
                    self_aff[i0 + rr] = _transform(tile_t[rr, rr], metric, inv_scale)
                    if self_first:  # slot 0: the self entry takes no lane and no ranking (later rows never
                        tile_t[rr, rr] = -np.inf  # read a block's own square)
                _lane_candidates(upper, offsets, starts, blk, n_act, slots, metric, inv_scale, acc_rows, acc, floors,
                                 bars, bars_k, rb_val, rb_pos, rb_n)
                for rr in range(r):
                    i = i0 + rr
                    count[i] = _rank_few(rb_val, rb_pos, rr, rb_n[rr], floors[rr], metric, inv_scale, act_tok,
                                         act_tok[i], self_first, slots, vals, ids, i, few_val, few_pos, few_rank)
            for blk in range(0 if by_lanes else n_blk):  # larger K: row-major tiles, the block-maxima scan
                i0 = starts[blk]
                i1 = starts[blk + 1]
                r = i1 - i0
                tile = upper[offsets[blk]:offsets[blk + 1]].reshape((r, n_act - i0))
                np.dot(rows[i0:i1], rows[i0:].T, tile)
                ld = i0 + ROW_PAD  # row rr of left holds its candidates before i0: earlier tiles' columns
                for prev in range(blk):
                    p0 = starts[prev]
                    src = upper[offsets[prev]:offsets[prev + 1]].reshape((starts[prev + 1] - p0, n_act - p0))
                    for x in range(src.shape[0]):
                        srow = src[x, i0 - p0:i1 - p0]
                        for rr in range(r):
                            left[rr * ld + p0 + x] = srow[rr]
                nl = (i0 + SCAN_BLOCK - 1) // SCAN_BLOCK
                nr = (n_act - i0 + SCAN_BLOCK - 1) // SCAN_BLOCK
                for rr in range(r):
                    i = i0 + rr
                    lft = left[rr * ld:rr * ld + i0]
                    self_aff[i] = _transform(tile[rr, rr], metric, inv_scale)
                    _block_maxima(lft, metric, inv_scale, bmax[:nl])
                    _block_maxima(tile[rr], metric, inv_scale, bmax[nl:nl + nr])
                    floor = _floor(bmax[:nl + nr], need, gmax, work)
                    bar = _raw_bound(floor, metric, inv_scale)
                    n_buf = _collect(lft, bmax[:nl], floor, bar, 0, buf_val, buf_pos, 0, blist)
                    n_buf = _collect(tile[rr], bmax[nl:nl + nr], floor, bar, i0, buf_val, buf_pos, n_buf, blist)
                    count[i] = _rank_entries(buf_rows_val, buf_rows_pos, 0, n_buf, floor, metric, inv_scale, act_tok,
                                             act_tok[i], self_first, slots, vals, ids, i)
            if n_other > 0:  # nonzero tokens that are only candidates
                orows = np.empty((n_other, fh), dtype=kf.dtype)
                for o in range(n_other):
                    t = other_tok[o]
                    feats = kf[b, t, h * fh:(h + 1) * fh]
                    for f in range(fh):
                        orows[o, f] = feats[f] * scale[t]
                step = max(1, BLOCK_ELEMENTS // n_other)
                for i0 in range(0, n_act, step):
                    i1 = min(i0 + step, n_act)
                    tile = np.dot(rows[i0:i1], orows.T)
                    nbl = (n_other + SCAN_BLOCK - 1) // SCAN_BLOCK
                    for rr in range(i1 - i0):
                        _block_maxima(tile[rr], metric, inv_scale, bmax[:nbl])
                        count[i0 + rr] = _scan(tile[rr], other_tok, bmax[:nbl], -np.inf, act_tok[i0 + rr],
                                               self_first, count[i0 + rr], slots, vals[i0 + rr], ids[i0 + rr],
                                               metric, inv_scale)
            for a in range(n_act):  # zero rows: affinity 0, lowest tokens first
                for z in range(n_zero):
                    if count[a] == slots and (vals[a, slots - 1] > 0.0 or (vals[a, slots - 1] == 0.0
                                                                         and ids[a, slots - 1] < zero_tok[z])):
                        break  # this zero cannot enter, nor can any later (higher) one
                    count[a] = _insert(0.0, zero_tok[z], count[a], slots, vals[a], ids[a])
        for a in range(n_act):
            i = act_query[a]
            if self_first:
                out_idx[b, h, i, 0] = act_tok[a]
                if want_aff:
                    out_aff[b, h, i, 0] = self_aff[a]
            for s in range(slots):
                out_idx[b, h, i, first + s] = ids[a, s]
                if want_aff:
                    out_aff[b, h, i, first + s] = vals[a, s]
        for i in range(n_query):  # zero queries: every affinity is 0, so the lowest tokens
            qtok = queries[i]
            if nonzero[qtok]:
                continue
            if want_aff:
                out_aff[b, h, i] = 0.0
            if self_first:
                out_idx[b, h, i, 0] = qtok
            s = 0
            t = 0
            while s < slots:
                if not (self_first and t == qtok):
                    out_idx[b, h, i, first + s] = t
                    s += 1
                t += 1
    return out_idx
