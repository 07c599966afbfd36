"""The spec's kernels: SPEC section 4 written literally on one Array API namespace (dense affinities, stable sort).

Run on NumPy in float64 this is the oracle every backend is compared with; it runs unchanged on
array-api-strict, torch and jax arrays (and their autodiff) too.

dtypes: every real floating dtype the namespace has (NumPy: float64, float32, float16; torch and jax
add bfloat16; array-api-strict: float64, float32). float16/bfloat16 selection runs in float32 (in
float16 the 1e-12 cosine norm floor is 0, so a zero-padding token scored 0/0 = NaN): select and
slot_affinity score float32 copies of the features and slot_affinity returns the input dtype; the
values and taps stay in the input dtype (rho is cast to it).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._xp import device, take_rows
from .affinity import paired_affinity
from .aggregate import apply_taps
from .candidates import make_rng
from .grid import Grid, grid_distance
from .kernels import KernelsBase, check_grid
from .pipeline import FLOAT_DTYPES, is_low_precision
from .selection import select_ranked


def _head(xp: Any, a: Optional[Any], h: int, heads: int) -> Optional[Any]:
    """Channel group h of a [B, N, F] array (the whole array when heads == 1)."""
    if a is None or heads == 1:
        return a
    f = a.shape[-1] // heads
    return a[..., h * f:(h + 1) * f]


def _has_dtype(xp: Any, name: str) -> bool:
    return getattr(xp, name, None) is not None


class SpecKernels(KernelsBase):
    """The pipeline's kernels on any Array API namespace: literal, dense, O(N * S) memory."""

    path_name = "spec: dense affinities, stable sort, gather"

    def __init__(self, xp: Any, backend_name: str = "spec") -> None:
        self.xp = xp
        self.backend_name = backend_name

    @property
    def dtypes(self) -> tuple[str, ...]:  # type: ignore[override]
        """The real floating dtypes of the namespace; float16/bfloat16 select in float32."""
        return tuple(n for n in FLOAT_DTYPES if _has_dtype(self.xp, n))

    def _work(self, a: Optional[Any]) -> Optional[Any]:
        """A float32 copy of float16/bfloat16 selection features (the others as they are)."""
        if a is None or not is_low_precision(a.dtype):
            return a
        return self.xp.astype(a, self.xp.float32)

    def _queries(self, queries: np.ndarray, like: Any) -> Any:
        return self.xp.asarray(np.asarray(queries, dtype=np.int64), device=device(like))

    def _heads(self, keys: Any, queries: np.ndarray, query_feats: Optional[Any], heads: int) -> Any:
        """(query features, key features) of each head, the queries taken from keys when none are given."""
        xp = self.xp
        q_tok = self._queries(queries, keys)
        rows = xp.broadcast_to(q_tok[None, :], (keys.shape[0], q_tok.shape[0]))
        for h in range(heads):
            kh = _head(xp, keys, h, heads)
            qh = _head(xp, query_feats, h, heads)
            yield (take_rows(xp, kh, rows) if qh is None else qh), kh

    def select(self, keys: Any, queries: np.ndarray, cand: Optional[Any], *, k: int, metric: str, self_first: bool,
               heads: int, query_feats: Optional[Any] = None, grid: Optional[Grid] = None) -> Any:
        from .config import ConvNNConfig

        check_grid(grid, metric, heads)
        cfg = ConvNNConfig(k=k, metric=metric, self_first=self_first, padding=0)
        keys, query_feats = self._work(keys), self._work(query_feats)
        q_tok = self._queries(queries, keys)
        out = [select_ranked(self.xp, cfg, qh, kh, q_tok, cand, grid)[0]
               for qh, kh in self._heads(keys, queries, query_feats, heads)]
        return self.xp.stack(out, axis=1)

    def slot_affinity(self, keys: Any, queries: np.ndarray, idx: Any, *, metric: str, heads: int,
                      query_feats: Optional[Any] = None, grid: Optional[Grid] = None) -> Any:
        xp = self.xp
        check_grid(grid, metric, heads)
        dtype = keys.dtype
        keys, query_feats = self._work(keys), self._work(query_feats)
        out = [paired_affinity(xp, metric, qh[:, :, None, :], take_rows(xp, kh, idx[:, h, ...]))
               for h, (qh, kh) in enumerate(self._heads(keys, queries, query_feats, heads))]
        aff = xp.stack(out, axis=1)
        if grid is not None:  # the exact coordinate part (SPEC section 4, step 1)
            aff = aff - grid_distance(xp, grid, self._queries(queries, idx)[None, None, :, None], idx, aff.dtype)
        return aff if aff.dtype == dtype else xp.astype(aff, dtype)

    def gather_taps(self, values: Any, idx: Any, rho: Optional[Any], weight: Any, *, taps: str) -> Any:
        xp = self.xp
        heads = idx.shape[1]
        if rho is not None and rho.dtype != values.dtype:  # float32 rho of low-precision values
            rho = xp.astype(rho, values.dtype)
        parts = []
        for h in range(heads):
            g = take_rows(xp, _head(xp, values, h, heads), idx[:, h, ...])  # [B, Nq, K, C/h]
            if rho is not None:
                g = g * rho[:, h, :, :, None]
            parts.append(g)
        gathered = parts[0] if heads == 1 else xp.concat(parts, axis=-1)
        return apply_taps(xp, taps, gathered, weight, None)

    def linear(self, x: Any, w: Any, bias: Optional[Any]) -> Any:
        y = self.xp.matmul(x, self.xp.matrix_transpose(w))
        return y if bias is None else y + bias

    def dropout(self, y: Any, p: float, rng: Any, *, train: bool) -> Any:
        if not train or p == 0.0:
            return y
        keep = make_rng(rng).random(tuple(y.shape)) >= p
        mask = self.xp.asarray(keep.astype(np.float64) / (1.0 - p), dtype=y.dtype, device=device(y))
        return y * mask
