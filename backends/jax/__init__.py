"""The jax backend: ConvNN and the zoo's vocabulary as pure functions on jax arrays (jit, grad, vmap).

`load(x64=False, precision='highest', block_elements=None)` returns the backend object; see
backend.py for the options.
"""
from __future__ import annotations

from typing import Any


def load(**options: Any) -> Any:
    """The jax backend object (imports jax and optax)."""
    from .backend import JaxBackend

    return JaxBackend(**options)
