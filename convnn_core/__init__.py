"""convnn: Convolutional Nearest Neighbors on numpy, numba, torch and jax.

The backend-neutral spec (SPEC.md) on the Array API, the config, the one ConvNN pipeline that every
backend runs through its kernels (convnn.pipeline, convnn.kernels) and the backend registry.
Importing this package imports no framework (torch, jax, numba); backends load when asked for.
Subpackages: convnn.backends, convnn.models, convnn.conformance, convnn.bench.

Importing it sets one default, OMP_WAIT_POLICY=PASSIVE (unless the environment sets it): OpenMP workers
(numba's, and torch's, which share one libgomp in a process) otherwise busy-wait after every parallel
region on the cores the next BLAS call needs, which made a numba VGG training step 1.7x slower. It
reaches an OpenMP runtime only if convnn is imported before the library that loads it (torch, numba).
"""
import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
