"""ConvNN ops on maps and sequences (SPEC.md sections 2-4) for jax: convnn2d, convnn1d, select_neighbors.

Each public op validates on static shapes and config in Python (the spec's own checks and
messages; data-dependent ones only when the data are concrete), resolves its candidates, then
calls one jitted core per op, compiled once per shape and config and inlined under an outer
jit, grad or vmap.
"""
from __future__ import annotations

import collections
from functools import partial
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from convnn_core._xp import check_float_inputs, check_ndim, shape_str
from convnn_core.aggregate import check_taps
from convnn_core.config import ConvNNConfig
from convnn_core.layers import (
    check_shuffle_channels,
    pixel_shuffle,
    pixel_shuffle_1d,
    pixel_unshuffle,
    pixel_unshuffle_1d,
)

from . import candidates as cands
from .arrays import check_finite, index_dtype, is_tracer
from .neighbors import EngineOptions, PRECISIONS, aggregate, neighbors

DEFAULT_CONFIG = ConvNNConfig()
DEFAULT_OPTIONS = EngineOptions()
# Number of times each jitted core has been traced (one per new shape/config); read by tests.
TRACE_COUNTS: collections.Counter = collections.Counter()


# ----------------------------------------------------------------------------- host-side layout constants
def interior_tokens(h: int, w: int, p: int) -> np.ndarray:
    """Padded-raster token indices of the H*W interior pixels, row-major."""
    rows = np.arange(h) + p
    cols = np.arange(w) + p
    return (rows[:, None] * (w + 2 * p) + cols[None, :]).reshape(-1)


def coords_2d(hp: int, wp: int, dtype: Any) -> jnp.ndarray:
    """[Hp*Wp, 2] coordinates (x = column, then y = row) over the padded grid, as the spec builds them."""
    xs = np.linspace(-1.0, 1.0, wp).astype(dtype)  # float64 on the host, then cast: the spec's bits
    ys = np.linspace(-1.0, 1.0, hp).astype(dtype)
    grid = np.stack([np.broadcast_to(xs[None, :], (hp, wp)).reshape(-1),
                     np.broadcast_to(ys[:, None], (hp, wp)).reshape(-1)], axis=-1)
    return jnp.asarray(grid)


def coords_1d(lp: int, dtype: Any) -> jnp.ndarray:
    """[Lp, 1] coordinates of a padded sequence."""
    return jnp.asarray(np.linspace(-1.0, 1.0, lp).astype(dtype)[:, None])


# ----------------------------------------------------------------------------- shared pieces
def selection_features(cfg: ConvNNConfig, tokens: jnp.ndarray, coords: Optional[jnp.ndarray]) -> jnp.ndarray:
    """Features, coordinates, or [blend * f / sigma_b, (1 - blend) * coords] (sigma_b: unbiased std + 1e-6)."""
    if cfg.select == "feature":
        return tokens
    b, n, c = tokens.shape
    cb = jnp.broadcast_to(coords[None], (b, n, coords.shape[-1]))
    if cfg.select == "position":
        return cb
    sigma = jnp.std(tokens.reshape(b, n * c), axis=1, ddof=1) + 1e-6
    return jnp.concatenate([cfg.blend * tokens / sigma[:, None, None], (1.0 - cfg.blend) * cb], axis=-1)


def apply_taps(taps: str, gathered: jnp.ndarray, weight: jnp.ndarray, bias: Optional[jnp.ndarray],
               precision: Any) -> jnp.ndarray:
    """Conv1d(kernel K, stride K) over the slots of gathered [G, R, K, C] -> [G, R, O], or its depthwise form."""
    if taps == "full":  # one GEMM [g*R, K*C] x [K*C, O]
        g, r, k, c = gathered.shape
        w2 = jnp.transpose(weight, (2, 1, 0)).reshape(k * c, weight.shape[0])
        y = jnp.matmul(gathered.reshape(g, r, k * c), w2, precision=precision)
    else:
        y = jnp.einsum("grkc,ck->grc", gathered, weight, precision=precision)
    return y if bias is None else y + bias


def final_candidates(cand: Optional[jnp.ndarray], key: Optional[jnp.ndarray], draw: Optional[int],
                     is_sorted: bool, n_tokens: int) -> Optional[jnp.ndarray]:
    """Inside the jitted core: draw with the key, or sort traced explicit indices (the tie rule needs them sorted)."""
    if key is not None:
        return cands.draw_on_device(key, n_tokens, draw)
    if cand is not None and not is_sorted:
        return jnp.sort(cand, axis=-1)
    return cand


