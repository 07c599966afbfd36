"""convnn: Convolutional Nearest Neighbors on numpy, numba, torch and jax.

The backend-neutral spec (SPEC.md) on the Array API, the config, the one ConvNN pipeline that every
backend runs through its kernels (convnn.pipeline, convnn.kernels) and the backend registry.
Importing this package imports no framework (torch, jax, numba); backends load when asked for.
Subpackages: convnn.backends, convnn.models, convnn.conformance, convnn.bench.

Importing it sets two thread-pool defaults first (convnn.thread_policy): OMP_WAIT_POLICY=PASSIVE and
OPENBLAS_THREAD_TIMEOUT=4, unless the environment sets them, so that idle OpenMP and OpenBLAS workers
sleep instead of spinning on the cores the next kernel needs.
"""
from . import thread_policy  # noqa: F401  (first: the thread pools read it when they load)

from .attention import (
    convnn_attention,
    kvt_attention,
    local_attention,
    masked_attention,
    multihead_attention,
    sparse_attention,
)
from .candidates import draw_random, spatial_grid_2d, spatial_line
from .config import ConvNNConfig, attention_config
from .layers import convnn1d, convnn2d, select_neighbors
from .kernels import Capabilities, KernelsBase
from .registry import BackendPlugin, BackendUnavailable, available_backends, backend_status, explain, get_backend

__version__ = "0.2.0"

__all__ = [
    "ConvNNConfig",
    "attention_config",
    "convnn2d",
    "convnn1d",
    "convnn_attention",
    "select_neighbors",
    "multihead_attention",
    "masked_attention",
    "kvt_attention",
    "local_attention",
    "sparse_attention",
    "draw_random",
    "spatial_grid_2d",
    "spatial_line",
    "get_backend",
    "available_backends",
    "backend_status",
    "explain",
    "BackendUnavailable",
    "BackendPlugin",
    "Capabilities",
    "KernelsBase",
    "__version__",
]
