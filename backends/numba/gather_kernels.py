"""Numba kernels for the aggregation: gather the K neighbours of a block of query rows and apply the taps.

Full taps: a block's gathered tile G [R, K*C] (rho applied, in L2) times the taps W2t [K*C, O] in
one GEMM, so [B, N, K, C] is never stored. Depthwise taps are plain loops. Channel group h of the
values (the head) uses neighbour list h. Backward kernels own whole images (no two threads write
the same row of dvalues) and reduce the weight gradient over a fixed split in a fixed order, so
the result is the same on every run with the same thread count.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _gather_tile(values, idx, rho, has_rho, b, i0, rows, out):
    """out[r, k*C + c] = rho[b, h, i, k] * values[b, idx[b, h, i, k], c] for rows i0..i0+rows-1."""
    heads = idx.shape[1]
    n_slots = idx.shape[3]
    n_chan = values.shape[2]
    ch = n_chan // heads
    for r in range(rows):
        i = i0 + r
        for k in range(n_slots):
            base = k * n_chan
            for h in range(heads):
                t = idx[b, h, i, k]
                c0 = h * ch
                dst = out[r, base + c0:base + c0 + ch]
                src = values[b, t, c0:c0 + ch]
                if has_rho:
                    w = rho[b, h, i, k]
                    for c in range(ch):
                        dst[c] = w * src[c]
                else:
                    dst[:] = src
    return out


@njit(parallel=True, cache=True)
def gather_full(values, idx, rho, has_rho, w2t, block_rows, out):
    """out[b, i, :] = G[b, i, :] @ w2t for values [B, N, C], idx [B, H, Nq, K], w2t [K*C, O]."""
    n_batch = idx.shape[0]
    n_query = idx.shape[2]
    kc = w2t.shape[0]
    n_blocks = (n_query + block_rows - 1) // block_rows
    for item in prange(n_batch * n_blocks):
        b = item // n_blocks
        i0 = (item % n_blocks) * block_rows
        rows = min(block_rows, n_query - i0)
        tile = np.empty((rows, kc), dtype=values.dtype)
        _gather_tile(values, idx, rho, has_rho, b, i0, rows, tile)
        out[b, i0:i0 + rows, :] = np.dot(tile, w2t)
    return out


@njit(parallel=True, cache=True)
def gather_depthwise(values, idx, rho, has_rho, taps, out):
    """out[b, i, c] = sum_k taps[c, k] * rho[b, h(c), i, k] * values[b, idx[b, h(c), i, k], c]."""
    n_batch, heads, n_query, n_slots = idx.shape
    n_chan = values.shape[2]
    ch = n_chan // heads
    for item in prange(n_batch * n_query):
        b = item // n_query
        i = item % n_query
        for c in range(n_chan):
            out[b, i, c] = 0.0
        for h in range(heads):
            c0 = h * ch
            for k in range(n_slots):
                t = idx[b, h, i, k]
                w = rho[b, h, i, k] if has_rho else 1.0
                for c in range(c0, c0 + ch):
                    out[b, i, c] += taps[c, k] * w * values[b, t, c]
    return out


@njit(cache=True)
def _scatter_tile(dtile, values, idx, rho, has_rho, b, i0, rows, dvalues, drho):
    """The gather's transpose for one tile: dvalues[b, idx] += rho * dtile rows; drho = <dtile, values> (with rho)."""
    heads = idx.shape[1]
    n_slots = idx.shape[3]
    n_chan = values.shape[2]
    ch = n_chan // heads
    for r in range(rows):
        i = i0 + r
        for k in range(n_slots):
            base = k * n_chan
            for h in range(heads):
                t = idx[b, h, i, k]
                c0 = h * ch
                if has_rho:
                    w = rho[b, h, i, k]
                    dr = 0.0
                    for c in range(c0, c0 + ch):
                        g = dtile[r, base + c]
                        dr += g * values[b, t, c]
                        dvalues[b, t, c] += w * g
                    drho[b, h, i, k] += dr
                else:
                    for c in range(c0, c0 + ch):
                        dvalues[b, t, c] += dtile[r, base + c]


@njit(parallel=True, cache=True)
def gather_full_grad(dy, values, idx, rho, has_rho, w2t, w2, block_rows, n_split, dvalues, drho, dw2t_parts):
    """Backward of gather_full: accumulate dvalues [B, N, C], drho [B, H, Nq, K] and per-split dw2t.

    Images are split into n_split contiguous runs; run s owns those images' rows of dvalues and
    its own dw2t_parts[s], so nothing is written by two threads.
    """
    n_batch, heads, n_query, n_slots = idx.shape
    kc = w2t.shape[0]
    n_blocks = (n_query + block_rows - 1) // block_rows
    for s in prange(n_split):
        b_start = (s * n_batch) // n_split
        b_stop = ((s + 1) * n_batch) // n_split
        acc = dw2t_parts[s]
        tile = np.empty((block_rows, kc), dtype=values.dtype)
        for b in range(b_start, b_stop):
            for blk in range(n_blocks):
                i0 = blk * block_rows
                rows = min(block_rows, n_query - i0)
                dyb = dy[b, i0:i0 + rows]
                tb = tile[:rows]
                _gather_tile(values, idx, rho, has_rho, b, i0, rows, tb)
                acc += np.dot(tb.T, dyb)
                _scatter_tile(np.dot(dyb, w2), values, idx, rho, has_rho, b, i0, rows, dvalues, drho)
    return dvalues, drho, dw2t_parts


@njit(parallel=True, cache=True)
def gather_depthwise_grad(dy, values, idx, rho, has_rho, taps, n_split, dvalues, drho, dtaps_parts):
    """Backward of gather_depthwise: dvalues, drho and per-split dtaps [n_split, C, K], race-free."""
    n_batch, heads, n_query, n_slots = idx.shape
    n_chan = values.shape[2]
    ch = n_chan // heads
    for s in prange(n_split):
        b_start = (s * n_batch) // n_split
        b_stop = ((s + 1) * n_batch) // n_split
        acc = dtaps_parts[s]
        for b in range(b_start, b_stop):
            for i in range(n_query):
                for h in range(heads):
                    c0 = h * ch
                    for k in range(n_slots):
                        t = idx[b, h, i, k]
                        w = rho[b, h, i, k] if has_rho else 1.0
                        dr = 0.0
                        for c in range(c0, c0 + ch):
                            g = dy[b, i, c]
                            v = values[b, t, c]
                            acc[c, k] += g * w * v
                            dr += g * taps[c, k] * v
                            dvalues[b, t, c] += g * taps[c, k] * w
                        if has_rho:
                            drho[b, h, i, k] += dr
    return dvalues, drho, dtaps_parts
