"""Numba kernels for the VGG vocabulary: im2col / col2im, the conv layout passes, BatchNorm, ReLU and pooling.

Every kernel is memory-bound. Arrays come in flat (C order) with their sizes passed alongside, and
work is split into `n_blocks` contiguous runs of items (channels, (image, channel) pairs, column
rows): the backend's parallel regions hand out loop iterations one at a time, so an item as small
as a 2x2 map would cost more to schedule than to compute. No two threads write the same element,
so each result is the same on every run. The GEMMs of conv2d run in BLAS outside these kernels.
Column layout: cols[(c*kh + i)*kw + j, (b*Ho + y)*Wo + x] = x_padded[b, c, y*s + i, x*s + j].
Inner loops run over slices taken first (`d = out[a:b]; d[t] = ...`): numba vectorises those, while
an offset index into the whole flat array (`out[a + t]`) stays scalar, 3-4x slower.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always")
def _span(blk, n_blocks, n_items):
    """Items [lo, hi) of block blk when n_items are split into n_blocks contiguous runs."""
    return blk * n_items // n_blocks, (blk + 1) * n_items // n_blocks


@njit(inline="always")
def _valid_range(j, stride, left, w, wo):
    """The output columns xo whose input column xo*stride + j - left lies inside [0, w)."""
    lo = max(0, (left - j + stride - 1) // stride)
    hi = min(wo, (w - 1 + left - j) // stride + 1)
    return lo, max(lo, hi)


# ----------------------------------------------------------------------------- conv2d
@njit(parallel=True, cache=True)
def im2col(x, n_batch, n_chan, h, w, kh, kw, stride, top, left, ho, wo, cols, n_blocks):
    """Fill cols [C*kh*kw, B*Ho*Wo] with the windows of x [B, C, H, W] zero-padded by (top, left)."""
    n_rows = n_chan * kh * kw
    hw_out = ho * wo
    n_cols = n_batch * hw_out
    for blk in prange(n_blocks):
        r0, r1 = _span(blk, n_blocks, n_rows)
        for r in range(r0, r1):
            c = r // (kh * kw)
            i = (r // kw) % kh
            j = r % kw
            lo, hi = _valid_range(j, stride, left, w, wo)
            ylo, yhi = _valid_range(i, stride, top, h, ho)
            whole_rows = stride == 1 and lo == 0 and hi == wo and wo == w
            for b in range(n_batch):
                plane = x[(b * n_chan + c) * h * w:(b * n_chan + c + 1) * h * w]
                dst = cols[r * n_cols + b * hw_out:r * n_cols + (b + 1) * hw_out]
                for q in range(ylo * wo):
                    dst[q] = 0.0
                tail = dst[yhi * wo:]
                for q in range(tail.shape[0]):
                    tail[q] = 0.0
                if whole_rows:  # the rows are one contiguous run of the plane
                    src = plane[(ylo + i - top) * w:(yhi + i - top) * w]
                    run = dst[ylo * wo:yhi * wo]
                    for q in range(run.shape[0]):
                        run[q] = src[q]
                    continue
                for y in range(ylo, yhi):
                    d = dst[y * wo:(y + 1) * wo]
                    s0 = (y * stride + i - top) * w + j - left
                    for t in range(lo):
                        d[t] = 0.0
                    for t in range(hi, wo):
                        d[t] = 0.0
                    if stride == 1:
                        src = plane[s0 + lo:s0 + hi]
                        run = d[lo:hi]
                        for t in range(hi - lo):
                            run[t] = src[t]
                    else:
                        for t in range(lo, hi):
                            d[t] = plane[s0 + t * stride]
    return cols


@njit(parallel=True, cache=True)
def col2im(dcols, n_batch, n_chan, h, w, kh, kw, stride, top, left, ho, wo, dx, n_blocks):
    """dx [B, C, H, W] = the transpose of im2col applied to dcols: overlapping windows add up, the taps
    in (i, j) order into each map, which stays in cache while its taps are added."""
    hw_out = ho * wo
    n_cols = n_batch * hw_out
    for blk in prange(n_blocks):
        i0, i1 = _span(blk, n_blocks, n_batch * n_chan)
        for item in range(i0, i1):  # channel-major: neighbouring items read neighbouring column segments
            c = item // n_batch
            b = item % n_batch
            plane = dx[(b * n_chan + c) * h * w:(b * n_chan + c + 1) * h * w]
            for q in range(h * w):
                plane[q] = 0.0
            for i in range(kh):
                ylo, yhi = _valid_range(i, stride, top, h, ho)
                for j in range(kw):
                    lo, hi = _valid_range(j, stride, left, w, wo)
                    src = dcols[((c * kh + i) * kw + j) * n_cols + b * hw_out:
                                ((c * kh + i) * kw + j) * n_cols + (b + 1) * hw_out]
                    for y in range(ylo, yhi):
                        s = src[y * wo + lo:y * wo + hi]
                        d0 = (y * stride + i - top) * w + j - left
                        if stride == 1:
                            d = plane[d0 + lo:d0 + hi]
                            for t in range(hi - lo):
                                d[t] += s[t]
                        else:
                            for t in range(hi - lo):
                                plane[d0 + (lo + t) * stride] += s[t]
    return dx


@njit(parallel=True, cache=True)
def rows_to_map(y2, bias, has_bias, n_batch, n_out, n_pix, out, n_blocks):
    """out [B, O, P] = y2 [O, B*P] regrouped per image, plus bias [O]."""
    for blk in prange(n_blocks):
        i0, i1 = _span(blk, n_blocks, n_batch * n_out)
        for item in range(i0, i1):  # channel-major: neighbouring items read neighbouring segments of y2
            o = item // n_batch
            b = item % n_batch
            src = y2[item * n_pix:(item + 1) * n_pix]
            dst = out[(b * n_out + o) * n_pix:(b * n_out + o + 1) * n_pix]
            add = bias[o] if has_bias else 0.0
            for p in range(n_pix):
                dst[p] = src[p] + add
    return out


@njit(parallel=True, cache=True)
def map_to_rows(g, n_batch, n_out, n_pix, g2, dbias, n_blocks):
    """g2 [O, B*P] = g [B, O, P] regrouped per output channel; dbias[o] = sum of g[:, o] (float64)."""
    for blk in prange(n_blocks):
        o0, o1 = _span(blk, n_blocks, n_out)
        for o in range(o0, o1):
            acc = 0.0
            for b in range(n_batch):
                src = g[(b * n_out + o) * n_pix:(b * n_out + o + 1) * n_pix]
                dst = g2[(o * n_batch + b) * n_pix:(o * n_batch + b + 1) * n_pix]
                for p in range(n_pix):
                    dst[p] = src[p]
                for p in range(n_pix):
                    acc += src[p]
            dbias[o] = acc
    return g2


# ----------------------------------------------------------------------------- batch norm
@njit(parallel=True, cache=True)
def channel_stats(x, n_batch, n_chan, n_pix, mean, var, n_blocks):
    """Per-channel mean and biased variance of x [B, C, P] over B and P (two passes, float64 sums)."""
    n = n_batch * n_pix
    for blk in prange(n_blocks):
        c0, c1 = _span(blk, n_blocks, n_chan)
        for c in range(c0, c1):
            s = 0.0
            for b in range(n_batch):
                xs = x[(b * n_chan + c) * n_pix:(b * n_chan + c + 1) * n_pix]
                for p in range(n_pix):
                    s += xs[p]
            m = s / n
            q = 0.0
            for b in range(n_batch):
                xs = x[(b * n_chan + c) * n_pix:(b * n_chan + c + 1) * n_pix]
                for p in range(n_pix):
                    d = xs[p] - m
                    q += d * d
            mean[c] = m
            var[c] = q / n
    return mean


@njit(parallel=True, cache=True)
def channel_affine(x, n_batch, n_chan, n_pix, mean, scale, shift, out, n_blocks):
    """out[b, c, p] = (x[b, c, p] - mean[c]) * scale[c] + shift[c] for x [B, C, P]."""
    for blk in prange(n_blocks):
        i0, i1 = _span(blk, n_blocks, n_batch * n_chan)
        for item in range(i0, i1):
            c = item % n_chan
            m, s, t = mean[c], scale[c], shift[c]
            xs = x[item * n_pix:(item + 1) * n_pix]
            ys = out[item * n_pix:(item + 1) * n_pix]
            for p in range(n_pix):
                ys[p] = (xs[p] - m) * s + t
    return out


@njit(parallel=True, cache=True)
def channel_sums(g, x, n_batch, n_chan, n_pix, mean, sum_g, sum_gx, n_blocks):
    """sum_g[c] = sum of g[:, c]; sum_gx[c] = sum of g[:, c] * (x[:, c] - mean[c]) (float64 sums)."""
    for blk in prange(n_blocks):
        c0, c1 = _span(blk, n_blocks, n_chan)
        for c in range(c0, c1):
            a = 0.0
            q = 0.0
            m = mean[c]
            for b in range(n_batch):
                gs = g[(b * n_chan + c) * n_pix:(b * n_chan + c + 1) * n_pix]
                xs = x[(b * n_chan + c) * n_pix:(b * n_chan + c + 1) * n_pix]
                for p in range(n_pix):
                    v = gs[p]
                    a += v
                    q += v * (xs[p] - m)
            sum_g[c] = a
            sum_gx[c] = q
    return sum_g


@njit(parallel=True, cache=True)
def batch_norm_train_dx(g, x, n_batch, n_chan, n_pix, mean, invstd, gamma, sum_g, sum_gx, dx, n_blocks):
    """dx of y = (x - mean_B(x)) * invstd_B(x) * gamma + beta through the batch statistics."""
    n = n_batch * n_pix
    for blk in prange(n_blocks):
        i0, i1 = _span(blk, n_blocks, n_batch * n_chan)
        for item in range(i0, i1):
            c = item % n_chan
            m = mean[c]
            k = gamma[c] * invstd[c]
            mg = sum_g[c] / n
            mq = sum_gx[c] * invstd[c] * invstd[c] / n
            gs = g[item * n_pix:(item + 1) * n_pix]
            xs = x[item * n_pix:(item + 1) * n_pix]
            ds = dx[item * n_pix:(item + 1) * n_pix]
            for p in range(n_pix):
                ds[p] = k * (gs[p] - mg - (xs[p] - m) * mq)
    return dx


@njit(parallel=True, cache=True)
def channel_scale(g, n_batch, n_chan, n_pix, scale, dx, n_blocks):
    """dx[b, c, p] = g[b, c, p] * scale[c]."""
    for blk in prange(n_blocks):
        i0, i1 = _span(blk, n_blocks, n_batch * n_chan)
        for item in range(i0, i1):
            s = scale[item % n_chan]
            gs = g[item * n_pix:(item + 1) * n_pix]
            ds = dx[item * n_pix:(item + 1) * n_pix]
            for p in range(n_pix):
                ds[p] = gs[p] * s
    return dx


# ----------------------------------------------------------------------------- relu
@njit(parallel=True, cache=True)
def relu(x, out, n_blocks):
    """out = max(x, 0) elementwise on flat arrays (NaN stays NaN, as np.maximum)."""
    for blk in prange(n_blocks):
        t0, t1 = _span(blk, n_blocks, x.shape[0])
        xs = x[t0:t1]
        ys = out[t0:t1]
        for t in range(t1 - t0):
            v = xs[t]
            ys[t] = v if (v > 0.0 or v != v) else 0.0
    return out


@njit(parallel=True, cache=True)
def relu_grad(g, y, dx, n_blocks):
    """dx = g where the ReLU output y > 0, else 0 (torch's rule: no gradient at 0)."""
    for blk in prange(n_blocks):
        t0, t1 = _span(blk, n_blocks, g.shape[0])
        gs = g[t0:t1]
        ys = y[t0:t1]
        ds = dx[t0:t1]
        for t in range(t1 - t0):
            ds[t] = gs[t] if ys[t] > 0.0 else 0.0
    return dx


# ----------------------------------------------------------------------------- pooling
@njit(inline="always")
def _larger(v, best):
    """Whether v replaces the running maximum best: larger, or the first NaN (which then propagates)."""
    return best == best and not (v <= best)


@njit(parallel=True, cache=True)
def max_pool(x, n_maps, h, w, size, ho, wo, out, arg, keep_arg, n_blocks):
    """out [M, Ho, Wo] = max over size x size windows of the maps x [M, H, W]; where keep_arg, arg = the
    in-map index of each window's first maximum."""
    for blk in prange(n_blocks):
        m0, m1 = _span(blk, n_blocks, n_maps)
        for m in range(m0, m1):
            src = m * h * w
            for y in range(ho):
                k0 = (m * ho + y) * wo
                if size == 2:
                    top = src + 2 * y * w
                    for xo in range(wo):
                        a = top + 2 * xo
                        best, at = x[a], a
                        for cand in (a + 1, a + w, a + w + 1):
                            v = x[cand]
                            if _larger(v, best):
                                best, at = v, cand
                        out[k0 + xo] = best
                        if keep_arg:
                            arg[k0 + xo] = at - src
                    continue
                for xo in range(wo):
                    at = y * size * w + xo * size
                    best = x[src + at]
                    for i in range(size):
                        row = (y * size + i) * w + xo * size
                        for j in range(size):
                            v = x[src + row + j]
                            if _larger(v, best):
                                best = v
                                at = row + j
                    out[k0 + xo] = best
                    if keep_arg:
                        arg[k0 + xo] = at
    return out


@njit(parallel=True, cache=True)
def max_pool_grad(g, arg, n_maps, h, w, ho, wo, dx, n_blocks):
    """dx [M, H, W]: each window's gradient on its first maximum, zero elsewhere."""
    for blk in prange(n_blocks):
        m0, m1 = _span(blk, n_blocks, n_maps)
        for m in range(m0, m1):
            plane = dx[m * h * w:(m + 1) * h * w]
            for t in range(h * w):
                plane[t] = 0.0
            for k in range(m * ho * wo, (m + 1) * ho * wo):
                plane[arg[k]] = g[k]
    return dx


@njit(parallel=True, cache=True)
def adaptive_avg_pool(x, n_maps, h, w, oh, ow, out, n_blocks):
    """out [M, oh, ow] = the mean of the maps x [M, H, W] over torch's bins floor(i*H/oh) .. ceil((i+1)*H/oh)."""
    for blk in prange(n_blocks):
        m0, m1 = _span(blk, n_blocks, n_maps)
        for m in range(m0, m1):
            src = m * h * w
            for i in range(oh):
                r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
                for j in range(ow):
                    c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
                    s = 0.0
                    for r in range(r0, r1):
                        for q in range(c0, c1):
                            s += x[src + r * w + q]
                    out[(m * oh + i) * ow + j] = s / ((r1 - r0) * (c1 - c0))
    return out


@njit(parallel=True, cache=True)
def adaptive_avg_pool_grad(g, n_maps, h, w, oh, ow, dx, n_blocks):
    """dx [M, H, W]: each bin's gradient spread evenly over the bin (overlapping bins add up)."""
    for blk in prange(n_blocks):
        m0, m1 = _span(blk, n_blocks, n_maps)
        for m in range(m0, m1):
            base = m * h * w
            for t in range(h * w):
                dx[base + t] = 0.0
            for i in range(oh):
                r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
                for j in range(ow):
                    c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
                    v = g[(m * oh + i) * ow + j] / ((r1 - r0) * (c1 - c0))
                    for r in range(r0, r1):
                        for q in range(c0, c1):
                            dx[base + r * w + q] += v
    return dx
