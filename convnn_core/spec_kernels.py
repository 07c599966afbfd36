"""The spec's kernels: SPEC section 4 written literally on one Array API namespace (dense affinities, stable sort).

Run on NumPy in float64 this is the oracle every backend is compared with; it runs unchanged on
array-api-strict, torch and jax arrays (and their autodiff) too.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._xp import device, take_rows
from .affinity import paired_affinity
from .aggregate import apply_taps
from .candidates import make_rng
from .kernels import KernelsBase
from .selection import select_ranked


def _head(xp: Any, a: Optional[Any], h: int, heads: int) -> Optional[Any]:
    """Channel group h of a [B, N, F] array (the whole array when heads == 1)."""
    if a is None or heads == 1:
        return a
    f = a.shape[-1] // heads
    return a[..., h * f:(h + 1) * f]


class SpecKernels(KernelsBase):
    """The pipeline's kernels on any Array API namespace: literal, dense, O(N * S) memory."""

    path_name = "spec: dense affinities, stable sort, gather"

    def __init__(self, xp: Any, backend_name: str = "spec") -> None:
        self.xp = xp
        self.backend_name = backend_name

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
               heads: int, query_feats: Optional[Any] = None) -> Any:
        from .config import ConvNNConfig

        cfg = ConvNNConfig(k=k, metric=metric, self_first=self_first, padding=0)
        q_tok = self._queries(queries, keys)
        out = [select_ranked(self.xp, cfg, qh, kh, q_tok, cand)[0]
               for qh, kh in self._heads(keys, queries, query_feats, heads)]
        return self.xp.stack(out, axis=1)

    def slot_affinity(self, keys: Any, queries: np.ndarray, idx: Any, *, metric: str, heads: int,
                      query_feats: Optional[Any] = None) -> Any:
        xp = self.xp
        out = [paired_affinity(xp, metric, qh[:, :, None, :], take_rows(xp, kh, idx[:, h, ...]))
               for h, (qh, kh) in enumerate(self._heads(keys, queries, query_feats, heads))]
        return xp.stack(out, axis=1)

    def gather_taps(self, values: Any, idx: Any, rho: Optional[Any], weight: Any, *, taps: str) -> Any:
        xp = self.xp
        heads = idx.shape[1]
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