def tokens_op(cfg: ConvNNConfig, tokens: jnp.ndarray, coords: Optional[jnp.ndarray], queries: np.ndarray,
              weight: jnp.ndarray, bias: Optional[jnp.ndarray], cand: Optional[jnp.ndarray],
              opts: EngineOptions) -> jnp.ndarray:
    """The op on a padded token raster [B, N', C]: y [B, Nq, O] for the query tokens."""
    b, n, _ = tokens.shape
    values = tokens
    if cfg.aggregate_coords:
        values = jnp.concatenate([tokens, jnp.broadcast_to(coords[None], (b, n, coords.shape[-1]))], axis=-1)
    sel = selection_features(cfg, tokens, coords)
    qtok = jnp.asarray(queries, dtype=index_dtype())
    q = jnp.take(sel, qtok, axis=1)
    precision = None if opts.precision is None else PRECISIONS[opts.precision]
    reduce = partial(apply_taps, cfg.taps, weight=weight, bias=bias, precision=precision)
    return aggregate(cfg, q, sel, values, qtok, cand, reduce, opts)


def as_jax(*arrays: Any) -> tuple[Any, ...]:
    """Jax arrays from host arrays (None and tracers pass through)."""
    return tuple(a if a is None or isinstance(a, jax.Array) or is_tracer(a) else jnp.asarray(a) for a in arrays)


def check_inputs(x: jnp.ndarray, weight: jnp.ndarray, bias: Optional[jnp.ndarray], cfg: Any) -> None:
    """The spec's common checks: config type, one real floating dtype, finite x (when concrete)."""
    if not isinstance(cfg, ConvNNConfig):
        raise TypeError(f"cfg must be a ConvNNConfig, got {type(cfg).__name__}")
    check_float_inputs(jnp, x=x, weight=weight, bias=bias)
    check_finite("x", x)


# ----------------------------------------------------------------------------- convnn2d
def convnn2d(x: Any, weight: Any, bias: Optional[Any] = None, cfg: ConvNNConfig = DEFAULT_CONFIG, *,
             candidates: Any = None, rng: Any = None, opts: EngineOptions = DEFAULT_OPTIONS) -> jnp.ndarray:
    """ConvNN on an NCHW map: y [B, O, H, W]; weight [O, C_agg, K] (full) or [C_agg, K] (depthwise).

    candidates: explicit padded-raster token indices [S] or [B, S]; rng (a jax key, an int seed or
    a NumPy Generator) draws them for sampling='random' when none are given.
    """
    x, weight, bias = as_jax(x, weight, bias)
    check_ndim("x", x, 4, "[B, C, H, W]")
    check_inputs(x, weight, bias, cfg)
    s = cfg.shuffle_scale
    b, c, h, w = x.shape
    if s > 1:
        if h % s or w % s:
            raise ValueError(f"shuffle_scale={s} must divide the map size {h}x{w}")
        c, h, w = c * s * s, h // s, w // s
    p = cfg.padding
    out = check_taps(cfg.taps, weight, bias, c + (2 if cfg.aggregate_coords else 0), cfg.k)
    check_shuffle_channels(out, s, 2)
    n_tokens = (h + 2 * p) * (w + 2 * p)
    plan = cands.resolve(cfg, n_tokens, interior_tokens(h, w, p), batch=b, grid=(h, w),
                         candidates=candidates, rng=rng)
    return _convnn2d_core(x, weight, bias, plan.indices, plan.key, cfg=cfg, draw=plan.count,
                          is_sorted=plan.sorted, opts=opts)


@partial(jax.jit, static_argnames=("cfg", "draw", "is_sorted", "opts"))
def _convnn2d_core(x, weight, bias, cand, key, *, cfg, draw, is_sorted, opts):
    TRACE_COUNTS["convnn2d"] += 1
    s = cfg.shuffle_scale
    if s > 1:
        x = pixel_unshuffle(jnp, x, s)
    b, c, h, w = x.shape
    p = cfg.padding
    hp, wp = h + 2 * p, w + 2 * p
    padded = jnp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    tokens = jnp.transpose(padded, (0, 2, 3, 1)).reshape(b, hp * wp, c)
    coords = coords_2d(hp, wp, x.dtype) if cfg.uses_coords else None
    cand = final_candidates(cand, key, draw, is_sorted, hp * wp)
    y = tokens_op(cfg, tokens, coords, interior_tokens(h, w, p), weight, bias, cand, opts)
    out = jnp.transpose(y, (0, 2, 1)).reshape(b, y.shape[-1], h, w)
    return pixel_shuffle(jnp, out, s) if s > 1 else out


