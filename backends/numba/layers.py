"""ConvNN ops of SPEC.md on NumPy arrays with numba kernels for the heavy parts, differentiable by autograd.

Validation, candidate resolution and the layout helpers are the spec's own (convnn_core); the
selection, slot affinities and gather+taps run in numba (primitives.py). Layout work (padding,
unshuffle, coordinates, softmax over K slots, projections) is autograd NumPy, O(B N C).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from convnn_core import attention as spec_attention
from convnn_core import layers as spec_layers
from convnn_core._xp import check_finite, check_float_inputs, check_ndim, shape_str
from convnn_core.aggregate import check_taps
from convnn_core.candidates import make_rng, resolve_candidates
from convnn_core.config import ConvNNConfig
from convnn_core.selection import check_candidate_count

from .primitives import gather_taps, select_indices, slot_affinity

DEFAULT_CONFIG = ConvNNConfig()


# ----------------------------------------------------------------------------- layout (autograd numpy)
def _pad_2d(x: Any, p: int) -> Any:
    return x if p == 0 else anp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), "constant")


def _pad_1d(x: Any, p: int) -> Any:
    return x if p == 0 else anp.pad(x, ((0, 0), (0, 0), (p, p)), "constant")


def _unshuffle_2d(x: Any, s: int) -> Any:
    b, c, h, w = x.shape
    if h % s or w % s:
        raise ValueError(f"shuffle_scale={s} must divide the map size {h}x{w}")
    x = anp.reshape(x, (b, c, h // s, s, w // s, s))
    return anp.reshape(anp.transpose(x, (0, 1, 3, 5, 2, 4)), (b, c * s * s, h // s, w // s))


def _shuffle_2d(x: Any, s: int) -> Any:
    b, cs, h, w = x.shape
    x = anp.reshape(x, (b, cs // (s * s), s, s, h, w))
    return anp.reshape(anp.transpose(x, (0, 1, 4, 2, 5, 3)), (b, cs // (s * s), h * s, w * s))


def _unshuffle_1d(x: Any, s: int) -> Any:
    b, c, length = x.shape
    if length % s:
        raise ValueError(f"shuffle_scale={s} must divide the sequence length {length}")
    x = anp.reshape(x, (b, c, length // s, s))
    return anp.reshape(anp.transpose(x, (0, 1, 3, 2)), (b, c * s, length // s))


def _shuffle_1d(x: Any, s: int) -> Any:
    b, cs, length = x.shape
    x = anp.reshape(x, (b, cs // s, s, length))
    return anp.reshape(anp.transpose(x, (0, 1, 3, 2)), (b, cs // s, length * s))


def _selection_features(cfg: ConvNNConfig, tokens: Any, coords: Optional[np.ndarray]) -> Any:
    """Features, coordinates, or [blend * f / sigma_b, (1 - blend) * coords] (SPEC.md section 3)."""
    if cfg.select == "feature":
        return tokens
    b, n, c = tokens.shape
    cb = np.broadcast_to(coords[None], (b, n, coords.shape[-1]))
    if cfg.select == "position":
        return np.ascontiguousarray(cb)
    sigma = anp.std(anp.reshape(tokens, (b, n * c)), axis=1, ddof=1) + 1e-6
    return anp.concatenate([cfg.blend * tokens / sigma[:, None, None], (1.0 - cfg.blend) * cb], axis=-1)


def _candidate_rows(cand: Optional[Any], batch: int, n_tokens: int) -> np.ndarray:
    if cand is None:
        return np.broadcast_to(np.arange(n_tokens, dtype=np.int64)[None], (batch, n_tokens))
    cand = np.asarray(cand, dtype=np.int64)
    if cand.ndim == 1:
        cand = np.broadcast_to(cand[None], (batch, cand.shape[0]))
    return cand


def _check_candidate_count(cfg: ConvNNConfig, cand: np.ndarray, queries: np.ndarray) -> None:
    """The spec's rule and message: k slots need enough candidates (one fewer if a query is among them)."""
    self_hit = None
    if cfg.self_first:
        self_hit = np.asarray([bool(np.isin(cand, queries).any())])
    check_candidate_count(np, cfg, self_hit, cand.shape[-1])


