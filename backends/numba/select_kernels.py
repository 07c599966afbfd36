"""Numba kernels for neighbour selection: blocked affinities by BLAS and a streaming top-K per query row.

Work is split over (image, head, block of query rows); a block's affinities [R, S] come from one
GEMM sized to stay in L2, then each row keeps its best slots in a small insertion queue. The full
[N, S] affinity matrix is never built. Ties go to the lower token index: candidates are scanned in
ascending token order and a new value only moves ahead of strictly smaller ones.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from convnn.affinity import EPS_NORM

BLOCK_ELEMENTS = 262144  # affinity entries per row block: 1 MiB in float32 (measured: the GEMM gains more than L2 misses cost)
SMALL_FEATURES = 8  # below this width the affinities are plain loops (a GEMM would not pay off)
SCAN_BLOCK = 16  # affinities per block max in the streaming top-K (two AVX2 registers of float32)


def rows_per_block(n_query: int, n_cand: int) -> int:
    """Query rows per block so that one block of affinities stays in a core's L2."""
    rows = max(8, BLOCK_ELEMENTS // max(n_cand, 1))
    return max(1, min(rows, n_query))


@njit(cache=True)
def _insert(v, tok, count, slots, vals, ids):
    """Put (v, tok) into the queue vals/ids, kept in rank order (larger affinity first, then lower token), when it
    ranks above the last entry of a full queue; return the new count. The order candidates arrive in does not
    matter; the scans below offer them in ascending token order, so a tie with the K-th never enters."""
    if count == slots:
        last = vals[slots - 1]
        if v < last or (v == last and tok > ids[slots - 1]):
            return count
        pos = slots - 1
    else:
        pos = count
        count += 1
    while pos > 0 and (vals[pos - 1] < v or (vals[pos - 1] == v and ids[pos - 1] > tok)):
        vals[pos] = vals[pos - 1]
        ids[pos] = ids[pos - 1]
        pos -= 1
    vals[pos] = v
    ids[pos] = tok
    return count


@njit(cache=True)
def sum_squares(x):
    """The sum of x[f] ** 2 (each square in x's dtype) in float64, over 8 interleaved partial sums added in a
    fixed order: every kernel gets the same bits, and the adds are not one chain each waiting on the last
    (a 64-wide norm took 4 cycles per entry that way)."""
    n = x.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    whole = n - n % 8
    for f in range(0, whole, 8):
        s0 += x[f] * x[f]
        s1 += x[f + 1] * x[f + 1]
        s2 += x[f + 2] * x[f + 2]
        s3 += x[f + 3] * x[f + 3]
        s4 += x[f + 4] * x[f + 4]
        s5 += x[f + 5] * x[f + 5]
        s6 += x[f + 6] * x[f + 6]
        s7 += x[f + 7] * x[f + 7]
    for f in range(whole, n):
        s0 += x[f] * x[f]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(cache=True)
def grid_coords(tok, gshape, out):
    """The row-major position of token tok on the padded grid gshape [D], written into out [D]."""
    for d in range(gshape.shape[0] - 1, -1, -1):
        out[d] = tok % gshape[d]
        tok = tok // gshape[d]


@njit(cache=True)
def _affinity(row, j, metric, qq, ksq, inv_scale):
    """The affinity of entry j of a raw row: clamped cosine, negated squared distance or scaled dot."""
    if metric == 0:
        v = row[j]
        return 1.0 if v > 1.0 else (-1.0 if v < -1.0 else v)
    if metric == 1:
        sq = (qq + ksq[j]) - 2.0 * row[j]
        return -sq if sq > 0.0 else 0.0
    return row[j] * inv_scale


@njit(cache=True)
def _block_max(block):
    """The largest of block [SCAN_BLOCK]: a fixed trip count and a select, so LLVM vectorises it."""
    m = block[0]
    for j in range(SCAN_BLOCK):
        x = block[j]
        m = m if m > x else x
    return m


@njit(cache=True)
def _block_maxima(row, metric, inv_scale, out):
    """out[b] = the best affinity (cosine or dot) in block b of row; the transforms are monotone, so it is
    the transform of the block's raw max (the last, partial block by a plain loop)."""
    n = row.shape[0]
    full = n // SCAN_BLOCK
    for b in range(out.shape[0]):
        j0 = b * SCAN_BLOCK
        if b < full:
            m = _block_max(row[j0:j0 + SCAN_BLOCK])
        else:
            m = row[j0]
            for j in range(j0, n):
                m = m if m > row[j] else row[j]
        if metric == 0:
            out[b] = 1.0 if m > 1.0 else (-1.0 if m < -1.0 else m)
        else:
            out[b] = m * inv_scale


@njit(cache=True)
def _kth_largest(x, k, work):
    """The k-th largest entry of x (k <= len(x)), kept in the descending queue work [>= k]."""
    count = 0
    for v in x:
        if count < k:
            pos = count
            count += 1
        elif v > work[k - 1]:
            pos = k - 1
        else:
            continue
        while pos > 0 and work[pos - 1] < v:
            work[pos] = work[pos - 1]
            pos -= 1
        work[pos] = v
    return work[k - 1]


@njit(cache=True)
def _floor(bmax, need, gmax, work):
    """A lower bound on the need-th best affinity (-inf with fewer than need blocks): bmax is cut into
    about 2 * need runs of whole blocks; each run's max is an affinity it holds, so the need-th largest
    run max has need affinities at or above it. Coarse runs keep this search short (gmax: scratch)."""
    n_blocks = bmax.shape[0]
    if need < 1 or need > n_blocks:
        return -np.inf
    n_runs = min(n_blocks, 2 * need)
    for g in range(n_runs):
        b0 = (g * n_blocks) // n_runs
        b1 = ((g + 1) * n_blocks) // n_runs
        m = bmax[b0]
        for b in range(b0 + 1, b1):
            m = m if m > bmax[b] else bmax[b]
        gmax[g] = m
    return _kth_largest(gmax[:n_runs], need, work)


@njit(cache=True)
def _offer(v, tok, qtok, self_first, count, thr, slots, vals, ids):
    """One candidate in ascending token order: enter the queue when strictly better than the K-th (ties keep
    the earlier, lower, token); the query itself is left out with self_first. Return (count, threshold)."""
    if count == slots and not v > thr:
        return count, thr
    if self_first and tok == qtok:
        return count, thr
    count = _insert(v, tok, count, slots, vals, ids)
    if count == slots:
        thr = vals[slots - 1]
    return count, thr


@njit(cache=True)
def _top_slots(row, cand_row, qtok, self_first, slots, vals, ids, metric, qq, ksq, inv_scale):
    """Scan one row of raw dot products in candidate order, keeping the `slots` best affinities in vals/ids.

    Cosine rows arrive pre-normalised and are clamped to [-1, 1] before any comparison (an unclamped
    1.0000001 must not displace an earlier 1.0). Used as is for euclidean; cosine and dot go through
    _top_slots_blocked.
    """
    count = 0
    thr = -np.inf
    for j in range(row.shape[0]):
        v = _affinity(row, j, metric, qq, ksq, inv_scale)
        count, thr = _offer(v, cand_row[j], qtok, self_first, count, thr, slots, vals, ids)


@njit(cache=True)
def _top_slots_blocked(row, cand_row, qtok, self_first, slots, vals, ids, metric, inv_scale, bmax, gmax, work,
                       blocks):
    """_top_slots for cosine and dot with a block skip.

    bmax[b] is the best affinity of block b (SCAN_BLOCK entries, vectorised) and _floor a lower bound on
    the K-th best affinity (asking one more with self_first: the query's own entry may be a run's max).
    Blocks and entries below the floor can hold no neighbour; the rest is scanned in ascending order
    like _top_slots, so ties still go to the lower token.
    """
    n = row.shape[0]
    _block_maxima(row, metric, inv_scale, bmax)
    floor = _floor(bmax, slots + 1 if self_first else slots, gmax, work)
    nb = 0
    for b in range(bmax.shape[0]):
        blocks[nb] = b
        nb += 1 if bmax[b] >= floor else 0
    count = 0
    thr = -np.inf
    for t in range(nb):
        j0 = blocks[t] * SCAN_BLOCK
        for j in range(j0, min(j0 + SCAN_BLOCK, n)):
            v = _affinity(row, j, metric, 0.0, row, inv_scale)
            if v < floor or (count == slots and not v > thr):
                continue
            tok = cand_row[j]
            if self_first and tok == qtok:
                continue
            count = _insert(v, tok, count, slots, vals, ids)
            if count == slots:
                thr = vals[slots - 1]


@njit(cache=True)
def _top_slots_grid(row, cand_row, qtok, self_first, slots, vals, ids, qq, ksq, qpos, cpos, gmult, gscale):
    """_top_slots for metric euclidean with a grid: the exact coordinate part gscale * units joins the clamped
    feature part (SPEC section 4, step 1), units = sum_d gmult[d] * (qpos[d] - cpos[j, d])^2 (convnn.grid).

    A function of its own, so that the plain metrics' scan keeps its code. The coordinate part is >= 0, so
    a candidate whose feature part alone is not above the threshold is passed over without computing it."""
    count = 0
    thr = -np.inf
    n_axes = gmult.shape[0]
    for j in range(row.shape[0]):
        sq = (qq + ksq[j]) - 2.0 * row[j]
        sq = sq if sq > 0.0 else 0.0
        if count == slots and not -sq > thr:
            continue
        units = 0
        for d in range(n_axes):
            off = qpos[d] - cpos[j, d]
            units += gmult[d] * off * off
        v = -(sq + gscale * units)
        if count == slots and not v > thr:
            continue
        tok = cand_row[j]
        if self_first and tok == qtok:
            continue
        count = _insert(v, tok, count, slots, vals, ids)
        if count == slots:
            thr = vals[slots - 1]


@njit(parallel=True, cache=True)
def select_topk(q, q_rows, kf, cand, queries, heads, metric, slots, self_first, block_rows, has_grid, gshape, gmult,
                gscale, out_idx, want_aff, out_aff):
    """Rank-ordered neighbour token indices out_idx [B, H, Nq, K]: query i is row q[b, q_rows[i]], keys kf [B, N, F].
    With want_aff (and not self_first), out_aff [B, H, Nq, K] receives the slots' affinities as the scan saw them.

    cand [B, S] (sorted ascending) are the candidate token indices; with self_first slot 0 is the
    query's own token queries[i] and the other slots exclude it. Channel group h of F is head h.
    Cosine rows are normalised before the GEMM, so its output is the cosine itself. has_grid (euclidean,
    one head): the padded grid gshape [D], its integer axis weights gmult [D] and the unit gscale add
    the exact coordinate part of the queries' and candidates' token offsets (F may then be 0).
    """
    n_batch, n_feat = q.shape[0], q.shape[2]
    n_query = q_rows.shape[0]
    n_cand = cand.shape[1]
    fh = n_feat // heads
    first = 1 if self_first else 0
    dtype = q.dtype
    inv_scale = 1.0 / math.sqrt(fh) if fh > 0 else 1.0
    grid_scan = has_grid and metric == 1
    n_axes = gshape.shape[0] if grid_scan else 0
    cpos = np.empty((n_batch, n_cand, n_axes), dtype=np.int64)  # the candidates' grid positions
    if grid_scan:
        for b in prange(n_batch):
            for j in range(n_cand):
                grid_coords(cand[b, j], gshape, cpos[b, j])
    # per (image, head): candidate feature rows [S, fh] (unit rows for cosine) and their squared norms
    kc = np.empty((n_batch, heads, n_cand, fh), dtype=dtype)
    ksq = np.empty((n_batch, heads, n_cand), dtype=dtype)
    # narrow features: the same rows transposed [fh, S], so the plain-loop affinities run along S (vectorised)
    kt = np.empty((n_batch, heads, fh if fh < SMALL_FEATURES else 0, n_cand), dtype=dtype)
    for bh in prange(n_batch * heads):
        b = bh // heads
        h = bh % heads
        for j in range(n_cand):
            feats = kf[b, cand[b, j], h * fh:(h + 1) * fh]  # a slice, so whole-vector copies (not gathers)
            for f in range(fh):
                kc[b, h, j, f] = feats[f]
            acc = sum_squares(kc[b, h, j])
            ksq[b, h, j] = acc
            if metric == 0:
                inv = 1.0 / max(math.sqrt(acc), EPS_NORM)
                for f in range(fh):
                    kc[b, h, j, f] = kc[b, h, j, f] * inv
            for f in range(kt.shape[2]):
                kt[b, h, f, j] = kc[b, h, j, f]
    n_blocks = (n_query + block_rows - 1) // block_rows
    for item in prange(n_batch * heads * n_blocks):
        b = item // (heads * n_blocks)
        rest = item % (heads * n_blocks)
        h = rest // n_blocks
        i0 = (rest % n_blocks) * block_rows
        i1 = min(i0 + block_rows, n_query)
        rows = i1 - i0
        qb = np.empty((rows, fh), dtype=dtype)
        qsq = np.empty(rows, dtype=np.float64)
        for r in range(rows):
            feats = q[b, q_rows[i0 + r], h * fh:(h + 1) * fh]
            for f in range(fh):
                qb[r, f] = feats[f]
            acc = sum_squares(qb[r])
            qsq[r] = acc
            if metric == 0:
                inv = 1.0 / max(math.sqrt(acc), EPS_NORM)
                for f in range(fh):
                    qb[r, f] = qb[r, f] * inv
        kch = kc[b, h]
        if fh >= SMALL_FEATURES:
            aff = np.dot(qb, kch.T)
        else:
            aff = np.zeros((rows, n_cand), dtype=dtype)
            ktb = kt[b, h]
            for r in range(rows):
                arow = aff[r]
                for f in range(fh):
                    qv = qb[r, f]
                    kcol = ktb[f]
                    for j in range(n_cand):
                        arow[j] += qv * kcol[j]
        vals = np.empty(max(slots, 1), dtype=np.float64)
        ids = np.empty(max(slots, 1), dtype=np.int64)
        bmax = np.empty((n_cand + SCAN_BLOCK - 1) // SCAN_BLOCK, dtype=np.float64)
        work = np.empty(slots + 1, dtype=np.float64)
        blocks = np.empty(bmax.shape[0], dtype=np.int64)
        gmax = np.empty(2 * slots + 2, dtype=np.float64)
        qpos = np.empty(n_axes, dtype=np.int64)
        ksq_bh = ksq[b, h]
        cand_row = cand[b]
        for r in range(rows):
            i = i0 + r
            qtok = queries[i]
            if slots > 0 and grid_scan:
                grid_coords(qtok, gshape, qpos)
                _top_slots_grid(aff[r], cand_row, qtok, self_first, slots, vals, ids, qsq[r], ksq_bh, qpos, cpos[b],
                                gmult, gscale)
            elif slots > 0 and metric != 1:
                _top_slots_blocked(aff[r], cand_row, qtok, self_first, slots, vals, ids, metric, inv_scale, bmax, gmax,
                                   work, blocks)
            elif slots > 0:
                _top_slots(aff[r], cand_row, qtok, self_first, slots, vals, ids, metric, qsq[r], ksq_bh, inv_scale)
            if self_first:
                out_idx[b, h, i, 0] = qtok
            for s in range(slots):
                out_idx[b, h, i, first + s] = ids[s]
                if want_aff:
                    out_aff[b, h, i, first + s] = vals[s]
    return out_idx

