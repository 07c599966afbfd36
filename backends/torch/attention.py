"""The paper's baseline attentions on torch (SPEC.md section 5): dense, masked, KVT top-k, local, sparse.

Without dropout they run through scaled_dot_product_attention (flash / memory-efficient kernels on
CUDA); with dropout the probabilities are formed explicitly so the mask comes from the given rng.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import array_api_compat.torch as xp
import torch
import torch.nn.functional as F

from convnn.attention import check_dropout, check_projections

from .arrays import TorchRngKey, as_host_rng, dropout_mask
from .kernels import merge_heads, split_heads
from .selection import exact_topk


def _qkv(x: torch.Tensor, params: Mapping[str, torch.Tensor], heads: int):
    return tuple(split_heads(F.linear(x, params[name]), heads) for name in ("wq", "wk", "wv"))


def masked_attention(x: torch.Tensor, params: Mapping[str, torch.Tensor], mask: Optional[torch.Tensor] = None, *,
                     heads: int = 1, dropout: float = 0.0, rng: Any = None, train: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_head) [masked]) v per head, then wo; mask [N, N] or [B*h, N, N] bool (True = keep)."""
    check_projections(xp, x, params, heads)
    active = check_dropout(dropout, train, rng)
    q, k, v = _qkv(x, params, heads)
    if not active:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, -math.inf)
        probs = torch.softmax(scores, dim=-1)
        probs = probs * dropout_mask(probs, float(dropout), rng if isinstance(rng, TorchRngKey) else as_host_rng(rng))
        out = torch.matmul(probs, v)
    return F.linear(merge_heads(out, heads), params["wo"])


def multihead_attention(x: torch.Tensor, params: Mapping[str, torch.Tensor], **kw: Any) -> torch.Tensor:
    """Dense multi-head self-attention with no-bias projections."""
    return masked_attention(x, params, None, **kw)


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask keeping the k largest scores per row, ties to the lower key index."""
    n = scores.shape[-1]
    if k > n:
        raise ValueError(f"k={k} is larger than the number of keys N={n}")
    pos = exact_topk(scores, k)
    return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(-1, pos, True)


def kvt_attention(x: torch.Tensor, params: Mapping[str, torch.Tensor], k: int, *, heads: int = 1,
                  **kw: Any) -> torch.Tensor:
    """KVT top-k attention: each row keeps its k largest q.k scores (lower index wins ties)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be an int >= 1")
    check_projections(xp, x, params, heads)
    with torch.no_grad():
        q = split_heads(F.linear(x, params["wq"]), heads)
        kk = split_heads(F.linear(x, params["wk"]), heads)
        mask = topk_mask(torch.matmul(q, kk.transpose(-1, -2)), k)
    return masked_attention(x, params, mask, heads=heads, **kw)


def band_mask(n: int, device: torch.device, *, kind: str, width: int) -> torch.Tensor:
    """[N, N] masks over the token order: window |i-j| <= width, 'local' |i-j| <= width//2, 'strided' |i-j| % width == 0."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width={width!r} must be an int >= 1")
    i = torch.arange(n, device=device)
    dist = (i[:, None] - i[None, :]).abs()
    if kind == "window":
        return dist <= width
    if kind == "local":
        return dist <= width // 2
    if kind == "strided":
        return dist % width == 0
    raise ValueError(f"kind={kind!r} is not allowed; choose one of window, local, strided")


def local_attention(x: torch.Tensor, params: Mapping[str, torch.Tensor], window: int, **kw: Any) -> torch.Tensor:
    """Each token attends to the tokens within `window` positions of the 1-D order."""
    return masked_attention(x, params, band_mask(x.shape[1], x.device, kind="window", width=window), **kw)


def sparse_attention(x: torch.Tensor, params: Mapping[str, torch.Tensor], mode: str, width: int,
                     **kw: Any) -> torch.Tensor:
    """Sparse attention: mode 'local' (|i-j| <= width/2) or 'strided' (|i-j| mod width = 0)."""
    if mode not in ("local", "strided"):
        raise ValueError(f"mode={mode!r} is not allowed; choose one of local, strided")
    return masked_attention(x, params, band_mask(x.shape[1], x.device, kind=mode, width=width), **kw)
