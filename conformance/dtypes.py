"""Dtype names the suite knows, and rounding float64 data to a dtype so the oracle sees exactly the backend's inputs."""
from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_DTYPES = ("float64", "float32")
ALL_DTYPES = ("float64", "float32", "bfloat16", "float16")


def numpy_dtype(name: str) -> Any:
    """The NumPy dtype for a name; bfloat16 comes from ml_dtypes (installed with jax)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as err:  # pragma: no cover - jax always brings ml_dtypes
            raise ValueError("dtype='bfloat16' needs the ml_dtypes package (pip install ml_dtypes)") from err
        return ml_dtypes.bfloat16
    if name not in ALL_DTYPES:
        raise ValueError(f"dtype={name!r} is not allowed; choose one of {', '.join(ALL_DTYPES)}")
    return np.dtype(name)


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values that are exactly representable in `dtype` (rounded to nearest)."""
    return np.asarray(values, dtype=np.float64).astype(numpy_dtype(dtype)).astype(np.float64)


def backend_dtypes(backend: Any) -> tuple[str, ...]:
    """The dtypes of ALL_DTYPES a backend declares in `backend.capabilities.dtypes`, in the suite's order."""
    caps = getattr(backend, "capabilities", None)
    if caps is None:
        raise TypeError(f"backend {getattr(backend, 'name', '?')!r} declares no capabilities "
                        f"(backend.capabilities.dtypes)")
    names = tuple(str(d) for d in caps.dtypes)
    return tuple(d for d in ALL_DTYPES if d in names)


def to_float64(value: Any) -> np.ndarray:
    """A float64 NumPy copy of a host array of any float dtype (bfloat16 included)."""
    return np.asarray(value).astype(np.float64)
