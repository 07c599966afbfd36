"""Numba kernels for the aggregation: gather the K neighbours of a block of query rows and apply the taps.

Full taps: the gathered rows G [R, K*C] (rho applied) times the taps W2t [K*C, O]: forward in tiles
of rows (spanning images) that each thread gathers and multiplies itself, backward in chunks with
multi-threaded BLAS calls between gather_rows and scatter_rows, so [B, N, K, C] is never stored
whole. Depthwise taps are plain loops. Channel group h of the values (the head) uses neighbour list h. Backward kernels own whole images (no two threads write
the same row of dvalues) and reduce the weight gradient over a fixed split in a fixed order, so
the result is the same on every run with the same thread count.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _gather_tile(values, idx, rho, has_rho, row0, rows, out):
    """out[r, k*C + c] = rho[b, h, i, k] * values[b, idx[b, h, i, k], c] for the flat query rows
    row0..row0+rows-1 (row = b*Nq + i): a tile may span images, so small maps still fill a GEMM."""
    heads = idx.shape[1]
    n_query = idx.shape[2]
    n_slots = idx.shape[3]
    n_chan = values.shape[2]
    ch = n_chan // heads
    for r in range(rows):
        b = (row0 + r) // n_query
        i = (row0 + r) % n_query
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
                    for c in range(ch):
                        dst[c] = src[c]
    return out


@njit(parallel=True, cache=True)
def swap_outer_axes(a, out):
    """out [Z, Y, X] = a [X, Y, Z] with axes 0 and 2 swapped (its own inverse: taps [O, C, K] <-> rows
    [K, C, O]). Per middle index, the [X, Z] block is read row by row into a transposed buffer in L1 and
    written out row by row: 4x faster than either direct loop order, 7x faster than NumPy's strided copy."""
    n_x, n_y, n_z = a.shape
    for y in prange(n_y):
        block = np.empty((n_z, n_x), dtype=a.dtype)
        for x in range(n_x):
            src = a[x, y]
            for z in range(n_z):
                block[z, x] = src[z]
        for z in range(n_z):
            row = out[z, y]
            src = block[z]
            for x in range(n_x):
                row[x] = src[x]
    return out


@njit(parallel=True, cache=True)
def gather_full(values, idx, rho, has_rho, w2t, block_rows, out):
    """out [B*Nq, O] = G @ w2t, one block of block_rows flat rows per iteration: each thread gathers its
    block and multiplies it in its own single-threaded BLAS call, so BLAS's thread pool stays idle."""
    n_rows = out.shape[0]
    kc = w2t.shape[0]
    n_blocks = (n_rows + block_rows - 1) // block_rows
    for blk in prange(n_blocks):
        row0 = blk * block_rows
        rows = min(block_rows, n_rows - row0)
        tile = np.empty((rows, kc), dtype=values.dtype)
        _gather_tile(values, idx, rho, has_rho, row0, rows, tile)
        out[row0:row0 + rows, :] = np.dot(tile, w2t)
    return out


