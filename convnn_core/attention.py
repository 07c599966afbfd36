"""ConvNN attention (SPEC.md section 5) and the paper's baseline attentions, on [B, N, D] token arrays."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np

from . import pipeline
from ._xp import check_finite, device, namespace
from .candidates import RngLike, make_rng
from .config import ConvNNConfig
from .spec_kernels import SpecKernels

PROJECTIONS = pipeline.PROJECTIONS


def check_projections(xp: Any, x: Any, params: Mapping[str, Any], heads: int) -> int:
    """Validate x [B, N, D], the four [D, D] projections and heads, and that x is finite; returns D."""
    d = pipeline.check_projections(x, params, heads)
    check_finite(xp, "x", x)
    return d


check_dropout = pipeline.check_dropout


def _dropout(xp: Any, y: Any, p: float, gen: np.random.Generator) -> Any:
    keep = gen.random(tuple(y.shape)) >= p
    mask = xp.asarray(keep.astype(np.float64) / (1.0 - p), dtype=y.dtype, device=device(y))
    return y * mask


def _linear(xp: Any, x: Any, w: Any) -> Any:
    return xp.matmul(x, xp.matrix_transpose(w))


resolve_attention_config = pipeline.resolve_attention_config


def check_attention_taps(xp: Any, x: Any, params: Mapping[str, Any], cfg: ConvNNConfig, d: int) -> None:
    """The convnn_attention checks beyond the projections: taps present and shaped, a token-level config."""
    pipeline.check_attention_taps(x, params, cfg, d)


def split_heads(xp: Any, t: Any, heads: int) -> Any:
    """[B, N, D] -> [B*h, N, D/h] (heads folded into the batch)."""
    b, n, d = t.shape
    t = xp.permute_dims(xp.reshape(t, (b, n, heads, d // heads)), (0, 2, 1, 3))
    return xp.reshape(t, (b * heads, n, d // heads))


def merge_heads(xp: Any, t: Any, heads: int) -> Any:
    """[B*h, N, d] -> [B, N, h*d]."""
    bh, n, dh = t.shape
    t = xp.permute_dims(xp.reshape(t, (bh // heads, heads, n, dh)), (0, 2, 1, 3))
    return xp.reshape(t, (bh // heads, n, heads * dh))


def convnn_attention(
    x: Any,
    params: Mapping[str, Any],
    cfg: Optional[ConvNNConfig] = None,
    *,
    heads: int = 1,
    dropout: float = 0.0,
    candidates: Any = None,
    rng: RngLike = None,
    train: bool = False,
) -> Any:
    """ConvNN attention on x [B, N, D]: per head, queries q_i select K keys k_j, rho-weighted v_j, taps, dropout, wo.

    params = {wq, wk, wv, wo: [D, D], taps: [D, K] (depthwise) or [D, D, K] (full)}. With K = N,
    self_first False and taps of ones this is exactly softmax attention.
    """
    arrays = [params[k] for k in PROJECTIONS if isinstance(params, Mapping) and k in params]
    kernels = SpecKernels(namespace(x, *arrays))
    return pipeline.convnn_attention(kernels, x, params, cfg, heads=heads, dropout=dropout, candidates=candidates,
                                     rng=rng, train=train)


# ----------------------------------------------------------------------------- baselines
def masked_attention(
    x: Any,
    params: Mapping[str, Any],
    mask: Any = None,
    *,
    heads: int = 1,
    dropout: float = 0.0,
    rng: RngLike = None,
    train: bool = False,
) -> Any:
    """Multi-head self-attention softmax(q k^T / sqrt(d_head) [masked]) v, then wo; mask [N, N] or [B*h, N, N] bool."""
    xp = namespace(x, *[params[k] for k in PROJECTIONS if isinstance(params, Mapping) and k in params])
    check_projections(xp, x, params, heads)
    active = check_dropout(dropout, train, rng)
    qh = split_heads(xp, _linear(xp, x, params["wq"]), heads)
    kh = split_heads(xp, _linear(xp, x, params["wk"]), heads)
    vh = split_heads(xp, _linear(xp, x, params["wv"]), heads)
    scores = xp.matmul(qh, xp.matrix_transpose(kh)) / math.sqrt(qh.shape[-1])
    if mask is not None:
        scores = xp.where(mask, scores, xp.asarray(-float("inf"), dtype=scores.dtype))
    shifted = scores - xp.max(scores, axis=-1, keepdims=True)
    e = xp.exp(shifted)
    probs = e / xp.sum(e, axis=-1, keepdims=True)
    if active:
        probs = _dropout(xp, probs, float(dropout), make_rng(rng))
    return _linear(xp, merge_heads(xp, xp.matmul(probs, vh), heads), params["wo"])


def multihead_attention(x: Any, params: Mapping[str, Any], **kw: Any) -> Any:
    """Dense multi-head self-attention with no-bias projections (the paper's attention baseline)."""
    return masked_attention(x, params, None, **kw)


def topk_mask(xp: Any, scores: Any, k: int) -> Any:
    """Boolean mask keeping the k largest scores per row, ties to the lower key index."""
    n = scores.shape[-1]
    if k > n:
        raise ValueError(f"k={k} is larger than the number of keys N={n}")
    order = xp.argsort(-scores, axis=-1, stable=True)
    ranks = xp.argsort(order, axis=-1, stable=True)
    return ranks < k


def kvt_attention(x: Any, params: Mapping[str, Any], k: int, *, heads: int = 1, **kw: Any) -> Any:
    """KVT top-k attention: per row keep the k largest q.k scores (lower index wins ties), softmax over them."""
    xp = namespace(x)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be an int >= 1")
    check_projections(xp, x, params, heads)
    qh = split_heads(xp, _linear(xp, x, params["wq"]), heads)
    kh = split_heads(xp, _linear(xp, x, params["wk"]), heads)
    scores = xp.matmul(qh, xp.matrix_transpose(kh))
    return masked_attention(x, params, topk_mask(xp, scores, k), heads=heads, **kw)


def band_mask(xp: Any, n: int, like: Any, *, kind: str, width: int) -> Any:
    """[N, N] masks over the token order: local window |i-j| <= width, sparse 'local' |i-j| <= width//2,
    sparse 'strided' |i-j| mod width == 0."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width={width!r} must be an int >= 1")
    i = xp.arange(n, device=device(like))
    dist = xp.abs(i[:, None] - i[None, :])
    if kind == "window":
        return dist <= width
    if kind == "local":
        return dist <= width // 2
    if kind == "strided":
        return (dist % width) == 0
    raise ValueError(f"kind={kind!r} is not allowed; choose one of window, local, strided")


def local_attention(x: Any, params: Mapping[str, Any], window: int, **kw: Any) -> Any:
    """Local attention: each token attends to tokens within `window` positions in the 1-D token order."""
    xp = namespace(x)
    return masked_attention(x, params, band_mask(xp, x.shape[1], x, kind="window", width=window), **kw)


def sparse_attention(x: Any, params: Mapping[str, Any], mode: str, width: int, **kw: Any) -> Any:
    """Sparse Transformer attention: mode 'local' (band |i-j| <= width/2) or 'strided' (|i-j| mod width = 0)."""
    if mode not in ("local", "strided"):
        raise ValueError(f"mode={mode!r} is not allowed; choose one of local, strided")
    xp = namespace(x)
    return masked_attention(x, params, band_mask(xp, x.shape[1], x, kind=mode, width=width), **kw)
