"""Aggregation (SPEC.md section 4, step 5): gather the K neighbours and apply full or depthwise taps."""
from __future__ import annotations

from typing import Any, Optional

from ._xp import shape_str


def check_taps(taps: str, weight: Any, bias: Optional[Any], channels: int, k: int, field: str = "weight") -> int:
    """Validate tap shapes for C value channels and K slots; return the output channel count."""
    if taps == "full":
        if weight.ndim != 3 or weight.shape[1] != channels or weight.shape[2] != k:
            raise ValueError(
                f"{field} has shape {shape_str(weight.shape)}; taps='full' needs [O, {channels}, {k}] "
                f"([out channels, aggregated channels C_agg={channels}, k={k}])"
            )
        out = weight.shape[0]
    else:
        if weight.ndim != 2 or weight.shape[0] != channels or weight.shape[1] != k:
            raise ValueError(
                f"{field} has shape {shape_str(weight.shape)}; taps='depthwise' needs [{channels}, {k}] "
                f"([channels C_agg={channels}, k={k}])"
            )
        out = channels
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != out):
        raise ValueError(f"bias has shape {shape_str(bias.shape)}; expected [{out}] or None")
    return out


def apply_taps(xp: Any, taps: str, gathered: Any, weight: Any, bias: Optional[Any]) -> Any:
    """y[b, i, o] from gathered [B, Nq, K, C]: Conv1d(kernel K, stride K) over the slots, or its depthwise form."""
    b, nq, k, c = gathered.shape
    if taps == "full":
        w2 = xp.reshape(xp.permute_dims(weight, (0, 2, 1)), (weight.shape[0], k * c))
        y = xp.matmul(xp.reshape(gathered, (b, nq, k * c)), xp.matrix_transpose(w2))
    else:
        y = xp.sum(gathered * xp.matrix_transpose(weight)[None, None, :, :], axis=2)
    if bias is not None:
        y = y + bias
    return y