@njit(parallel=True, cache=True)
def gather_rows(values, idx, rho, has_rho, row0, n_blocks, out):
    """out [R, K*C] = the gathered rows row0..row0+R-1 (row = b*Nq + i), split into n_blocks runs: the
    caller multiplies them by the taps in one BLAS call, as conv2d does its im2col columns."""
    n_rows = out.shape[0]
    for blk in prange(n_blocks):
        r0 = blk * n_rows // n_blocks
        r1 = (blk + 1) * n_rows // n_blocks
        _gather_tile(values, idx, rho, has_rho, row0 + r0, r1 - r0, out[r0:r1])
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
def _scatter_tile(dtile, values, idx, rho, has_rho, row0, rows, dvalues, drho):
    """The gather's transpose for one tile of flat rows: dvalues[b, idx] += rho * dtile rows; drho = <dtile, values>."""
    heads = idx.shape[1]
    n_query = idx.shape[2]
    n_slots = idx.shape[3]
    n_chan = values.shape[2]
    ch = n_chan // heads
    for r in range(rows):
        b = (row0 + r) // n_query
        i = (row0 + r) % n_query
        for k in range(n_slots):
            base = k * n_chan
            for h in range(heads):
                t = idx[b, h, i, k]
                c0 = h * ch
                gs = dtile[r, base + c0:base + c0 + ch]
                dv = dvalues[b, t, c0:c0 + ch]
                if has_rho:
                    w = rho[b, h, i, k]
                    vs = values[b, t, c0:c0 + ch]
                    dr = 0.0
                    for c in range(ch):
                        dr += gs[c] * vs[c]
                    for c in range(ch):
                        dv[c] += w * gs[c]
                    drho[b, h, i, k] += dr
                else:
                    for c in range(ch):
                        dv[c] += gs[c]


@njit(parallel=True, cache=True)
def scatter_rows(dtile, values, idx, rho, has_rho, row0, n_split, dvalues, drho):
    """The transpose of gather_rows for the rows row0..row0+R-1 of dtile [R, K*C]: adds into dvalues
    [B, N, C] and drho. The images the rows span are split into n_split runs, one per thread, so no
    element is written by two threads and the sums come out the same on every run."""
    n_query = idx.shape[2]
    n_rows = dtile.shape[0]
    b_first = row0 // n_query
    n_img = (row0 + n_rows - 1) // n_query + 1 - b_first
    for s in prange(n_split):
        lo = max(row0, (b_first + s * n_img // n_split) * n_query)
        hi = min(row0 + n_rows, (b_first + (s + 1) * n_img // n_split) * n_query)
        if hi > lo:
            _scatter_tile(dtile[lo - row0:hi - row0], values, idx, rho, has_rho, lo, hi - lo, dvalues, drho)
    return dvalues


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


@njit(parallel=True, cache=True)
def project_gather(values, idx, rho, has_rho, w_all, start, out):
    """out [B*Nq, O] = start + sum_k rho_k * (values[b, idx[b, 0, i, k]] @ W_k) for one head (start [O]: the
    bias, or zeros): per image, its nonzero
    value rows are projected by all K taps at once (one GEMM, [N', C] @ [C, K*O]), then each query adds
    its K slots' projected rows. Zero rows (the padding) project to zero and are skipped, so the GEMM has
    the flops of the gathered product without writing the gathered [Nq, K*C] rows."""
    n_b, n_tok, n_chan = values.shape
    n_query, n_slots = idx.shape[2], idx.shape[3]
    n_out = start.shape[0]
    for b in prange(n_b):
        where = np.empty(n_tok, dtype=np.int64)  # token t's row in the projection, or -1 when all zero
        n_rows = 0
        for t in range(n_tok):
            nonzero = False
            for c in range(n_chan):
                if values[b, t, c] != 0.0:
                    nonzero = True
                    break
            where[t] = n_rows if nonzero else -1
            n_rows += 1 if nonzero else 0
        rows = np.empty((n_rows, n_chan), dtype=values.dtype)
        for t in range(n_tok):
            if where[t] >= 0:
                rows[where[t]] = values[b, t]
        proj = np.dot(rows, w_all)
        dst = out[b * n_query:(b + 1) * n_query]
        for i in range(n_query):
            dst[i] = start
        for k in range(n_slots):  # slot by slot: one slot's projected rows (N' x O) stay in L2
            for i in range(n_query):
                r = where[idx[b, 0, i, k]]
                if r < 0:
                    continue
                src = proj[r, k * n_out:(k + 1) * n_out]
                row = dst[i]
                if has_rho:
                    w = rho[b, 0, i, k]
                    for o in range(n_out):
                        row[o] += w * src[o]
                else:
                    for o in range(n_out):
                        row[o] += src[o]
    return out
