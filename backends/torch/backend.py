"""TorchBackend: the vocabulary of convnn.vocabulary.Backend on torch tensors (CPU and CUDA).

The four ConvNN ops run the one pipeline (convnn.pipeline, through convnn.backend_base.PipelineOps)
on TorchKernels (kernels.py); the baselines, layers, arrays and training are torch's own.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import array_api_compat.torch as torch_xp
import numpy as np
import torch

from convnn.backend_base import PipelineOps
from convnn.kernels import Capabilities
from convnn.vocabulary import ATTENTION_OPS, CONVNN_OPS

from . import arrays, attention, nn, training
from .arrays import make_rng, split_rng
from .kernels import RunOptions, TorchKernels, device_dtypes


class TorchBackend(PipelineOps):
    """ConvNN on torch: the lean eager path, Triton kernels on CUDA, autograd training.

    device: where asarray puts new arrays ('cpu', 'cuda', 'cuda:1', ...); deterministic: ask for a
    deterministic backward (the Triton scatter is atomic-free in any case; the eager CUDA fallback and
    the surrounding autograd ops follow torch.use_deterministic_algorithms); fused: use the fused CUDA
    kernel where it applies; check_inputs: refuse NaN/inf inputs (a host sync per call; never while
    torch.compile traces).
    """

    name = "torch"
    xp = torch_xp

    def __init__(self, device: Union[str, torch.device] = "cpu", deterministic: bool = False, fused: bool = True,
                 check_inputs: bool = True) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for, but torch sees no CUDA GPU; use device='cpu'")
        self.options = RunOptions(deterministic=bool(deterministic), fused=bool(fused),
                                  check_inputs=bool(check_inputs))
        self.kernels = TorchKernels(self.device, self.options)
        on_cuda = self.device.type == "cuda"
        self.capabilities = Capabilities(
            dtypes=device_dtypes(self.device), devices=("cpu", "cuda"), device=str(self.device),
            differentiable=CONVNN_OPS + ATTENTION_OPS, trainable=True, compiles=True, compile_by_default=False,
            int64_labels=True, memory="cuda" if on_cuda else "host", mixed_precision="autocast",
            data_parallel="processes",
        )

    @property
    def supported_dtypes(self) -> tuple[str, ...]:
        """Dtypes the ConvNN ops take: float64/float32 everywhere, plus bfloat16/float16 on CUDA."""
        return self.capabilities.dtypes

    @property
    def threads(self) -> int:
        """The intra-op thread count torch computes with on the CPU (recorded by the trainer)."""
        return torch.get_num_threads()

    def __repr__(self) -> str:
        o = self.options
        return (f"<convnn backend 'torch' device={self.device} deterministic={o.deterministic} fused={o.fused} "
                f"check_inputs={o.check_inputs}>")

    def autocast(self, dtype: Optional[str]) -> Any:
        """torch.autocast on this backend's device to `dtype` ('bfloat16', ...), or with autocast off (None)."""
        if dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=getattr(torch, dtype))

    def synchronize(self, value: Any) -> Any:
        """Wait for the queued CUDA work (nothing to wait for on the CPU); returns value."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return value

    def place(self, tree: Any) -> Any:
        """Tensors are placed where asarray put them: identity."""
        return tree

    # -- baselines
    multihead_attention = staticmethod(attention.multihead_attention)
    masked_attention = staticmethod(attention.masked_attention)
    kvt_attention = staticmethod(attention.kvt_attention)
    local_attention = staticmethod(attention.local_attention)
    sparse_attention = staticmethod(attention.sparse_attention)

    # -- nn ops
    conv2d = staticmethod(nn.conv2d)
    linear = staticmethod(nn.linear)
    batch_norm = staticmethod(nn.batch_norm)
    layer_norm = staticmethod(nn.layer_norm)
    relu = staticmethod(nn.relu)
    gelu = staticmethod(nn.gelu)
    max_pool2d = staticmethod(nn.max_pool2d)
    adaptive_avg_pool2d = staticmethod(nn.adaptive_avg_pool2d)
    dropout = staticmethod(nn.dropout)
    softmax = staticmethod(nn.softmax)
    cross_entropy = staticmethod(nn.cross_entropy)

    # -- arrays and randomness
    def asarray(self, value: Any, dtype: Any = None) -> torch.Tensor:
        """A tensor on this backend's device (dtype name or None to keep; NumPy float64 stays float64)."""
        return arrays.asarray(value, self.device, dtype)

    def to_numpy(self, value: Any) -> np.ndarray:
        """A NumPy copy on the host (bfloat16 becomes float32)."""
        return arrays.to_numpy(value)

    make_rng = staticmethod(make_rng)
    split_rng = staticmethod(split_rng)

    # -- training
    value_and_grad = staticmethod(training.value_and_grad)
    adamw = staticmethod(training.adamw)
    clip_grad_norm = staticmethod(training.clip_grad_norm)

    def compile(self, fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        """torch.compile(fn)."""
        return training.compile_fn(fn, **options)