# ----------------------------------------------------------------------------- the shared core
def neighbours_and_weights(cfg: ConvNNConfig, q_sel: Any, k_sel: Any, queries: np.ndarray, cand: np.ndarray,
                           heads: int, *, want_affinity: bool = False) -> tuple[np.ndarray, Any, Any]:
    """Ordered indices [B, H, Nq, K], rho [B, H, Nq, K] or None, and (if asked) the ordered affinities.

    q_sel [B, Nq, F] are the queries' selection features, or None when they are the rows `queries` of
    k_sel [B, N, F] (the maps: queries are tokens of the same raster).
    """
    _check_candidate_count(cfg, cand, queries)
    k_raw = np.ascontiguousarray(getval(k_sel))
    if q_sel is None:
        idx = select_indices(k_raw, queries, k_raw, cand, queries, heads, cfg.metric, cfg.k, cfg.self_first)
    else:
        q_raw = np.asarray(getval(q_sel))
        idx = select_indices(q_raw, np.arange(q_raw.shape[1]), k_raw, cand, queries, heads, cfg.metric, cfg.k,
                             cfg.self_first)
    self_slot = None
    if cfg.softmax_self_logit is not None:
        self_slot = np.zeros(idx.shape, dtype=bool)
        self_slot[..., 0] = True
    if cfg.order == "position":
        perm = np.argsort(idx, axis=-1, kind="stable")
        idx = np.take_along_axis(idx, perm, axis=-1)
        if self_slot is not None:
            self_slot = np.take_along_axis(self_slot, perm, axis=-1)
    need_aff = want_affinity or cfg.weighting == "softmax"
    aff = None
    if need_aff:
        aff = slot_affinity(k_sel[:, queries, :] if q_sel is None else q_sel, k_sel, idx, cfg.metric)
    rho = None
    if cfg.weighting == "softmax":
        logits = aff if self_slot is None else anp.where(self_slot, cfg.softmax_self_logit, aff)
        shifted = logits - anp.max(logits, axis=-1, keepdims=True)
        e = anp.exp(shifted)
        rho = e / anp.sum(e, axis=-1, keepdims=True)
    return idx, rho, aff


def _tokens_op(cfg: ConvNNConfig, tokens: Any, coords: Optional[np.ndarray], queries: np.ndarray,
               weight: Any, bias: Optional[Any], cand: Optional[Any]) -> Any:
    """The op on a padded token raster [B, N', C]: y [B, Nq, O]."""
    b, n, c = tokens.shape
    dtype = np.asarray(getval(tokens)).dtype
    coords = None if coords is None else coords.astype(dtype, copy=False)
    values = tokens
    if cfg.aggregate_coords:
        values = anp.concatenate([tokens, np.broadcast_to(coords[None], (b, n, coords.shape[-1]))], axis=-1)
    check_taps(cfg.taps, np.asarray(getval(weight)), None if bias is None else np.asarray(getval(bias)),
               values.shape[-1], cfg.k)
    sel = _selection_features(cfg, tokens, coords)
    idx, rho, _ = neighbours_and_weights(cfg, None, sel, queries, _candidate_rows(cand, b, n), 1)
    y = gather_taps(values, idx, rho, weight, cfg.taps)
    if bias is not None:
        y = y + bias
    return y


def _check_inputs(x: Any, weight: Any, bias: Optional[Any], cfg: ConvNNConfig, ndim: int, layout: str) -> None:
    if not isinstance(cfg, ConvNNConfig):
        raise TypeError(f"cfg must be a ConvNNConfig, got {type(cfg).__name__}")
    raw_x = np.asarray(getval(x))
    check_ndim("x", raw_x, ndim, layout)
    raw_b = None if bias is None else np.asarray(getval(bias))
    check_float_inputs(np, x=raw_x, weight=np.asarray(getval(weight)), bias=raw_b)
    check_finite(np, "x", raw_x)


# ----------------------------------------------------------------------------- public ops
def convnn2d(x: Any, weight: Any, bias: Optional[Any] = None, cfg: ConvNNConfig = DEFAULT_CONFIG, *,
             candidates: Any = None, rng: Any = None) -> Any:
    """ConvNN on an NCHW map: y [B, O, H, W] (SPEC.md); differentiable in x, weight and bias by autograd."""
    _check_inputs(x, weight, bias, cfg, 4, "[B, C, H, W]")
    s = cfg.shuffle_scale
    if s > 1:
        x = _unshuffle_2d(x, s)
    b, c, h, w = x.shape
    p = cfg.padding
    hp, wp = h + 2 * p, w + 2 * p
    raw = np.asarray(getval(x))
    tokens = anp.reshape(anp.transpose(_pad_2d(x, p), (0, 2, 3, 1)), (b, hp * wp, c))
    coords = spec_layers.coords_2d(np, hp, wp, raw) if cfg.uses_coords else None
    queries = spec_layers.interior_tokens(np, h, w, p, raw)
    cand = resolve_candidates(np, cfg, hp * wp, raw, batch=b, grid=(h, w), candidates=candidates, rng=rng)
    y = _tokens_op(cfg, tokens, coords, queries, weight, bias, cand)
    out = anp.reshape(anp.transpose(y, (0, 2, 1)), (b, y.shape[-1], h, w))
    if s > 1:
        spec_layers.check_shuffle_channels(out.shape[1], s, 2)
        out = _shuffle_2d(out, s)
    return out


