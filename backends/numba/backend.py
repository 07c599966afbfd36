"""The numba backend object: ConvNN ops on numba kernels plus the NumPy vocabulary traced by HIPS autograd."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import autograd.numpy as anp
import numpy as np

from backends.numpy.vocab import NumpyOps

from . import layers, threads


def _with_threads(op: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(op)
    def run(self: "NumbaBackend", *args: Any, **kwargs: Any) -> Any:
        threads.configure(self.threads)
        return op(*args, **kwargs)

    return run


class NumbaBackend(NumpyOps):
    """ConvNN on numba (forward and backward kernels, autograd primitives) and the rest on autograd NumPy.

    Arrays are NumPy arrays; `value_and_grad` is HIPS autograd, so a model trains with no torch or jax.
    """

    name = "numba"
    xp = np

    def __init__(self, threads_: Optional[int] = None) -> None:
        super().__init__(anp)
        self.threads = threads.configure(threads_)

    def __repr__(self) -> str:
        return f"<convnn backend 'numba' ({self.threads} threads)>"

    convnn2d = _with_threads(layers.convnn2d)
    convnn1d = _with_threads(layers.convnn1d)
    convnn_attention = _with_threads(layers.convnn_attention)
    select_neighbors = _with_threads(layers.select_neighbors)
