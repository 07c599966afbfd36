"""Shape glue the zoo needs beyond the vocabulary (reshape, transpose, concat, broadcast) on any backend's arrays.

NumPy arrays and HIPS autograd boxes go through autograd.numpy (so numba/numpy training can trace
them); torch and jax arrays through their Array API namespace.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class _NumpyLike:
    """The four Array API names the zoo uses, on autograd.numpy (or numpy when autograd is absent)."""

    def __init__(self) -> None:
        try:
            import autograd.numpy as anp
        except ImportError:  # forward-only use on plain NumPy
            anp = np
        self._np = anp

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return self._np.reshape(x, tuple(shape))

    def permute_dims(self, x: Any, axes: Sequence[int]) -> Any:
        return self._np.transpose(x, tuple(axes))

    def concat(self, arrays: Sequence[Any], axis: int = 0) -> Any:
        return self._np.concatenate(list(arrays), axis=axis)

    def broadcast_to(self, x: Any, shape: Sequence[int]) -> Any:
        return self._np.broadcast_to(x, tuple(shape))


_NUMPY_LIKE: Any = None


def _is_host(x: Any) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("autograd")


def namespace(*arrays: Any) -> Any:
    """An object with reshape, permute_dims, concat and broadcast_to for these arrays."""
    global _NUMPY_LIKE
    arrays = tuple(a for a in arrays if a is not None)
    if any(_is_host(a) for a in arrays):
        if _NUMPY_LIKE is None:
            _NUMPY_LIKE = _NumpyLike()
        return _NUMPY_LIKE
    import array_api_compat

    return array_api_compat.array_namespace(*arrays)


def reshape(x: Any, shape: Sequence[int]) -> Any:
    return namespace(x).reshape(x, tuple(shape))


def permute_dims(x: Any, axes: Sequence[int]) -> Any:
    return namespace(x).permute_dims(x, tuple(axes))


def concat(arrays: Sequence[Any], axis: int) -> Any:
    return namespace(*arrays).concat(list(arrays), axis=axis)


def broadcast_to(x: Any, shape: Sequence[int]) -> Any:
    return namespace(x).broadcast_to(x, tuple(shape))
