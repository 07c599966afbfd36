"""The numpy backend: the spec run literally on NumPy, the float64 oracle every other backend is checked against."""
from __future__ import annotations

from typing import Any

from .vocab import NumpyOps


def _traced(*values: Any) -> bool:
    """Whether any value (or a value inside a dict) is an autograd box, i.e. being differentiated."""
    for v in values:
        if type(v).__module__.startswith("autograd"):
            return True
        if isinstance(v, dict) and _traced(*v.values()):
            return True
    return False


def load(**options: Any) -> Any:
    """The oracle backend object: the spec's ConvNN ops and attentions plus NumpyOps for the other layers.

    NumpyOps runs on autograd.numpy when HIPS autograd is installed (same values on plain arrays), so
    conv and attention models also train here; the spec's ConvNN ops are forward only, and training a
    ConvNN model on this backend raises an error that points to numba, torch or jax.
    """
    if options:
        raise ValueError(f"backend 'numpy' takes no options; got {sorted(options)}")
    import numpy as np

    from convnn_core import attention, layers
    from convnn_core.spec_backend import SpecBackend

    try:
        import autograd.numpy as np_like
    except ImportError:
        np_like = np

    def forward_only(name: str, fn: Any) -> Any:
        def op(x: Any, *args: Any, **kwargs: Any) -> Any:
            if _traced(x, *args, *kwargs.values()):
                raise NotImplementedError(
                    f"backend 'numpy' runs {name} forward only (the spec is the float64 oracle, not traced by "
                    f"autograd); train ConvNN models on numba, torch or jax")
            return fn(x, *args, **kwargs)

        op.__name__ = name
        op.__doc__ = fn.__doc__
        return staticmethod(op)

    class NumpyBackend(SpecBackend, NumpyOps):
        """SpecBackend first, so the ConvNN ops, the baseline attentions and asarray come from the spec."""

        convnn2d = forward_only("convnn2d", layers.convnn2d)
        convnn1d = forward_only("convnn1d", layers.convnn1d)
        convnn_attention = forward_only("convnn_attention", attention.convnn_attention)

        def __init__(self) -> None:
            SpecBackend.__init__(self, "numpy", np)
            NumpyOps.__init__(self, np_like)

        def asarray(self, value: Any, dtype: Any = None) -> Any:
            return NumpyOps.asarray(self, value, dtype)

        def to_numpy(self, value: Any) -> Any:
            return NumpyOps.to_numpy(self, value)

    # the baseline attentions: the spec's on plain arrays, NumpyOps' (differentiable) when traced
    for name in ("multihead_attention", "masked_attention", "kvt_attention", "local_attention", "sparse_attention"):
        spec_fn, ops_fn = getattr(attention, name), getattr(NumpyOps, name)

        def dispatch(self: Any, x: Any, *args: Any, _spec: Any = spec_fn, _ops: Any = ops_fn, **kwargs: Any) -> Any:
            if _traced(x, *args):
                return _ops(self, x, *args, **kwargs)
            return _spec(x, *args, **kwargs)

        dispatch.__name__ = name
        dispatch.__doc__ = spec_fn.__doc__
        setattr(NumpyBackend, name, dispatch)

    return NumpyBackend()
