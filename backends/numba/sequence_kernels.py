"""Numba kernels for the sequence-model vocabulary: LayerNorm, exact GELU, softmax, dense attention, dropout.

Each forward has a fused backward, so the autograd graph holds one node per op instead of a dozen
NumPy nodes (whose VJPs also promote float32 to float64). Row-wise kernels hand out blocks of rows,
elementwise kernels blocks of elements (the parallel region hands out one iteration at a time), each
block a slice looped from 0 so LLVM can vectorize it.
Reductions over rows (the LayerNorm parameter gradients) go to one part per block, summed in a
fixed order afterwards, so results are the same on every run. Statistics accumulate in float64.
error_model="numpy" (x / 0 is inf, not ZeroDivisionError) lets LLVM vectorize the divisions; numba has
no vector exp without Intel SVML, so the big elementwise exps (GELU's density) come from NumPy's.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

ELEMENT_BLOCK = 16384  # elements per parallel work item of the elementwise kernels
INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def row_block(n_rows: int, width: int) -> int:
    """Rows per parallel work item: about ELEMENT_BLOCK elements, at least one row."""
    return max(1, min(n_rows, ELEMENT_BLOCK // max(width, 1)))


# ----------------------------------------------------------------------------- LayerNorm
@njit(cache=True, error_model="numpy")
def _row_stats(x, r, eps):
    """(mean, 1/sqrt(biased var + eps)) of row r, two-pass in float64."""
    d = x.shape[1]
    s = 0.0
    for j in range(d):
        s += x[r, j]
    mean = s / d
    v = 0.0
    for j in range(d):
        c = x[r, j] - mean
        v += c * c
    return mean, 1.0 / math.sqrt(v / d + eps)


@njit(parallel=True, cache=True, error_model="numpy")
def layer_norm_fwd(x, gamma, beta, eps, rows, out):
    """out[r] = (x[r] - mean) / sqrt(var + eps) * gamma + beta for x [R, D]."""
    n, d = x.shape
    n_blocks = (n + rows - 1) // rows
    for blk in prange(n_blocks):
        for r in range(blk * rows, min(n, blk * rows + rows)):
            mean, rstd = _row_stats(x, r, eps)
            for j in range(d):
                out[r, j] = (x[r, j] - mean) * rstd * gamma[j] + beta[j]
    return out


@njit(parallel=True, cache=True, error_model="numpy")
def layer_norm_bwd(g, x, gamma, eps, rows, dx, dgamma_parts, dbeta_parts):
    """dx [R, D] and per-block parts of dgamma, dbeta [blocks, D] of LayerNorm for upstream g [R, D]."""
    n, d = x.shape
    n_blocks = (n + rows - 1) // rows
    for blk in prange(n_blocks):
        xhat = np.empty(d, dtype=np.float64)
        for r in range(blk * rows, min(n, blk * rows + rows)):
            mean, rstd = _row_stats(x, r, eps)
            s_gh = 0.0
            s_ghx = 0.0
            for j in range(d):
                xh = (x[r, j] - mean) * rstd
                xhat[j] = xh
                gj = g[r, j]
                gh = gj * gamma[j]
                s_gh += gh
                s_ghx += gh * xh
                dgamma_parts[blk, j] += gj * xh
                dbeta_parts[blk, j] += gj
            m_gh = s_gh / d
            m_ghx = s_ghx / d
            for j in range(d):
                dx[r, j] = rstd * (g[r, j] * gamma[j] - m_gh - xhat[j] * m_ghx)
    return dx


# ----------------------------------------------------------------------------- GELU
# erf(x) ~ x P(x^2) / Q(x^2) on |x| <= 4 (clamped beyond, where erf is 1 to 1.6e-8): a rational fit made for this
# file (iterated weighted least squares on [0, 4]), within 1.4e-8 of erf everywhere, below float32's resolution of
# 1 + erf. float32 uses it (branch-free, so the loop vectorizes); float64 uses libm's erf (full precision).
ERF_P = (1.1283791821004239, 0.18471132222002845, 0.05433213457438826, 0.0038394931936932297,
         0.0003826672667048998, 4.779841774248693e-06, -1.3663202155948157e-08)
ERF_Q = (1.0, 0.4970296924040756, 0.11382618774608413, 0.015453355311804657, 0.0013095383984612942,
         6.400269665061721e-05)
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = ERF_P
_Q1, _Q2, _Q3, _Q4, _Q5 = ERF_Q[1:]


@njit(inline="always", error_model="numpy")
def _erf_rational(v):
    """erf(v) to 1.4e-8 absolute: the rational fit on the clamped argument."""
    c = min(max(v, -4.0), 4.0)
    t = c * c
    num = _P0 + t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * (_P5 + t * _P6)))))
    den = 1.0 + t * (_Q1 + t * (_Q2 + t * (_Q3 + t * (_Q4 + t * _Q5))))
    return c * num / den


@njit(inline="always", error_model="numpy")
def _cdf_rational(v):
    """Phi(v) = (1 + erf(v / sqrt 2)) / 2 with the rational erf."""
    return 0.5 * (1.0 + _erf_rational(v * INV_SQRT2))


@njit(inline="always", error_model="numpy")
def _cdf_libm(v):
    """Phi(v) = (1 + erf(v / sqrt 2)) / 2 with libm's erf."""
    return 0.5 * (1.0 + math.erf(v * INV_SQRT2))


