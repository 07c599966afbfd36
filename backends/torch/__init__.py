"""The torch backend: ConvNN on PyTorch (CPU and CUDA), Triton kernels on CUDA, and nn.Module drop-ins.

`load(device=..., deterministic=..., fused=..., check_inputs=...)` returns the backend object that
`convnn_core.get_backend("torch", ...)` hands out; the modules live in `backends.torch.modules`.
"""
from __future__ import annotations

from typing import Any

OPTIONS = ("device", "deterministic", "fused", "check_inputs")


def load(**options: Any) -> Any:
    """The TorchBackend object; options: device ('cpu', 'cuda', ...), deterministic, fused, check_inputs."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"backend 'torch' got unknown option(s) {unknown}; allowed: {', '.join(OPTIONS)}")
    from .backend import TorchBackend

    return TorchBackend(**options)
