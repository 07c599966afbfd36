"""The other layers the model zoo needs, on torch tensors with torch's semantics and defaults."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .arrays import TorchRngKey, dropout_mask


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *, stride: int = 1,
           padding: Union[int, str] = 0) -> torch.Tensor:
    """Cross-correlation, NCHW; padding an int or 'same'."""
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x @ weight.T + bias."""
    return F.linear(x, weight, bias)


def batch_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, state: Mapping[str, torch.Tensor], *,
               train: bool, momentum: float = 0.1, eps: float = 1e-5) -> tuple[torch.Tensor, dict]:
    """BatchNorm2d: batch statistics in training (running state updated with the unbiased var), else the state."""
    mean, var = state["mean"], state["var"]
    if not train:
        return F.batch_norm(x, mean, var, gamma, beta, training=False, eps=eps), dict(state)
    new_mean = mean.detach().clone()
    new_var = var.detach().clone()
    y = F.batch_norm(x, new_mean, new_var, gamma, beta, training=True, momentum=momentum, eps=eps)
    new_state = dict(state)
    new_state["mean"], new_state["var"] = new_mean, new_var
    return y, new_state


def layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last axis."""
    return F.layer_norm(x, (x.shape[-1],), gamma, beta, eps)


def relu(x: torch.Tensor) -> torch.Tensor:
    """max(x, 0)."""
    return F.relu(x)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU."""
    return F.gelu(x)


def max_pool2d(x: torch.Tensor, size: int = 2) -> torch.Tensor:
    """Kernel = stride = size, no padding."""
    return F.max_pool2d(x, size, size)


def adaptive_avg_pool2d(x: torch.Tensor, output_size: Sequence[int]) -> torch.Tensor:
    """torch's adaptive average pooling bins."""
    return F.adaptive_avg_pool2d(x, tuple(output_size))


def dropout(x: torch.Tensor, p: float, rng: Any, *, train: bool) -> torch.Tensor:
    """Inverted dropout in training (mask from rng), identity otherwise."""
    if not (0.0 <= float(p) < 1.0):
        raise ValueError(f"p={p!r} must be in [0, 1)")
    if not train or p == 0.0:
        return x
    if rng is None:
        raise ValueError("dropout with train=True and p > 0 needs an rng")
    return x * dropout_mask(x, float(p), rng if isinstance(rng, TorchRngKey) else TorchRngKey(int(rng)))


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Softmax along axis."""
    return torch.softmax(x, dim=axis)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [B, classes] against integer labels [B]."""
    return F.cross_entropy(logits, labels.long())