@njit(cache=True, error_model="numpy")
def _gelu_rational(x, out):
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        out[i] = v * _cdf_rational(v)


@njit(cache=True, error_model="numpy")
def _gelu_libm(x, out):
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        out[i] = v * _cdf_libm(v)


@njit(cache=True, error_model="numpy")
def _gelu_grad_rational(x, g, density, out):
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        out[i] = g[i] * (_cdf_rational(v) + v * INV_SQRT_2PI * density[i])


@njit(cache=True, error_model="numpy")
def _gelu_grad_libm(x, g, density, out):
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        out[i] = g[i] * (_cdf_libm(v) + v * INV_SQRT_2PI * density[i])


@njit(parallel=True, cache=True, error_model="numpy")
def gelu_fwd(x, approx, out):
    """out = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) on flat arrays, evaluated in float64 (approx: rational erf)."""
    n = x.shape[0]
    n_blocks = (n + ELEMENT_BLOCK - 1) // ELEMENT_BLOCK
    for blk in prange(n_blocks):
        lo = blk * ELEMENT_BLOCK
        hi = min(n, lo + ELEMENT_BLOCK)
        if approx:
            _gelu_rational(x[lo:hi], out[lo:hi])
        else:
            _gelu_libm(x[lo:hi], out[lo:hi])
    return out


@njit(parallel=True, cache=True, error_model="numpy")
def gelu_bwd(x, g, density, approx, out):
    """out = g * (Phi(x) + x phi(x)), the derivative of the exact GELU, on flat arrays; density = exp(-x^2 / 2)."""
    n = x.shape[0]
    n_blocks = (n + ELEMENT_BLOCK - 1) // ELEMENT_BLOCK
    for blk in prange(n_blocks):
        lo = blk * ELEMENT_BLOCK
        hi = min(n, lo + ELEMENT_BLOCK)
        if approx:
            _gelu_grad_rational(x[lo:hi], g[lo:hi], density[lo:hi], out[lo:hi])
        else:
            _gelu_grad_libm(x[lo:hi], g[lo:hi], density[lo:hi], out[lo:hi])
    return out


# ----------------------------------------------------------------------------- softmax (last axis; the forward is NumPy's)
@njit(cache=True, error_model="numpy")
def _softmax_row(x, r, out):
    """out[r] = exp(x[r] - max) / sum: a row of -inf gives NaN, as the NumPy formula does."""
    d = x.shape[1]
    m = x[r, 0]
    for j in range(1, d):
        if x[r, j] > m:
            m = x[r, j]
    s = 0.0
    for j in range(d):
        e = math.exp(x[r, j] - m)
        out[r, j] = e
        s += e
    for j in range(d):
        out[r, j] = out[r, j] / s


@njit(parallel=True, cache=True, error_model="numpy")
def softmax_bwd(y, g, rows, out):
    """out[r] = y[r] * (g[r] - <g[r], y[r]>), the softmax VJP from its output y [R, D]."""
    n, d = y.shape
    n_blocks = (n + rows - 1) // rows
    for blk in prange(n_blocks):
        for r in range(blk * rows, min(n, blk * rows + rows)):
            c = 0.0
            for j in range(d):
                c += g[r, j] * y[r, j]
            for j in range(d):
                out[r, j] = y[r, j] * (g[r, j] - c)
    return out


# ----------------------------------------------------------------------------- dense attention
@njit(cache=True, error_model="numpy")
def _head(t, b, c0, dh):
    """A contiguous copy of t[b, :, c0:c0+dh] (one head's rows), for the BLAS calls."""
    return np.ascontiguousarray(t[b, :, c0:c0 + dh])


