"""The numba kernels as HIPS autograd primitives: select (no gradient), slot affinities and gather+taps.

Each primitive takes and returns plain NumPy arrays; its VJP calls the matching backward kernel.
Everything around them (padding, coordinates, projections, softmax) is autograd NumPy, so
`autograd.grad` differentiates a whole ConvNN layer.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np
from autograd.extend import defvjp_argnums, primitive
from autograd.tracer import getval

from convnn.grid import Grid
from convnn.kernels import METRIC_CODES

from . import gather_kernels, select_kernels, self_select_kernels, slot_kernels
from .token_layout import contiguous_tokens
from .threads import current_threads, parallel_region

_NO_RHO = {np.dtype(np.float32): np.ones((1, 1, 1, 1), np.float32),
           np.dtype(np.float64): np.ones((1, 1, 1, 1), np.float64)}
_NO_AFF = {dt: np.empty((0, 0, 0, 0), dt) for dt in _NO_RHO}  # the selection kernels' out_aff when none is wanted


def contiguous(a: Any, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """A C-contiguous NumPy array of a's value (no copy when it already is one); the kernels' input form."""
    return np.ascontiguousarray(getval(a), dtype=dtype)


_c = contiguous


def select_indices(q: np.ndarray, q_rows: np.ndarray, kf: np.ndarray, cand: np.ndarray, queries: np.ndarray,
                   heads: int, metric: str, k: int, self_first: bool, grid: Optional[Grid] = None) -> np.ndarray:
    """Neighbour token indices [B, H, Nq, K] in rank order for the queries q[:, q_rows] (no gradient:
    indices are piecewise constant); queries are the query rows' token indices (for self_first and the
    grid, whose exact coordinate part joins the euclidean distance: SPEC section 4, step 1)."""
    return _select(q, q_rows, kf, cand, queries, heads, metric, k, self_first, grid, False)[0]


def select_with_affinity(q: np.ndarray, q_rows: np.ndarray, kf: np.ndarray, cand: np.ndarray, queries: np.ndarray,
                         heads: int, metric: str, k: int, self_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """select_indices and the selected slots' affinities [B, H, Nq, K]: from the selection scan itself where it
    scored every slot (cosine and dot; the row-block kernel without self_first), else afresh by slot_affinity."""
    idx, aff = _select(q, q_rows, kf, cand, queries, heads, metric, k, self_first, None, True)
    if aff is None:
        qc, rows = _c(q), _c(q_rows, np.int64)
        every_row = rows.shape[0] == qc.shape[1] and np.array_equal(rows, np.arange(qc.shape[1]))
        aff = slot_affinity(qc if every_row else _c(qc[:, rows]), kf, idx, metric)
    return idx, aff


def _select(q: np.ndarray, q_rows: np.ndarray, kf: np.ndarray, cand: np.ndarray, queries: np.ndarray, heads: int,
            metric: str, k: int, self_first: bool, grid: Optional[Grid], with_affinity: bool
            ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(indices, the slots' affinities when asked for and the kernel that runs scores every slot, else None)."""
    q = _c(q)
    kf = q if kf is q else _c(kf, q.dtype)
    q_rows = _c(q_rows, np.int64)
    cand = _c(cand, np.int64)
    queries = _c(queries, np.int64)
    b, nq = q.shape[0], q_rows.shape[0]
    slots = k - 1 if self_first else k
    out = np.empty((b, heads, nq, k), dtype=np.int64)
    if grid is None and kf is q and _queries_among_all_tokens(q_rows, cand, queries, q.shape[1], metric, b * heads,
                                                              slots):
        aff = np.empty(out.shape, dtype=q.dtype) if with_affinity else None
        with parallel_region():
            self_select_kernels.select_self(q, queries, heads, METRIC_CODES[metric], slots, bool(self_first), out,
                                            with_affinity, _NO_AFF[q.dtype] if aff is None else aff)
        return out, aff
    rows = select_kernels.rows_per_block(nq, cand.shape[1])
    if grid is None:
        gshape = gmult = np.zeros(0, dtype=np.int64)
        gscale = 0.0
    else:
        gshape = np.asarray(grid.shape, dtype=np.int64)
        gmult = np.asarray(grid.mult, dtype=np.int64)
        gscale = float(np.asarray(grid.scale, dtype=q.dtype))  # the constant the other backends use
    # the scan's values are the slots' affinities, save the self slot, which it never scores
    want_aff = with_affinity and not self_first and grid is None and metric in ("cosine", "dot")
    aff = np.empty(out.shape, dtype=q.dtype) if want_aff else None
    with parallel_region():
        select_kernels.select_topk(q, q_rows, kf, cand, queries, heads, METRIC_CODES[metric], slots,
                                   bool(self_first), rows, grid is not None, gshape, gmult, gscale, out, want_aff,
                                   _NO_AFF[q.dtype] if aff is None else aff)
    return out, aff


