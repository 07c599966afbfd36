"""The numba backend's kernels for the one ConvNN pipeline: selection, slot affinities and gather + taps.

The heavy work runs in numba (primitives.py: parallel kernels with their own backward, as HIPS
autograd primitives); the pipeline's layout steps run on autograd NumPy (backends/common/autograd_xp),
so a whole layer is differentiable by autograd without torch or jax.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from convnn.backends.common.autograd_xp import AUTOGRAD_XP
from convnn.candidates import make_rng
from convnn.grid import Grid, grid_distance
from convnn.kernels import KernelsBase, check_grid

from . import PATH_NAME, threads, token_layout
from .primitives import gather_taps, select_indices, slot_affinity

# float16/bfloat16 are refused at the pipeline's door with a TypeError naming them (the numba kernels
# compile float32/float64 only; low precision would have to be upcast anyway on a CPU)
DTYPES = ("float32", "float64")


def _candidate_rows(cand: Optional[np.ndarray], batch: int, n_tokens: int) -> np.ndarray:
    """[B, S] int64 candidate rows (all tokens when None)."""
    if cand is None:
        return np.broadcast_to(np.arange(n_tokens, dtype=np.int64)[None], (batch, n_tokens))
    cand = np.asarray(cand, dtype=np.int64)
    return np.broadcast_to(cand[None], (batch, cand.shape[0])) if cand.ndim == 1 else cand


class NumbaKernels(KernelsBase):
    """select / slot_affinity / gather_taps on the numba kernels; every call runs with the backend's thread count."""

    xp = AUTOGRAD_XP
    backend_name = "numba"
    device = "cpu"
    dtypes = DTYPES
    path_name = PATH_NAME

    def __init__(self, n_threads: int, check_inputs: bool = True) -> None:
        self.threads = n_threads
        self.check_inputs = bool(check_inputs)

    def unwrap(self, a: Any) -> Any:
        return np.asarray(getval(a)) if a is not None else None

    def unwrap_tree(self, tree: Any) -> Any:
        return getval(tree)

    def index_array(self, host: Any) -> np.ndarray:
        return np.asarray(host, dtype=np.int64)

    def constant(self, host: np.ndarray, like: Any) -> np.ndarray:
        return np.asarray(host, dtype=np.asarray(getval(like)).dtype)

    def zeros(self, shape: tuple[int, ...], like: Any) -> np.ndarray:
        return np.zeros(shape, dtype=np.asarray(getval(like)).dtype)

    def pad(self, x: Any, p: int) -> Any:
        return x if p == 0 else anp.pad(x, ((0, 0), (0, 0)) + ((p, p),) * (len(x.shape) - 2), "constant")

    def padded_tokens(self, x: Any, p: int) -> Any:
        if token_layout.applies(x):
            return token_layout.padded_tokens(x, p)
        return super().padded_tokens(x, p)

    def stage(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(plan: Any, *arrays: Any) -> Any:
            threads.configure(self.threads)
            return fn(plan, *arrays)

        return run

    def select(self, keys: Any, queries: np.ndarray, cand: Optional[Any], *, k: int, metric: str, self_first: bool,
               heads: int, query_feats: Optional[Any] = None, grid: Optional[Grid] = None) -> np.ndarray:
        check_grid(grid, metric, heads)
        k_raw = np.ascontiguousarray(getval(keys))
        rows = _candidate_rows(cand, k_raw.shape[0], k_raw.shape[1])
        if query_feats is None:
            return select_indices(k_raw, queries, k_raw, rows, queries, heads, metric, k, self_first, grid)
        q_raw = np.asarray(getval(query_feats))
        return select_indices(q_raw, np.arange(q_raw.shape[1]), k_raw, rows, queries, heads, metric, k, self_first)

    def slot_affinity(self, keys: Any, queries: np.ndarray, idx: np.ndarray, *, metric: str, heads: int,
                      query_feats: Optional[Any] = None, grid: Optional[Grid] = None) -> Any:
        check_grid(grid, metric, heads)
        q = keys[:, queries, :] if query_feats is None else query_feats
        aff = slot_affinity(q, keys, idx, metric)
        if grid is None:
            return aff
        # the exact coordinate part (SPEC section 4, step 1): a constant of the token offsets, no gradient
        return aff - grid_distance(np, grid, np.asarray(queries)[None, None, :, None], np.asarray(idx), aff.dtype)

    def gather_taps(self, values: Any, idx: np.ndarray, rho: Optional[Any], weight: Any, *, taps: str) -> Any:
        return gather_taps(values, idx, rho, weight, taps)

    def gather_taps_bias(self, values: Any, idx: np.ndarray, rho: Optional[Any], weight: Any, bias: Optional[Any],
                         *, taps: str) -> Any:
        return gather_taps(values, idx, rho, weight, taps, bias)

    def linear(self, x: Any, w: Any, bias: Optional[Any]) -> Any:
        """x [B, N, D] @ w.T as one 2-D product (autograd's VJP of a batched 3-D matmul is many times slower)."""
        b, n, d = x.shape
        y = anp.reshape(anp.dot(anp.reshape(x, (b * n, d)), anp.transpose(w)), (b, n, w.shape[0]))
        return y if bias is None else y + bias

    def dropout(self, y: Any, p: float, rng: Any, *, train: bool) -> Any:
        if not train or p == 0.0:
            return y
        keep = make_rng(rng).random(tuple(y.shape)) >= p
        dtype = np.asarray(getval(y)).dtype
        return y * (keep.astype(np.float64) / (1.0 - p)).astype(dtype)