def convnn1d(x: Any, weight: Any, bias: Optional[Any] = None, cfg: ConvNNConfig = DEFAULT_CONFIG, *,
             candidates: Any = None, rng: Any = None) -> Any:
    """ConvNN on a [B, C, L] sequence: y [B, O, L]; one coordinate channel when coordinates are used."""
    _check_inputs(x, weight, bias, cfg, 3, "[B, C, L]")
    s = cfg.shuffle_scale
    if s > 1:
        x = _unshuffle_1d(x, s)
    b, c, length = x.shape
    p = cfg.padding
    lp = length + 2 * p
    raw = np.asarray(getval(x))
    tokens = anp.transpose(_pad_1d(x, p), (0, 2, 1))
    coords = spec_layers.coords_1d(np, lp, raw) if cfg.uses_coords else None
    queries = np.arange(length, dtype=np.int64) + p
    cand = resolve_candidates(np, cfg, lp, raw, batch=b, length=length, candidates=candidates, rng=rng)
    y = _tokens_op(cfg, tokens, coords, queries, weight, bias, cand)
    out = anp.transpose(y, (0, 2, 1))
    if s > 1:
        spec_layers.check_shuffle_channels(out.shape[1], s, 1)
        out = _shuffle_1d(out, s)
    return out


def select_neighbors(feats: Any, cfg: ConvNNConfig = DEFAULT_CONFIG, *, query_feats: Any = None,
                     candidates: Any = None, rng: Any = None) -> tuple[np.ndarray, Any]:
    """Neighbour indices [B, N, K] (int64) and affinities [B, N, K] in cfg.order, for features [B, N, F]."""
    raw = np.asarray(getval(feats))
    check_ndim("feats", raw, 3, "[B, N, F]")
    raw_q = None if query_feats is None else np.asarray(getval(query_feats))
    check_float_inputs(np, feats=raw, query_feats=raw_q)
    check_finite(np, "feats", raw)
    if query_feats is None:
        query_feats = feats
    else:
        check_ndim("query_feats", raw_q, 3, "[B, N, F]")
        if raw_q.shape != raw.shape:
            raise ValueError(
                f"query_feats has shape {shape_str(raw_q.shape)}; it must match feats {shape_str(raw.shape)}"
            )
        check_finite(np, "query_feats", raw_q)
    b, n, _ = raw.shape
    queries = np.arange(n, dtype=np.int64)
    cand = resolve_candidates(np, cfg, n, raw, batch=b, candidates=candidates, rng=rng)
    idx, _, aff = neighbours_and_weights(cfg, query_feats, feats, queries, _candidate_rows(cand, b, n), 1,
                                         want_affinity=True)
    return idx[:, 0], aff[:, 0]


def convnn_attention(x: Any, params: Mapping[str, Any], cfg: Optional[ConvNNConfig] = None, *, heads: int = 1,
                     dropout: float = 0.0, candidates: Any = None, rng: Any = None, train: bool = False) -> Any:
    """ConvNN attention on x [B, N, D] (SPEC.md section 5): per-head top-K selection, softmax rho, taps, wo."""
    cfg = spec_attention.resolve_attention_config(cfg)
    plain = getval(params)
    raw_params = {k: np.asarray(getval(v)) for k, v in plain.items()} if isinstance(plain, Mapping) else plain
    raw_x = np.asarray(getval(x))
    d = spec_attention.check_projections(np, raw_x, raw_params, heads)
    spec_attention.check_attention_taps(np, raw_x, raw_params, cfg, d)
    active = spec_attention.check_dropout(dropout, train, rng)
    gen = make_rng(rng) if rng is not None else None
    b, n, _ = raw_x.shape
    q = _project(x, params["wq"])
    k = _project(x, params["wk"])
    v = _project(x, params["wv"])
    cand = resolve_candidates(np, cfg, n, raw_x, batch=b, candidates=candidates, rng=gen)
    queries = np.arange(n, dtype=np.int64)
    idx, rho, _ = neighbours_and_weights(cfg, q, k, queries, _candidate_rows(cand, b, n), heads)
    y = gather_taps(v, idx, rho, params["taps"], cfg.taps)
    if active:
        keep = gen.random(tuple(y.shape)) >= dropout
        y = y * (keep.astype(np.float64) / (1.0 - dropout)).astype(raw_x.dtype)
    return _project(y, params["wo"])


def _project(x: Any, w: Any) -> Any:
    """x [B, N, D] @ w.T as one 2-D product (autograd's VJP of a batched 3-D matmul is many times slower)."""
    b, n, d = x.shape
    return anp.reshape(anp.dot(anp.reshape(x, (b * n, d)), anp.transpose(w)), (b, n, w.shape[0]))
