"""TorchBackend: the vocabulary of convnn_core.vocabulary.Backend on torch tensors (CPU and CUDA)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import array_api_compat.torch as torch_xp
import numpy as np
import torch

from . import baselines, convnn, nn_ops, training
from .convnn import RunOptions
from .rng import make_rng, split_rng

DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
    "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8, "bool": torch.bool,
}


def resolve_dtype(dtype: Any) -> Optional[torch.dtype]:
    """A torch dtype from a name ('float32', ...), a torch dtype or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not allowed; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


class TorchBackend:
    """ConvNN on torch: the lean eager path, Triton kernels on CUDA, autograd training.

    device: where asarray puts new arrays ('cpu', 'cuda', 'cuda:1', ...); deterministic: ask for a
    deterministic backward (the Triton scatter is atomic-free in any case; the eager CUDA fallback and
    the surrounding autograd ops follow torch.use_deterministic_algorithms); fused: use the fused CUDA
    kernel where it applies; check_inputs: the finite-value checks of the spec (a host sync per call).
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

    @property
    def supported_dtypes(self) -> tuple[str, ...]:
        """Dtypes the conformance suite checks: float64/float32 everywhere, plus bfloat16/float16 on CUDA."""
        if self.device.type == "cuda":
            return ("float64", "float32", "bfloat16", "float16")
        return ("float64", "float32")

    def __repr__(self) -> str:
        o = self.options
        return (f"<convnn backend 'torch' device={self.device} deterministic={o.deterministic} fused={o.fused} "
                f"check_inputs={o.check_inputs}>")

    # -- ConvNN ops
    def convnn2d(self, x, weight, bias, cfg, *, candidates=None, rng=None):
        """ConvNN on NCHW maps (SPEC.md)."""
        return convnn.convnn2d(x, weight, bias, cfg, candidates=candidates, rng=rng, options=self.options)

    def convnn1d(self, x, weight, bias, cfg, *, candidates=None, rng=None):
        """ConvNN on [B, C, L] sequences."""
        return convnn.convnn1d(x, weight, bias, cfg, candidates=candidates, rng=rng, options=self.options)

    def convnn_attention(self, x, params, cfg=None, *, heads=1, dropout=0.0, candidates=None, rng=None,
                         train=False):
        """ConvNN attention on [B, N, D]."""
        return convnn.convnn_attention(x, params, cfg, heads=heads, dropout=dropout, candidates=candidates, rng=rng,
                                       train=train, options=self.options)

    def select_neighbors(self, feats, cfg=convnn.DEFAULT_CONFIG, *, query_feats=None, candidates=None, rng=None):
        """(indices [B, N, K], affinities [B, N, K])."""
        return convnn.select_neighbors(feats, cfg, query_feats=query_feats, candidates=candidates, rng=rng,
                                       options=self.options)

    # -- baselines
    multihead_attention = staticmethod(baselines.multihead_attention)
    masked_attention = staticmethod(baselines.masked_attention)
    kvt_attention = staticmethod(baselines.kvt_attention)
    local_attention = staticmethod(baselines.local_attention)
    sparse_attention = staticmethod(baselines.sparse_attention)

    # -- nn ops
    conv2d = staticmethod(nn_ops.conv2d)
    linear = staticmethod(nn_ops.linear)
    batch_norm = staticmethod(nn_ops.batch_norm)
    layer_norm = staticmethod(nn_ops.layer_norm)
    relu = staticmethod(nn_ops.relu)
    gelu = staticmethod(nn_ops.gelu)
    max_pool2d = staticmethod(nn_ops.max_pool2d)
    adaptive_avg_pool2d = staticmethod(nn_ops.adaptive_avg_pool2d)
    dropout = staticmethod(nn_ops.dropout)
    softmax = staticmethod(nn_ops.softmax)
    cross_entropy = staticmethod(nn_ops.cross_entropy)

    # -- arrays and randomness
    def asarray(self, value: Any, dtype: Any = None) -> torch.Tensor:
        """A tensor on this backend's device (dtype name or None to keep; NumPy float64 stays float64)."""
        dt = resolve_dtype(dtype)
        if isinstance(value, torch.Tensor):
            return value.to(device=self.device, dtype=dt if dt is not None else value.dtype)
        arr = np.asarray(value)
        return torch.as_tensor(arr, device=self.device, dtype=dt)

    def to_numpy(self, value: Any) -> np.ndarray:
        """A NumPy copy on the host (bfloat16 becomes float32)."""
        if isinstance(value, torch.Tensor):
            t = value.detach()
            if t.dtype == torch.bfloat16:
                t = t.to(torch.float32)
            return t.cpu().numpy().copy()
        return np.asarray(value)

    make_rng = staticmethod(make_rng)
    split_rng = staticmethod(split_rng)

    # -- training
    value_and_grad = staticmethod(training.value_and_grad)
    adamw = staticmethod(training.adamw)
    clip_grad_norm = staticmethod(training.clip_grad_norm)

    def compile(self, fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        """torch.compile(fn)."""
        return training.compile_fn(fn, **options)