SELF_SELECT_ITEMS_PER_THREAD = 1  # images x heads per thread at least, for the one-image-per-thread symmetric kernel
SELF_SELECT_MAX_QUERIES = 4096  # its kept upper half grows as Nq^2: 32 MiB per thread in float32 at this size


def _queries_among_all_tokens(q_rows: np.ndarray, cand: np.ndarray, queries: np.ndarray, n_tokens: int, metric: str,
                              items: int, slots: int) -> bool:
    """Whether self_select_kernels applies: cosine or dot, every token a candidate, the query rows their own
    tokens in ascending order, enough images (one per thread) to keep every thread busy, and a map small
    enough for the kept half of its affinities."""
    return (metric in ("cosine", "dot") and slots > 0 and items >= SELF_SELECT_ITEMS_PER_THREAD * current_threads()
            and queries.shape[0] <= SELF_SELECT_MAX_QUERIES
            and np.array_equal(q_rows, queries) and bool(np.all(np.diff(queries) > 0))
            and cand.shape[1] == n_tokens and bool(np.all(cand == np.arange(n_tokens))))


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
    out = np.empty((k, c, o), dtype=weight.dtype)
    with parallel_region():
        gather_kernels.swap_outer_axes(weight, out)
    return out.reshape(k * c, o)


@primitive
def gather_taps(values: np.ndarray, idx: np.ndarray, rho: Optional[np.ndarray], weight: np.ndarray,
                taps: str, bias: Optional[np.ndarray] = None) -> np.ndarray:
    """y [B, Nq, O]: taps applied to the rho-weighted neighbours of each query (SPEC.md section 4, step 5),
    plus bias [O] when given (the projected forward starts from it; the others add it in place)."""
    values = _c(values)
    idx = _c(idx, np.int64)
    rho_arr, has_rho = _rho_arg(rho, values.dtype)
    b, _, nq, k = idx.shape
    bias_arr = None if bias is None else _c(bias, values.dtype)
    if taps == "full":
        w2t = _full_taps_matrix(_c(weight, values.dtype))
        out = np.empty((b, nq, w2t.shape[1]), dtype=values.dtype)
        if _gather_full(values, idx, rho_arr, has_rho, w2t, out.reshape(b * nq, -1), bias_arr):
            return out
    else:
        out = np.empty((b, nq, values.shape[2]), dtype=values.dtype)
        with parallel_region():
            gather_kernels.gather_depthwise(values, idx, rho_arr, has_rho, _c(weight, values.dtype), out)
    if bias_arr is not None:
        out += bias_arr
    return out


GATHER_CHUNK_BYTES = 16 << 20  # gathered rows per multi-threaded BLAS call (bounds the extra memory)
GATHER_TILE_BYTES = 1 << 20  # forward on large maps: one thread's gathered tile, multiplied by its own BLAS call


