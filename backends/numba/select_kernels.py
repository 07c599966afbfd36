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

BLOCK_ELEMENTS = 65536  # affinity entries per row block: 256 KiB in float32, 512 KiB in float64
SMALL_FEATURES = 8  # below this width the affinities are plain loops (a GEMM would not pay off)


def rows_per_block(n_query: int, n_cand: int) -> int:
    """Query rows per block so that one block of affinities stays in a core's L2."""
    rows = max(8, BLOCK_ELEMENTS // max(n_cand, 1))
    return max(1, min(rows, n_query))


@njit(cache=True)
def _insert(v, tok, count, slots, vals, ids):
    """Put (v, tok) into the descending queue vals/ids after every entry >= v; return the new count."""
    if count < slots:
        pos = count
        count += 1
    else:
        pos = slots - 1
    while pos > 0 and vals[pos - 1] < v:
        vals[pos] = vals[pos - 1]
        ids[pos] = ids[pos - 1]
        pos -= 1
    vals[pos] = v
    ids[pos] = tok
    return count


@njit(cache=True)
def grid_coords(tok, gshape, out):
    """The row-major position of token tok on the padded grid gshape [D], written into out [D]."""
    for d in range(gshape.shape[0] - 1, -1, -1):
        out[d] = tok % gshape[d]
        tok = tok // gshape[d]


@njit(cache=True)
def _top_slots(row, cand_row, qtok, self_first, slots, vals, ids, metric, qq, ksq, inv_scale):
    """Scan one row of raw dot products in candidate order, keeping the `slots` best affinities in vals/ids.

    Cosine rows arrive pre-normalised (the clamp to [-1, 1] is applied only to entries that enter the
    queue: an entry at or below the threshold stays there after clamping). Ties keep the earlier,
    lower, token because an entry only moves ahead of strictly smaller ones.
    """
    count = 0
    thr = -np.inf
    for j in range(row.shape[0]):
        if metric == 0:
            v = row[j]
            if count == slots and not v > thr:
                continue
            v = 1.0 if v > 1.0 else (-1.0 if v < -1.0 else v)
        elif metric == 1:
            sq = (qq + ksq[j]) - 2.0 * row[j]
            v = -sq if sq > 0.0 else 0.0
            if count == slots and not v > thr:
                continue
        else:
            v = row[j] * inv_scale
            if count == slots and not v > thr:
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
                gscale, out_idx):
    """Rank-ordered neighbour token indices out_idx [B, H, Nq, K]: query i is row q[b, q_rows[i]], keys kf [B, N, F].

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
    for bh in prange(n_batch * heads):
        b = bh // heads
        h = bh % heads
        for j in range(n_cand):
            t = cand[b, j]
            acc = 0.0
            for f in range(fh):
                v = kf[b, t, h * fh + f]
                kc[b, h, j, f] = v
                acc += v * v
            ksq[b, h, j] = acc
            if metric == 0:
                inv = 1.0 / max(math.sqrt(acc), EPS_NORM)
                for f in range(fh):
                    kc[b, h, j, f] = kc[b, h, j, f] * inv
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
            acc = 0.0
            for f in range(fh):
                v = q[b, q_rows[i0 + r], h * fh + f]
                qb[r, f] = v
                acc += v * v
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
            for r in range(rows):
                for f in range(fh):
                    qv = qb[r, f]
                    for j in range(n_cand):
                        aff[r, j] += qv * kch[j, f]
        vals = np.empty(max(slots, 1), dtype=np.float64)
        ids = np.empty(max(slots, 1), dtype=np.int64)
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
            elif slots > 0:
                _top_slots(aff[r], cand_row, qtok, self_first, slots, vals, ids, metric, qsq[r], ksq_bh, inv_scale)
            if self_first:
                out_idx[b, h, i, 0] = qtok
            for s in range(slots):
                out_idx[b, h, i, first + s] = ids[s]
    return out_idx

