"""The oracle backend object: the spec's kernels through the one pipeline (forward only) plus NumpyOps."""
from __future__ import annotations

from typing import Any

import numpy as np

from convnn import attention
from convnn.backend_base import PipelineOps
from convnn.backends.common.numpy_ops import NumpyOps
from convnn.kernels import Capabilities
from convnn.spec_kernels import SpecKernels
from convnn.vocabulary import ATTENTION_OPS

try:
    import autograd.numpy as np_like
except ImportError:  # the layer vocabulary then runs forward only on plain NumPy
    np_like = np


def traced(*values: Any) -> bool:
    """Whether any value (or a value inside a dict) is an autograd box, i.e. being differentiated."""
    for v in values:
        if type(v).__module__.startswith("autograd"):
            return True
        if isinstance(v, dict) and traced(*v.values()):
            return True
    return False


class OracleKernels(SpecKernels):
    """The spec's kernels on NumPy; refuses autograd-traced inputs (the oracle is forward only)."""

    dtypes = ("float32", "float64")

    def __init__(self) -> None:
        super().__init__(np, "numpy")

    def unwrap(self, a: Any) -> Any:
        if traced(a):
            raise NotImplementedError("backend 'numpy' runs the ConvNN ops forward only (the spec is the float64 "
                                      "oracle, not traced by autograd); train ConvNN models on numba, torch or jax")
        return a


class NumpyBackend(PipelineOps, NumpyOps):
    """The ConvNN ops of the spec (forward only) and NumpyOps for the other layers (trainable through autograd)."""

    name = "numpy"

    def __init__(self) -> None:
        NumpyOps.__init__(self, np_like)
        self.xp = np
        self.kernels = OracleKernels()
        self.capabilities = Capabilities(
            dtypes=("float32", "float64"), devices=("cpu",), device="cpu", differentiable=ATTENTION_OPS,
            trainable=np_like is not np, compiles=False, compile_by_default=False, int64_labels=True,
            memory="host",
        )

    def __repr__(self) -> str:
        return "<convnn backend 'numpy' (the spec on NumPy, the float64 oracle)>"


def _baseline(name: str) -> Any:
    """The spec's baseline attention on plain arrays, NumpyOps' differentiable one when autograd traces it."""
    spec_fn, ops_fn = getattr(attention, name), getattr(NumpyOps, name)

    def dispatch(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        if traced(x, *args):
            return ops_fn(self, x, *args, **kwargs)
        return spec_fn(x, *args, **kwargs)

    dispatch.__name__ = name
    dispatch.__doc__ = spec_fn.__doc__
    return dispatch


for _name in ATTENTION_OPS:
    setattr(NumpyBackend, _name, _baseline(_name))
