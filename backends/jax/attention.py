"""The baseline attentions (SPEC.md section 5) on [B, N, D] jax arrays; ConvNN attention runs in convnn.pipeline."""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from convnn import attention as spec_attention
from convnn.attention import PROJECTIONS, band_mask
from convnn.pipeline import check_dropout

from . import nn
from .arrays import as_key, is_tracer
from .kernels import TRACE_COUNTS, split_heads
from .neighbors import EngineOptions

DEFAULT_OPTIONS = EngineOptions()


def check_projections(x: jnp.ndarray, params: Mapping[str, Any], heads: int) -> int:
    """The spec's projection/heads/finite checks (data checks evaluated now on concrete inputs, even under jit)."""
    with jax.ensure_compile_time_eval():
        return spec_attention.check_projections(jnp, x, params, heads)


def as_jax(*arrays: Any) -> tuple[Any, ...]:
    """Jax arrays from host arrays (None and tracers pass through)."""
    return tuple(a if a is None or isinstance(a, jax.Array) or is_tracer(a) else jnp.asarray(a) for a in arrays)


def _params(params: Any) -> dict:
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict with keys {', '.join(PROJECTIONS)}; got {type(params).__name__}")
    return {k: as_jax(v)[0] for k, v in params.items()}


def merge_heads(t: jnp.ndarray, heads: int) -> jnp.ndarray:
    """[B*h, N, d] -> [B, N, h*d]."""
    bh, n, dh = t.shape
    return jnp.transpose(t.reshape(bh // heads, heads, n, dh), (0, 2, 1, 3)).reshape(bh // heads, n, heads * dh)


def _linear(x: jnp.ndarray, w: jnp.ndarray, precision: Any) -> jnp.ndarray:
    return jnp.matmul(x, w.T, precision=precision)


# ----------------------------------------------------------------------------- baselines
def masked_attention(x: Any, params: Mapping[str, Any], mask: Any = None, *, heads: int = 1, dropout: float = 0.0,
                     rng: Any = None, train: bool = False, opts: EngineOptions = DEFAULT_OPTIONS) -> jnp.ndarray:
    """softmax(q k^T / sqrt(d_head) [masked]) v per head, dropout on the probabilities, then wo.

    mask: bool [N, N] or [B*h, N, N], True where attention is allowed.
    """
    (x,) = as_jax(x)
    params = _params(params)
    check_projections(x, params, heads)
    active = check_dropout(dropout, train, rng)
    if mask is not None:
        mask = jnp.asarray(mask, dtype=bool)
    weights = {k: params[k] for k in PROJECTIONS}
    return _masked_core(x, weights, mask, as_key(rng) if active else None, heads=heads,
                        dropout=float(dropout) if active else 0.0, topk=None, opts=opts)


@partial(jax.jit, static_argnames=("heads", "dropout", "topk", "opts"))
def _masked_core(x, params, mask, drop_key, *, heads, dropout, topk, opts):
    from .topk import top_k_mask

    TRACE_COUNTS["masked_attention"] += 1
    precision = opts.lax_precision
    qh = split_heads(_linear(x, params["wq"], precision), heads)
    kh = split_heads(_linear(x, params["wk"], precision), heads)
    vh = split_heads(_linear(x, params["wv"], precision), heads)
    raw = jnp.matmul(qh, jnp.swapaxes(kh, 1, 2), precision=precision)
    if topk is not None:
        mask = top_k_mask(jax.lax.stop_gradient(raw), topk)
    scores = raw / math.sqrt(qh.shape[-1])
    if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout > 0.0:
        probs = nn.dropout(probs, dropout, drop_key, train=True)
    y = merge_heads(jnp.matmul(probs, vh, precision=precision), heads)
    return _linear(y, params["wo"], precision)


def multihead_attention(x: Any, params: Mapping[str, Any], **kw: Any) -> jnp.ndarray:
    """Dense multi-head self-attention with no-bias projections (the paper's attention baseline)."""
    return masked_attention(x, params, None, **kw)


def kvt_attention(x: Any, params: Mapping[str, Any], k: int, *, heads: int = 1, dropout: float = 0.0,
                  rng: Any = None, train: bool = False, opts: EngineOptions = DEFAULT_OPTIONS) -> jnp.ndarray:
    """KVT top-k attention: per query keep the k largest q.k scores (lower key index wins ties), softmax over them."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be an int >= 1")
    (x,) = as_jax(x)
    params = _params(params)
    check_projections(x, params, heads)
    n = x.shape[1]
    if k > n:
        raise ValueError(f"k={k} is larger than the number of keys N={n}")
    active = check_dropout(dropout, train, rng)
    weights = {name: params[name] for name in PROJECTIONS}
    return _masked_core(x, weights, None, as_key(rng) if active else None, heads=heads,
                        dropout=float(dropout) if active else 0.0, topk=k, opts=opts)


def local_attention(x: Any, params: Mapping[str, Any], window: int, **kw: Any) -> jnp.ndarray:
    """Local attention: each token attends to tokens within `window` positions in the 1-D token order."""
    return masked_attention(x, params, band_mask(np, np.shape(x)[1], np.zeros(0), kind="window", width=window), **kw)


def sparse_attention(x: Any, params: Mapping[str, Any], mode: str, width: int, **kw: Any) -> jnp.ndarray:
    """Sparse Transformer attention: mode 'local' (band |i-j| <= width/2) or 'strided' (|i-j| mod width = 0)."""
    if mode not in ("local", "strided"):
        raise ValueError(f"mode={mode!r} is not allowed; choose one of local, strided")
    return masked_attention(x, params, band_mask(np, np.shape(x)[1], np.zeros(0), kind=mode, width=width), **kw)
