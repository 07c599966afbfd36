"""The numba kernels as HIPS autograd primitives: select (no gradient), slot affinities and gather+taps.

Each primitive takes and returns plain NumPy arrays; its VJP calls the matching backward kernel.
Everything around them (padding, coordinates, projections, softmax) is autograd NumPy, so
`autograd.grad` differentiates a whole ConvNN layer.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from autograd.extend import defvjp_argnums, primitive
from autograd.tracer import getval

from convnn.grid import Grid
from convnn.kernels import METRIC_CODES

from . import gather_kernels, select_kernels, slot_kernels
from .threads import parallel_region

_NO_RHO = {np.dtype(np.float32): np.ones((1, 1, 1, 1), np.float32),
           np.dtype(np.float64): np.ones((1, 1, 1, 1), np.float64)}


def contiguous(a: Any, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """A C-contiguous NumPy array of a's value (no copy when it already is one); the kernels' input form."""
    return np.ascontiguousarray(getval(a), dtype=dtype)


_c = contiguous


def select_indices(q: np.ndarray, q_rows: np.ndarray, kf: np.ndarray, cand: np.ndarray, queries: np.ndarray,
                   heads: int, metric: str, k: int, self_first: bool, grid: Optional[Grid] = None) -> np.ndarray:
    """Neighbour token indices [B, H, Nq, K] in rank order for the queries q[:, q_rows] (no gradient:
    indices are piecewise constant); queries are the query rows' token indices (for self_first and the
    grid, whose exact coordinate part joins the euclidean distance: SPEC section 4, step 1)."""
    q = _c(q)
    kf = q if kf is q else _c(kf, q.dtype)
    q_rows = _c(q_rows, np.int64)
    cand = _c(cand, np.int64)
    queries = _c(queries, np.int64)
    b, nq = q.shape[0], q_rows.shape[0]
    slots = k - 1 if self_first else k
    out = np.empty((b, heads, nq, k), dtype=np.int64)
    rows = select_kernels.rows_per_block(nq, cand.shape[1])
    if grid is None:
        gshape = gmult = np.zeros(0, dtype=np.int64)
        gscale = 0.0
    else:
        gshape = np.asarray(grid.shape, dtype=np.int64)
        gmult = np.asarray(grid.mult, dtype=np.int64)
        gscale = float(np.asarray(grid.scale, dtype=q.dtype))  # the constant the other backends use
    with parallel_region():
        select_kernels.select_topk(q, q_rows, kf, cand, queries, heads, METRIC_CODES[metric], slots,
                                   bool(self_first), rows, grid is not None, gshape, gmult, gscale, out)
    return out


# ----------------------------------------------------------------------------- slot affinities
@primitive
def slot_affinity(q: np.ndarray, kf: np.ndarray, idx: np.ndarray, metric: str) -> np.ndarray:
    """a[b, h, i, k] between query row i and its k-th neighbour's key row, per head (differentiable in q, kf)."""
    q = _c(q)
    kf = _c(kf, q.dtype)
    out = np.empty(idx.shape, dtype=q.dtype)
    with parallel_region():
        slot_kernels.slot_affinity(q, kf, _c(idx, np.int64), METRIC_CODES[metric], out)
    return out


def _slot_affinity_vjp(argnums, ans, args, kwargs):
    q, kf, idx, metric = args

    def vjp(g):
        qc = _c(q)
        kc = _c(kf, qc.dtype)
        dq = np.zeros_like(qc)
        dk = np.zeros_like(kc)
        with parallel_region():
            slot_kernels.slot_affinity_grad(qc, kc, _c(idx, np.int64), METRIC_CODES[metric],
                                            _c(g, qc.dtype), dq, dk)
        grads = {0: dq, 1: dk}
        return tuple(grads[n] for n in argnums)

    return vjp


defvjp_argnums(slot_affinity, _slot_affinity_vjp)