# ----------------------------------------------------------------------------- convnn1d
def convnn1d(x: Any, weight: Any, bias: Optional[Any] = None, cfg: ConvNNConfig = DEFAULT_CONFIG, *,
             candidates: Any = None, rng: Any = None, opts: EngineOptions = DEFAULT_OPTIONS) -> jnp.ndarray:
    """ConvNN on a [B, C, L] sequence: y [B, O, L]; one coordinate channel when coordinates are used."""
    x, weight, bias = as_jax(x, weight, bias)
    check_ndim("x", x, 3, "[B, C, L]")
    check_inputs(x, weight, bias, cfg)
    s = cfg.shuffle_scale
    b, c, length = x.shape
    if s > 1:
        if length % s:
            raise ValueError(f"shuffle_scale={s} must divide the sequence length {length}")
        c, length = c * s, length // s
    p = cfg.padding
    out = check_taps(cfg.taps, weight, bias, c + (1 if cfg.aggregate_coords else 0), cfg.k)
    check_shuffle_channels(out, s, 1)
    plan = cands.resolve(cfg, length + 2 * p, np.arange(length) + p, batch=b, length=length,
                         candidates=candidates, rng=rng)
    return _convnn1d_core(x, weight, bias, plan.indices, plan.key, cfg=cfg, draw=plan.count,
                          is_sorted=plan.sorted, opts=opts)


@partial(jax.jit, static_argnames=("cfg", "draw", "is_sorted", "opts"))
def _convnn1d_core(x, weight, bias, cand, key, *, cfg, draw, is_sorted, opts):
    TRACE_COUNTS["convnn1d"] += 1
    s = cfg.shuffle_scale
    if s > 1:
        x = pixel_unshuffle_1d(jnp, x, s)
    b, c, length = x.shape
    p = cfg.padding
    tokens = jnp.transpose(jnp.pad(x, ((0, 0), (0, 0), (p, p))), (0, 2, 1))
    coords = coords_1d(length + 2 * p, x.dtype) if cfg.uses_coords else None
    cand = final_candidates(cand, key, draw, is_sorted, length + 2 * p)
    y = tokens_op(cfg, tokens, coords, np.arange(length) + p, weight, bias, cand, opts)
    out = jnp.transpose(y, (0, 2, 1))
    return pixel_shuffle_1d(jnp, out, s) if s > 1 else out


# ----------------------------------------------------------------------------- select_neighbors
def select_neighbors(feats: Any, cfg: ConvNNConfig = DEFAULT_CONFIG, *, query_feats: Any = None,
                     candidates: Any = None, rng: Any = None,
                     opts: EngineOptions = DEFAULT_OPTIONS) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Neighbour indices [B, N, K] and affinities [B, N, K] for token features [B, N, F] (every token a query).

    With query_feats [B, N, F] the queries are scored with those against feats. The affinities are
    differentiable (recomputed from the features); the indices are not.
    """
    feats, query_feats = as_jax(feats, query_feats)
    if not isinstance(cfg, ConvNNConfig):
        raise TypeError(f"cfg must be a ConvNNConfig, got {type(cfg).__name__}")
    check_ndim("feats", feats, 3, "[B, N, F]")
    check_float_inputs(jnp, feats=feats, query_feats=query_feats)
    check_finite("feats", feats)
    if query_feats is not None:
        check_ndim("query_feats", query_feats, 3, "[B, N, F]")
        if tuple(query_feats.shape) != tuple(feats.shape):
            raise ValueError(f"query_feats has shape {shape_str(query_feats.shape)}; it must match feats "
                             f"{shape_str(feats.shape)}")
        check_finite("query_feats", query_feats)
    b, n, _ = feats.shape
    plan = cands.resolve(cfg, n, np.arange(n), batch=b, candidates=candidates, rng=rng)
    return _select_core(feats, query_feats, plan.indices, plan.key, cfg=cfg, draw=plan.count,
                        is_sorted=plan.sorted, opts=opts)


@partial(jax.jit, static_argnames=("cfg", "draw", "is_sorted", "opts"))
def _select_core(feats, query_feats, cand, key, *, cfg, draw, is_sorted, opts):
    TRACE_COUNTS["select_neighbors"] += 1
    n = feats.shape[1]
    cand = final_candidates(cand, key, draw, is_sorted, n)
    q = feats if query_feats is None else query_feats
    return neighbors(cfg, q, feats, jnp.arange(n, dtype=index_dtype()), cand, opts)
