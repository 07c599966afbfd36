"""The jax backend: ConvNN and the zoo's vocabulary as pure functions on jax arrays (jit, grad, vmap).

`load(x64=False, precision='highest', block_elements=None, check_inputs=True, device=None)` returns
the backend object; see backend.py for the options.
"""
from __future__ import annotations

from typing import Any

from convnn.registry import BackendPlugin

OPTIONS = ("x64", "precision", "block_elements", "check_inputs", "device")
DTYPE_OPTIONS = {"float64": {"x64": True}}  # float64 exists only with 64-bit jax
PATH_NAME = "jit-compiled pipeline: row blocks under lax.map, lax.top_k with the lower-index rule"


def load(**options: Any) -> Any:
    """The jax backend object (imports jax and optax)."""
    from .backend import JaxBackend

    return JaxBackend(**options)


def describe_path(request: Any) -> Any:
    from convnn.kernels import PathChoice

    return PathChoice(PATH_NAME)


PLUGIN = BackendPlugin(
    name="jax", requires=("jax", "optax"), extra="jax",
    summary="pure jit-able JAX functions on CPU/GPU/TPU",
    loader=load, devices=("cpu", "cuda"), trains_convnn=True, describe_path=describe_path,
    options=OPTIONS, dtype_options=DTYPE_OPTIONS,
)