# ----------------------------------------------------------------------------- gather + taps
def _rho_arg(rho: Optional[np.ndarray], dtype: np.dtype) -> tuple[np.ndarray, bool]:
    if rho is None:
        return _NO_RHO[np.dtype(dtype)], False
    return _c(rho, dtype), True


def _full_taps_matrix(weight: np.ndarray) -> np.ndarray:
    """W [O, C, K] -> W2t [K*C, O] with row k*C + c, the layout of a gathered tile."""
    o, c, k = weight.shape
    return np.ascontiguousarray(np.transpose(weight, (2, 1, 0)).reshape(k * c, o))


@primitive
def gather_taps(values: np.ndarray, idx: np.ndarray, rho: Optional[np.ndarray], weight: np.ndarray,
                taps: str) -> np.ndarray:
    """y [B, Nq, O]: taps applied to the rho-weighted neighbours of each query (SPEC.md section 4, step 5)."""
    values = _c(values)
    idx = _c(idx, np.int64)
    rho_arr, has_rho = _rho_arg(rho, values.dtype)
    b, _, nq, k = idx.shape
    with parallel_region():
        if taps == "full":
            w2t = _full_taps_matrix(_c(weight, values.dtype))
            out = np.empty((b, nq, w2t.shape[1]), dtype=values.dtype)
            rows = gather_rows_per_block(w2t.shape[0], nq)
            gather_kernels.gather_full(values, idx, rho_arr, has_rho, w2t, rows, out)
        else:
            out = np.empty((b, nq, values.shape[2]), dtype=values.dtype)
            gather_kernels.gather_depthwise(values, idx, rho_arr, has_rho, _c(weight, values.dtype), out)
    return out


def gather_rows_per_block(tile_width: int, n_query: int) -> int:
    """Query rows per gathered tile [R, K*C]: about 1 MiB of float32, and at least 64 rows so that the
    tile GEMMs (and the weight-gradient GEMM, whose inner dimension is R) stay efficient (measured: larger
    tiles beat L2-sized ones on both)."""
    return max(1, min(n_query, max(64, 262144 // max(tile_width, 1))))


def _gather_taps_vjp(argnums, ans, args, kwargs):
    values, idx, rho, weight, taps = args

    def vjp(g):
        from .threads import split_count

        vals = _c(values)
        dt = vals.dtype
        idxc = _c(idx, np.int64)
        rho_arr, has_rho = _rho_arg(rho, dt)
        dy = _c(g, dt)
        b = idxc.shape[0]
        n_split = split_count(b)
        dvalues = np.zeros_like(vals)
        drho = np.zeros(idxc.shape, dtype=dt) if has_rho else _NO_RHO[np.dtype(dt)].copy()
        with parallel_region():
            if taps == "full":
                wc = _c(weight, dt)
                w2t = _full_taps_matrix(wc)
                w2 = np.ascontiguousarray(w2t.T)
                parts = np.zeros((n_split,) + w2t.shape, dtype=dt)
                rows = gather_rows_per_block(w2t.shape[0], idxc.shape[2])
                gather_kernels.gather_full_grad(dy, vals, idxc, rho_arr, has_rho, w2t, w2, rows, n_split,
                                                dvalues, drho, parts)
                dw2t = parts.sum(axis=0)
                o, c, k = wc.shape
                dweight = np.ascontiguousarray(dw2t.reshape(k, c, o).transpose(2, 1, 0))
            else:
                wc = _c(weight, dt)
                parts = np.zeros((n_split,) + wc.shape, dtype=dt)
                gather_kernels.gather_depthwise_grad(dy, vals, idxc, rho_arr, has_rho, wc, n_split, dvalues,
                                                     drho, parts)
                dweight = parts.sum(axis=0)
        grads = {0: dvalues, 2: drho if has_rho else None, 3: dweight}
        return tuple(grads[n] for n in argnums)

    return vjp


defvjp_argnums(gather_taps, _gather_taps_vjp)
