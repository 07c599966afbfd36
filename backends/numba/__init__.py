"""The numba backend: parallel CPU kernels for ConvNN with their own backward, trainable through HIPS autograd."""
from __future__ import annotations

from typing import Any


def load(**options: Any) -> Any:
    """The backend object; options: threads=int (default NUMBA_NUM_THREADS, at most that)."""
    unknown = sorted(set(options) - {"threads"})
    if unknown:
        raise ValueError(f"backend 'numba' takes only the option threads=; got {unknown}")
    from .backend import NumbaBackend

    return NumbaBackend(options.get("threads"))
