"""The numba backend: parallel CPU kernels for ConvNN with their own backward, trainable through HIPS autograd."""
from __future__ import annotations

from typing import Any

from convnn.registry import BackendPlugin


def load(**options: Any) -> Any:
    """The backend object; options: threads=int (default NUMBA_NUM_THREADS, at most that), check_inputs=bool."""
    unknown = sorted(set(options) - {"threads", "check_inputs"})
    if unknown:
        raise ValueError(f"backend 'numba' takes only the options threads=, check_inputs=; got {unknown}")
    from .backend import NumbaBackend

    return NumbaBackend(options.get("threads"), check_inputs=options.get("check_inputs", True))


def describe_path(request: Any) -> Any:
    from convnn.kernels import PathChoice

    return PathChoice("numba kernels: blocked BLAS affinities, streaming top-K, gather + taps GEMM per row block")


PLUGIN = BackendPlugin(
    name="numba", requires=("numba", "autograd", "threadpoolctl"), extra="numba",
    summary="Numba-parallel CPU kernels with backward, training through HIPS autograd",
    loader=load, devices=("cpu",), trains_convnn=True, describe_path=describe_path,
    options=("threads", "check_inputs"),
)
