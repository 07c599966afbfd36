"""The spec as a backend object: the ConvNN vocabulary run literally on one Array API namespace."""
from __future__ import annotations

from typing import Any

from . import attention, layers


class SpecBackend:
    """ConvNN ops of SPEC.md on any Array API namespace (the NumPy instance is the float64 oracle)."""

    def __init__(self, name: str, xp: Any) -> None:
        self.name = name
        self.xp = xp

    def __repr__(self) -> str:
        return f"<convnn backend {self.name!r} (the spec on {getattr(self.xp, '__name__', self.xp)})>"

    convnn2d = staticmethod(layers.convnn2d)
    convnn1d = staticmethod(layers.convnn1d)
    convnn_attention = staticmethod(attention.convnn_attention)
    select_neighbors = staticmethod(layers.select_neighbors)
    multihead_attention = staticmethod(attention.multihead_attention)
    masked_attention = staticmethod(attention.masked_attention)
    kvt_attention = staticmethod(attention.kvt_attention)
    local_attention = staticmethod(attention.local_attention)
    sparse_attention = staticmethod(attention.sparse_attention)

    def asarray(self, value: Any, dtype: Any = None) -> Any:
        """An array of this backend from a host value."""
        return self.xp.asarray(value, dtype=dtype)

    def to_numpy(self, value: Any) -> Any:
        """A NumPy copy of an array of this backend."""
        import numpy as np

        return np.asarray(value)