def _gather_full(values: np.ndarray, idx: np.ndarray, rho: np.ndarray, has_rho: bool, w2t: np.ndarray,
                 out: np.ndarray, bias: Optional[np.ndarray] = None) -> bool:
    """out [B*Nq, O] = gathered rows @ w2t; True when bias is already in it (the projected forward).

    Many rows per thread (large maps) or narrow rows: tiles of about 1 MiB (at least 64 rows, spanning
    images), each gathered and multiplied by one numba thread. Otherwise chunks of 16 MiB, gathered by
    numba and multiplied by one multi-threaded BLAS call. Measured per VGG layer shape at B=32: tiles
    win at 32x32 (16 vs 25 ms at C=64) and lose from 16x16 C=64 down (8x8 C=256: 16 vs 10 ms).
    """
    n_rows, kc = out.shape[0], w2t.shape[0]
    if _projects_first(values, idx, w2t):
        k, c, o = idx.shape[3], values.shape[2], w2t.shape[1]
        w_all = np.ascontiguousarray(w2t.reshape(k, c, o).transpose(1, 0, 2).reshape(c, k * o))
        start = np.zeros(o, dtype=out.dtype) if bias is None else bias
        with parallel_region():
            gather_kernels.project_gather(values, idx, rho, has_rho, w_all, start, out)
        return True
    rows = max(64, GATHER_TILE_BYTES // (kc * values.itemsize))
    per_thread = -(-n_rows // current_threads())
    if per_thread >= 16 * rows or kc < 64:
        with parallel_region():
            gather_kernels.gather_full(values, idx, rho, has_rho, w2t, min(rows, per_thread), out)
        return False
    for row0, rows in _gathered_chunks(values, idx, rho, has_rho, kc, n_rows):
        np.dot(rows, w2t, out=out[row0:row0 + rows.shape[0]])
    return False


PROJECT_MIN_TOKENS = 256  # project-then-gather from 16x16 maps up (measured at B=32: 32x32 C64 14.7 vs 15.7 ms,
# 16x16 C128 13.3 vs 14.6 ms; 8x8 C256 29 vs 15 ms, where the K*O-wide projection dwarfs 64 query rows)


def _projects_first(values: np.ndarray, idx: np.ndarray, w2t: np.ndarray) -> bool:
    """Whether gather_kernels.project_gather serves this forward: one head, large maps, at least one image
    per thread, and finite taps (a skipped zero row then contributes exactly the 0 it would have)."""
    return (idx.shape[1] == 1 and values.shape[1] >= PROJECT_MIN_TOKENS and values.shape[0] >= current_threads()
            and bool(np.isfinite(w2t).all()))


def _gathered_chunks(values: np.ndarray, idx: np.ndarray, rho: np.ndarray, has_rho: bool, kc: int,
                     n_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, gathered rows [n, K*C]) chunk by chunk, about GATHER_CHUNK_BYTES each, in one reused buffer."""
    chunk = max(64, GATHER_CHUNK_BYTES // (kc * values.itemsize))
    buf = np.empty((min(chunk, n_rows), kc), dtype=values.dtype)
    for row0 in range(0, n_rows, chunk):
        n = min(chunk, n_rows - row0)
        with parallel_region():
            gather_kernels.gather_rows(values, idx, rho, has_rho, row0, max(1, min(n // 16, 256)), buf[:n])
        yield row0, buf[:n]


def _gather_full_grad(dy: np.ndarray, values: np.ndarray, idx: np.ndarray, rho: np.ndarray, has_rho: bool,
                      w2t: np.ndarray, scatter: bool, n_split: int, dvalues: np.ndarray, drho: np.ndarray) -> np.ndarray:
    """dw2t [K*C, O] of _gather_full, and (when scatter) dvalues and drho added to, chunk by chunk:
    gather a chunk (numba), dw2t += chunk^T @ dy and dchunk = dy @ w2t^T (BLAS), scatter dchunk (numba)."""
    dw2t = np.zeros(w2t.shape, dtype=values.dtype)
    dbuf = None
    for row0, rows in _gathered_chunks(values, idx, rho, has_rho, w2t.shape[0], dy.shape[0]):
        dy_rows = dy[row0:row0 + rows.shape[0]]
        dw2t += np.dot(rows.T, dy_rows)
        if scatter:
            dbuf = np.empty_like(rows) if dbuf is None else dbuf[:rows.shape[0]]
            np.dot(dy_rows, w2t.T, out=dbuf)
            with parallel_region():
                gather_kernels.scatter_rows(dbuf, values, idx, rho, has_rho, row0, n_split, dvalues, drho)
    return dw2t


def _gather_taps_vjp(argnums, ans, args, kwargs):
    values, idx, rho, weight, taps = args[:5]

    def vjp(g):
        from .threads import split_count

        vals = _c(values)
        dt = vals.dtype
        idxc = _c(idx, np.int64)
        rho_arr, has_rho = _rho_arg(rho, dt)
        dy = contiguous_tokens(g, dt)
        b = idxc.shape[0]
        n_split = split_count(b)
        dvalues = np.zeros_like(vals)
        drho = np.zeros(idxc.shape, dtype=dt) if has_rho else _NO_RHO[np.dtype(dt)].copy()
        wc = _c(weight, dt)
        if taps == "full":
            w2t = _full_taps_matrix(wc)
            dw2t = _gather_full_grad(dy.reshape(-1, dy.shape[-1]), vals, idxc, rho_arr, has_rho, w2t,
                                     0 in argnums or 2 in argnums, n_split, dvalues, drho)
            o, c, k = wc.shape
            dweight = np.empty_like(wc)
            with parallel_region():
                gather_kernels.swap_outer_axes(dw2t.reshape(k, c, o), dweight)
        else:
            parts = np.zeros((n_split,) + wc.shape, dtype=dt)
            with parallel_region():
                gather_kernels.gather_depthwise_grad(dy, vals, idxc, rho_arr, has_rho, wc, n_split, dvalues,
                                                     drho, parts)
            dweight = parts.sum(axis=0)
        grads = {0: dvalues, 2: drho if has_rho else None, 3: dweight}
        if 5 in argnums:
            grads[5] = dy.reshape(-1, dy.shape[-1]).sum(axis=0)
        return tuple(grads[n] for n in argnums)

    return vjp


defvjp_argnums(gather_taps, _gather_taps_vjp)