@njit(cache=True, error_model="numpy")
def _probs(qh, kh, mask, has_mask, m_idx, root):
    """P = softmax(q k^T / sqrt(d_head)) with masked scores at -inf, for one (image, head)."""
    s = np.dot(qh, kh.T)
    n, m = s.shape
    for i in range(n):
        for j in range(m):
            v = s[i, j] / root
            if has_mask and not mask[m_idx, i, j]:
                v = -np.inf
            s[i, j] = v
    p = np.empty_like(s)
    for i in range(n):
        _softmax_row(s, i, p)
    return p


@njit(parallel=True, cache=True, error_model="numpy")
def attention_fwd(q, k, v, heads, mask, has_mask, keep, has_keep, drop_scale, out):
    """out[b, :, head h] = dropout(softmax(q_h k_h^T / sqrt(d_h) [masked])) v_h for q, k, v [B, N, D].

    mask [1 or B*heads, N, N] (False: masked out), keep [B*heads, N, N] (dropout: kept entries, scaled
    by drop_scale); the head index of image b, head h is b*heads + h.
    """
    n_batch = q.shape[0]
    dh = q.shape[2] // heads
    root = math.sqrt(dh)
    for item in prange(n_batch * heads):
        bh = np.int64(item)
        b = bh // heads
        c0 = (bh % heads) * dh
        m_idx = bh if mask.shape[0] > 1 else np.int64(0)
        p = _probs(_head(q, b, c0, dh), _head(k, b, c0, dh), mask, has_mask, m_idx, root)
        if has_keep:
            for i in range(p.shape[0]):
                for j in range(p.shape[1]):
                    p[i, j] = p[i, j] * drop_scale if keep[bh, i, j] else 0.0 * p[i, j]
        out[b, :, c0:c0 + dh] = np.dot(p, _head(v, b, c0, dh))
    return out


@njit(parallel=True, cache=True, error_model="numpy")
def attention_bwd(q, k, v, heads, mask, has_mask, keep, has_keep, drop_scale, g, dq, dk, dv):
    """dq, dk, dv of attention_fwd for upstream g [B, N, D]: the probabilities recomputed, then GEMMs."""
    n_batch = q.shape[0]
    dh = q.shape[2] // heads
    root = math.sqrt(dh)
    for item in prange(n_batch * heads):
        bh = np.int64(item)
        b = bh // heads
        c0 = (bh % heads) * dh
        m_idx = bh if mask.shape[0] > 1 else np.int64(0)
        qh = _head(q, b, c0, dh)
        kh = _head(k, b, c0, dh)
        vh = _head(v, b, c0, dh)
        gh = _head(g, b, c0, dh)
        p = _probs(qh, kh, mask, has_mask, m_idx, root)
        dpd = np.dot(gh, vh.T)  # d(dropped probabilities)
        pd = p.copy()
        if has_keep:
            for i in range(p.shape[0]):
                for j in range(p.shape[1]):
                    if keep[bh, i, j]:
                        pd[i, j] = p[i, j] * drop_scale
                        dpd[i, j] = dpd[i, j] * drop_scale
                    else:
                        pd[i, j] = 0.0 * p[i, j]
                        dpd[i, j] = 0.0 * dpd[i, j]
        dv[b, :, c0:c0 + dh] = np.dot(pd.T, gh)
        ds = np.empty_like(p)
        for i in range(p.shape[0]):
            c = 0.0
            for j in range(p.shape[1]):
                c += dpd[i, j] * p[i, j]
            for j in range(p.shape[1]):
                ds[i, j] = p[i, j] * (dpd[i, j] - c) / root
        dq[b, :, c0:c0 + dh] = np.dot(ds, kh)
        dk[b, :, c0:c0 + dh] = np.dot(ds.T, qh)
    return dq


# ----------------------------------------------------------------------------- dropout
@njit(cache=True, error_model="numpy")
def _keep_scale_block(x, keep, scale, out):
    for i in range(x.shape[0]):
        out[i] = x[i] * scale if keep[i] else x[i] * 0.0


@njit(parallel=True, cache=True, error_model="numpy")
def keep_scale(x, keep, scale, out):
    """out = x * scale where keep, else x * 0 (inverted dropout with a drawn mask), on flat arrays."""
    n = x.shape[0]
    n_blocks = (n + ELEMENT_BLOCK - 1) // ELEMENT_BLOCK
    for blk in prange(n_blocks):
        lo = blk * ELEMENT_BLOCK
        hi = min(n, lo + ELEMENT_BLOCK)
        _keep_scale_block(x[lo:hi], keep[lo:hi], scale, out[lo:hi])
    return out
