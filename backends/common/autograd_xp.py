"""The Array API names the pipeline's layout steps use, on NumPy arrays that HIPS autograd may be tracing.

array_api_compat's NumPy namespace calls numpy functions that drop autograd's boxes; these call
autograd.numpy, so the pipeline's layout steps stay differentiable on the numba backend.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

import autograd.numpy as anp
import numpy as np


def _std(x: Any, axis: Optional[int] = None, correction: float = 0.0) -> Any:
    return anp.std(x, axis=axis, ddof=correction)


def _full_like(x: Any, fill: float) -> Any:
    return np.full(np.shape(x), fill, dtype=np.asarray(getattr(x, "_value", x)).dtype)


def _max(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    return anp.max(x, axis=axis, keepdims=keepdims)


def _sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    return anp.sum(x, axis=axis, keepdims=keepdims)


def _sort(x: Any, axis: int = -1) -> Any:
    return np.sort(np.asarray(x), axis=axis)  # integer indices only: no gradient


def _asarray(x: Any, dtype: Any = None, device: Any = None) -> Any:
    return np.asarray(x, dtype=dtype)


def _zeros(shape: Any, dtype: Any = None, device: Any = None) -> Any:
    return np.zeros(shape, dtype=dtype)


AUTOGRAD_XP = SimpleNamespace(
    __name__="autograd.numpy (Array API names)",
    reshape=anp.reshape,
    permute_dims=anp.transpose,
    concat=anp.concatenate,
    broadcast_to=anp.broadcast_to,
    std=_std,
    where=anp.where,
    full_like=_full_like,
    max=_max,
    exp=anp.exp,
    sum=_sum,
    sort=_sort,
    asarray=_asarray,
    zeros=_zeros,
    matmul=anp.matmul,
)
