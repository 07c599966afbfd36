"""The numba backend: parallel CPU kernels for ConvNN with their own backward, trainable through HIPS autograd."""
from __future__ import annotations

import importlib.util
import os
from typing import Any

from convnn.registry import BackendPlugin

REQUIRES = ("numba", "autograd", "threadpoolctl")
# looked up once: whether these kernels are there to serve other backends too (torch's and jax's CPU selection)
INSTALLED = all(importlib.util.find_spec(m) is not None for m in REQUIRES + ("scipy",))
SELECT_PATH = "selection by the numba streaming top-K kernel"


def select_blockers(device: str, dtype: str, uses_grid_distance: bool, opt_out_variable: str) -> list[str]:
    """Why another backend's selection does not run on the numba kernel (empty: it does).

    The kernel serves CPU float32/float64 calls without the exact grid distance; opt_out_variable=1 in the
    environment keeps the other backend's own code (for A/B timings and tests of that code)."""
    why = []
    if not str(device).startswith("cpu"):
        why.append(f"device {device} is not the CPU")
    if not INSTALLED:
        why.append("numba is not installed (pip install 'convnn[numba]')")
    if os.environ.get(opt_out_variable) == "1":
        why.append(f"{opt_out_variable}=1")
    if dtype not in ("float32", "float64"):
        why.append(f"dtype {dtype} (the numba kernels take float32 and float64)")
    if uses_grid_distance:
        why.append("the exact grid distance of position/blend selection stays in the backend's own code")
    return why


def load(**options: Any) -> Any:
    """The backend object; options: threads=int (default NUMBA_NUM_THREADS, at most that), check_inputs=bool."""
    unknown = sorted(set(options) - {"threads", "check_inputs"})
    if unknown:
        raise ValueError(f"backend 'numba' takes only the options threads=, check_inputs=; got {unknown}")
    from .backend import NumbaBackend

    return NumbaBackend(options.get("threads"), check_inputs=options.get("check_inputs", True))


PATH_NAME = ("numba kernels: blocked BLAS affinities (half of a symmetric product when the queries are the layer's "
             "own tokens), streaming top-K, gather + taps in row tiles (large maps) or chunks with one BLAS call each")


def describe_path(request: Any) -> Any:
    from convnn.kernels import PathChoice

    return PathChoice(PATH_NAME)


PLUGIN = BackendPlugin(
    name="numba", requires=REQUIRES, extra="numba",
    summary="Numba-parallel CPU kernels with backward, training through HIPS autograd",
    loader=load, devices=("cpu",), trains_convnn=True, describe_path=describe_path,
    options=("threads", "check_inputs"),
)
