"""Affinities between query and candidate features (SPEC.md section 3, `metric`); larger is always closer."""
from __future__ import annotations

import math
from typing import Any

EPS_NORM = 1e-12


def _norms(xp: Any, f: Any) -> Any:
    """max(||f||, 1e-12), written as sqrt(max(||f||^2, 1e-24)) so a zero vector has a zero, not NaN, gradient."""
    return xp.sqrt(xp.maximum(xp.sum(f * f, axis=-1), xp.asarray(EPS_NORM * EPS_NORM, dtype=f.dtype)))


def affinity_matrix(xp: Any, metric: str, q: Any, k: Any) -> Any:
    """a[b, i, j] for queries q [B, Nq, F] against candidates k [B, S, F]: cosine, -squared distance, or dot/sqrt(F)."""
    kt = xp.matrix_transpose(k)
    dots = xp.matmul(q, kt)
    if metric == "cosine":
        denom = _norms(xp, q)[:, :, None] * _norms(xp, k)[:, None, :]
        return xp.clip(dots / denom, -1.0, 1.0)
    if metric == "euclidean":
        sq = xp.sum(q * q, axis=-1)[:, :, None] + xp.sum(k * k, axis=-1)[:, None, :] - 2.0 * dots
        return -xp.maximum(sq, xp.zeros_like(sq))
    if metric == "dot":
        return dots / math.sqrt(q.shape[-1])
    raise ValueError(f"metric={metric!r} is not allowed; choose one of cosine, euclidean, dot")


def paired_affinity(xp: Any, metric: str, q: Any, k: Any) -> Any:
    """a[b, i] between aligned rows q [B, Nq, F] and k [B, Nq, F] (the same formula as affinity_matrix)."""
    dots = xp.sum(q * k, axis=-1)
    if metric == "cosine":
        return xp.clip(dots / (_norms(xp, q) * _norms(xp, k)), -1.0, 1.0)
    if metric == "euclidean":
        sq = xp.sum(q * q, axis=-1) + xp.sum(k * k, axis=-1) - 2.0 * dots
        return -xp.maximum(sq, xp.zeros_like(sq))
    if metric == "dot":
        return dots / math.sqrt(q.shape[-1])
    raise ValueError(f"metric={metric!r} is not allowed; choose one of cosine, euclidean, dot")
