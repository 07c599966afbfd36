"""ConvNN attention and the baseline attentions (SPEC.md section 5) on [B, N, D] jax arrays."""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from convnn_core import attention as spec_attention
from convnn_core.attention import PROJECTIONS, band_mask
from convnn_core.candidates import make_rng as host_rng
from convnn_core.config import ConvNNConfig

from . import candidates as cands
from .arrays import as_key, index_dtype, is_tracer
from .convnn import DEFAULT_OPTIONS, TRACE_COUNTS, apply_taps, as_jax, final_candidates
from .neighbors import PRECISIONS, EngineOptions, aggregate


def check_projections(x: jnp.ndarray, params: Mapping[str, Any], heads: int) -> int:
    """The spec's projection/heads/finite checks (data checks evaluated now on concrete inputs, even under jit)."""
    with jax.ensure_compile_time_eval():
        return spec_attention.check_projections(jnp, x, params, heads)


def _params(params: Any) -> dict:
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict with keys {', '.join(PROJECTIONS)}; got {type(params).__name__}")
    return {k: as_jax(v)[0] for k, v in params.items()}


def check_dropout(dropout: float, train: bool, rng: Any) -> bool:
    """Whether dropout is active; it needs an rng (jax key, int seed or NumPy Generator) when it is."""
    if not (0.0 <= float(dropout) < 1.0):
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
    active = bool(train) and dropout > 0.0
    if active and rng is None:
        raise ValueError("dropout > 0 with train=True needs an rng= (a jax key, an int seed or a numpy Generator)")
    return active


def dropout_mask(y: jnp.ndarray, p: float, key: jnp.ndarray) -> jnp.ndarray:
    """Inverted dropout of y: keep with probability 1 - p, scaled by 1 / (1 - p)."""
    keep = jax.random.bernoulli(key, 1.0 - p, y.shape)
    return jnp.where(keep, y / (1.0 - p), jnp.zeros((), y.dtype))


def split_heads(t: jnp.ndarray, heads: int) -> jnp.ndarray:
    """[B, N, D] -> [B*h, N, D/h] (heads folded into the batch)."""
    b, n, d = t.shape
    return jnp.transpose(t.reshape(b, n, heads, d // heads), (0, 2, 1, 3)).reshape(b * heads, n, d // heads)


def merge_heads(t: jnp.ndarray, heads: int) -> jnp.ndarray:
    """[B*h, N, d] -> [B, N, h*d]."""
    bh, n, dh = t.shape
    return jnp.transpose(t.reshape(bh // heads, heads, n, dh), (0, 2, 1, 3)).reshape(bh // heads, n, heads * dh)


def _linear(x: jnp.ndarray, w: jnp.ndarray, precision: Any) -> jnp.ndarray:
    return jnp.matmul(x, w.T, precision=precision)


def _keys(rng: Any) -> tuple[Any, Any]:
    """(what draws candidates, what draws the dropout mask) from the caller's rng."""
    if rng is None:
        return None, None
    if cands.is_jax_key(rng) or is_tracer(rng):
        k_cand, k_drop = jax.random.split(as_key(rng))
        return k_cand, k_drop
    gen = host_rng(rng)  # the spec's order: candidates first, then dropout, from one Generator
    return gen, gen


# ----------------------------------------------------------------------------- ConvNN attention
def convnn_attention(x: Any, params: Mapping[str, Any], cfg: Optional[ConvNNConfig] = None, *, heads: int = 1,
                     dropout: float = 0.0, candidates: Any = None, rng: Any = None, train: bool = False,
                     opts: EngineOptions = DEFAULT_OPTIONS) -> jnp.ndarray:
    """ConvNN attention on x [B, N, D]: per head q_i selects K keys, rho-weighted v_j, taps over D, dropout, wo.

    params = {wq, wk, wv, wo: [D, D], taps: [D, K] (depthwise) or [D, D, K] (full)}.
    """
    cfg = spec_attention.resolve_attention_config(cfg)
    (x,) = as_jax(x)
    params = _params(params)
    d = check_projections(x, params, heads)
    spec_attention.check_attention_taps(jnp, x, params, cfg, d)
    active = check_dropout(dropout, train, rng)
    cand_rng, drop_rng = _keys(rng)
    b, n, _ = x.shape
    plan = cands.resolve(cfg, n, np.arange(n), batch=b, candidates=candidates, rng=cand_rng)
    drop_key = as_key(drop_rng) if active else None
    weights = {k: params[k] for k in PROJECTIONS + ("taps",)}
    return _attention_core(x, weights, plan.indices, plan.key, drop_key, cfg=cfg, heads=heads,
                           dropout=float(dropout) if active else 0.0, draw=plan.count, is_sorted=plan.sorted,
                           opts=opts)


@partial(jax.jit, static_argnames=("cfg", "heads", "dropout", "draw", "is_sorted", "opts"))
def _attention_core(x, params, cand, key, drop_key, *, cfg, heads, dropout, draw, is_sorted, opts):
    TRACE_COUNTS["convnn_attention"] += 1
    precision = None if opts.precision is None else PRECISIONS[opts.precision]
    b, n, d = x.shape
    qh = split_heads(_linear(x, params["wq"], precision), heads)
    kh = split_heads(_linear(x, params["wk"], precision), heads)
    vh = split_heads(_linear(x, params["wv"], precision), heads)
    cand = final_candidates(cand, key, draw, is_sorted, n)
    if cand is not None and cand.ndim == 2 and heads > 1:
        cand = jnp.repeat(cand, heads, axis=0)

    def reduce(g: jnp.ndarray) -> jnp.ndarray:  # [b*h, R, K, dh] -> [b, R, D], heads concatenated
        bh, r, k, dh = g.shape
        g = jnp.transpose(g.reshape(bh // heads, heads, r, k, dh), (0, 2, 3, 1, 4)).reshape(bh // heads, r, k, d)
        return apply_taps(cfg.taps, g, params["taps"], None, precision)

    y = aggregate(cfg, qh, kh, vh, jnp.arange(n, dtype=index_dtype()), cand, reduce, opts, heads=heads)
    if dropout > 0.0:
        y = dropout_mask(y, dropout, drop_key)
    return _linear(y, params["wo"], precision)


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
    precision = None if opts.precision is None else PRECISIONS[opts.precision]
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
        probs = dropout_mask(probs, dropout, drop_key)
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
