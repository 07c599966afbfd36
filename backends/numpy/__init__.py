"""The numpy backend: the spec run literally on NumPy, the float64 oracle every other backend is checked against."""
from __future__ import annotations

from typing import Any


def load(**options: Any) -> Any:
    """The oracle backend object (forward only; gradients of the spec come from torch autograd or jax.grad)."""
    if options:
        raise ValueError(f"backend 'numpy' takes no options; got {sorted(options)}")
    import numpy as np

    from convnn_core.spec_backend import SpecBackend

    return SpecBackend("numpy", np)
