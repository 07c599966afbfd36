"""The jax backend: ConvNN and the zoo's vocabulary as pure functions on jax arrays (jit, grad, vmap).

`load(x64=False, precision='highest', block_elements=None, check_inputs=True, device=None)` returns
the backend object; see backend.py for the options.
"""
from __future__ import annotations

from typing import Any

from convnn.backends import numba
from convnn.registry import BackendPlugin

OPTIONS = ("x64", "precision", "block_elements", "check_inputs", "device")
DTYPE_OPTIONS = {"float64": {"x64": True}}  # float64 exists only with 64-bit jax
PATH_NAME = "jit-compiled pipeline: row blocks under lax.map, lax.top_k with the lower-index rule"
NUMBA_SELECT = numba.SELECT_PATH + " (a host callback)"


def numba_select_blockers(device: str, dtype: str, uses_grid_distance: bool) -> list[str]:
    """Why the CPU selection does not run on the numba kernel (empty: it does); jax's own code runs then."""
    return numba.select_blockers(device, dtype, uses_grid_distance, "CONVNN_JAX_NO_NUMBA")


def load(**options: Any) -> Any:
    """The jax backend object (imports jax and optax)."""
    from .backend import JaxBackend

    return JaxBackend(**options)


def describe_path(request: Any) -> Any:
    from convnn.grid import uses_grid
    from convnn.kernels import PathChoice

    grid = request.cfg is not None and request.op in ("convnn2d", "convnn1d") and uses_grid(request.cfg)
    device = request.device or "cpu"
    why = numba_select_blockers(device, request.dtype, grid)
    if why:
        return PathChoice(PATH_NAME, ((NUMBA_SELECT, "; ".join(why)),))
    return PathChoice(f"{PATH_NAME}; {NUMBA_SELECT}")


PLUGIN = BackendPlugin(
    name="jax", requires=("jax", "optax"), extra="jax",
    summary="pure jit-able JAX functions on CPU/GPU/TPU",
    loader=load, devices=("cpu", "cuda"), trains_convnn=True, describe_path=describe_path,
    options=OPTIONS, dtype_options=DTYPE_OPTIONS,
)
