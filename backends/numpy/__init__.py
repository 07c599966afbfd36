"""The numpy backend: the spec run literally on NumPy, the float64 oracle every other backend is checked against."""
from __future__ import annotations

from typing import Any

from convnn.registry import BackendPlugin


def load(**options: Any) -> Any:
    """The oracle backend object (forward-only ConvNN ops; the other layers train through HIPS autograd)."""
    if options:
        raise ValueError(f"backend 'numpy' takes no options; got {sorted(options)}")
    from .backend import NumpyBackend

    return NumpyBackend()


def describe_path(request: Any) -> Any:
    from convnn.kernels import PathChoice

    return PathChoice("spec: dense affinities, stable sort, gather (the float64 oracle, forward only)")


PLUGIN = BackendPlugin(
    name="numpy", requires=("numpy",), extra=None,
    summary="the spec on NumPy: the float64 oracle (forward only)",
    loader=load, devices=("cpu",), trains_convnn=False, describe_path=describe_path, options=(),
)
