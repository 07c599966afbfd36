"""The ConvNN ops of SPEC.md on torch tensors: convnn2d, convnn1d, convnn_attention and select_neighbors.

The lean path: selection under no_grad (exact, chunked), only the K selected affinities recomputed
with autograd when softmax weighting needs them, and one gather-and-taps op that never builds the
whole [B, Nq, K, C] tensor. Validation reuses the spec's checks so the error messages are the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import array_api_compat.torch as xp
import torch
import torch.nn.functional as F

from convnn_core import _xp as spec_xp
from convnn_core.aggregate import check_taps
from convnn_core.attention import (
    PROJECTIONS,
    check_attention_taps,
    check_dropout,
    check_projections,
    resolve_attention_config,
)
from convnn_core.candidates import resolve_candidates
from convnn_core.config import ConvNNConfig
from convnn_core.layers import check_shuffle_channels

from . import ops
from .rng import TorchRngKey, as_host_rng, dropout_mask
from .selection import check_available, gather_rows, paired_affinity

DEFAULT_CONFIG = ConvNNConfig()


@dataclass(frozen=True)
class RunOptions:
    """How the ops run: deterministic backward, the fused CUDA kernel, input checks (finite values)."""

    deterministic: bool = False
    fused: bool = True
    check_inputs: bool = True


DEFAULT_OPTIONS = RunOptions()


def _compiling() -> bool:
    return bool(torch.compiler.is_compiling())


def _check_common(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], cfg: Any,
                  opts: RunOptions) -> None:
    if not isinstance(cfg, ConvNNConfig):
        raise TypeError(f"cfg must be a ConvNNConfig, got {type(cfg).__name__}")
    spec_xp.check_float_inputs(xp, x=x, weight=weight, bias=bias)
    if opts.check_inputs and not _compiling():
        spec_xp.check_finite(xp, "x", x)


def linspace_like_numpy(n: int, like: torch.Tensor) -> torch.Tensor:
    """linspace(-1, 1, n) computed as NumPy does (float64 start + i * step, last point exact), cast to like's dtype.

    torch.linspace rounds differently in the last bit, which would break exact coordinate ties differently.
    """
    if n == 1:
        pts = torch.full((1,), -1.0, dtype=torch.float64, device=like.device)
    else:
        pts = torch.arange(n, dtype=torch.float64, device=like.device) * (2.0 / (n - 1)) + (-1.0)
        pts[-1] = 1.0
    return pts.to(like.dtype)


def coords_2d(hp: int, wp: int, like: torch.Tensor) -> torch.Tensor:
    """[Hp*Wp, 2] padded-raster coordinates: x = linspace(-1, 1, Wp)[col], y = linspace(-1, 1, Hp)[row]."""
    xs = linspace_like_numpy(wp, like)
    ys = linspace_like_numpy(hp, like)
    return torch.stack([xs[None, :].expand(hp, wp).reshape(-1), ys[:, None].expand(hp, wp).reshape(-1)], dim=-1)


def coords_1d(lp: int, like: torch.Tensor) -> torch.Tensor:
    """[Lp, 1] coordinates linspace(-1, 1, Lp)."""
    return linspace_like_numpy(lp, like)[:, None]


def selection_features(cfg: ConvNNConfig, tokens: torch.Tensor, coords: Optional[torch.Tensor]) -> torch.Tensor:
    """Features, coordinates, or [blend * f / sigma_b, (1 - blend) * coords] with sigma_b the unbiased std + 1e-6."""
    if cfg.select == "feature":
        return tokens
    b, n, _ = tokens.shape
    cb = coords[None].expand(b, n, coords.shape[-1])
    if cfg.select == "position":
        return cb
    sigma = torch.std(tokens.reshape(b, -1), dim=1, correction=1) + 1e-6
    return torch.cat([cfg.blend * tokens / sigma[:, None, None], (1.0 - cfg.blend) * cb], dim=-1)


def softmax_weights(cfg: ConvNNConfig, aff: torch.Tensor) -> torch.Tensor:
    """rho: softmax over the K slots; slot 0 uses cfg.self_logit when it applies."""
    self_logit = cfg.softmax_self_logit
    if self_logit is not None:
        aff = torch.cat([torch.full_like(aff[..., :1], self_logit), aff[..., 1:]], dim=-1)
    return torch.softmax(aff, dim=-1)


def neighbours_and_weights(cfg: ConvNNConfig, query_sel: torch.Tensor, key_sel: torch.Tensor,
                           queries: torch.Tensor, cand: Optional[torch.Tensor], dtype: torch.dtype
                           ) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """(idx, rho or None, affinities) in the order cfg asks for; rho keeps its autograd path to the features."""
    idx, aff = ops.select_topk(query_sel, key_sel, queries, cand, cfg.k, cfg.metric, cfg.self_first)
    rho = None
    if cfg.weighting == "softmax":
        needs_grad = torch.is_grad_enabled() and (query_sel.requires_grad or key_sel.requires_grad)
        if needs_grad:
            aff = paired_affinity(cfg.metric, query_sel, gather_rows(key_sel, idx))
        rho = softmax_weights(cfg, aff.to(dtype))
    if cfg.order == "position":
        idx, perm = torch.sort(idx, dim=-1, stable=True)
        aff = torch.gather(aff, -1, perm)
        if rho is not None:
            rho = torch.gather(rho, -1, perm)
    return idx, rho, aff


def _tokens_op(cfg: ConvNNConfig, tokens: torch.Tensor, coords: Optional[torch.Tensor], queries: torch.Tensor,
               weight: torch.Tensor, bias: Optional[torch.Tensor], cand: Optional[torch.Tensor],
               opts: RunOptions) -> torch.Tensor:
    """y [B, Nq, O] for a padded token raster tokens [B, N', C]."""
    b, n, _ = tokens.shape
    values = tokens
    if cfg.aggregate_coords:
        values = torch.cat([tokens, coords[None].expand(b, n, coords.shape[-1])], dim=-1)
    check_taps(cfg.taps, weight, bias, values.shape[-1], cfg.k)
    check_available(cfg.k, cfg.self_first, queries, cand, n)
    sel = selection_features(cfg, tokens, coords)
    query_sel = sel.index_select(1, queries)
    values = values.contiguous()
    if (opts.fused and cand is None and cfg.weighting == "none" and cfg.order == "rank" and values.is_cuda):
        y, _ = ops.fused_convnn(query_sel.contiguous(), sel.contiguous(), values, queries, weight, bias, cfg.k,
                                cfg.metric, cfg.self_first, cfg.taps, opts.deterministic)
        return y
    idx, rho, _ = neighbours_and_weights(cfg, query_sel, sel, queries, cand, values.dtype)
    return ops.gather_taps(values, idx, rho, weight, bias, cfg.taps, opts.deterministic)


def _candidates(cfg: ConvNNConfig, n_tokens: int, like: torch.Tensor, batch: int, candidates: Any, rng: Any,
                **where: Any) -> Optional[torch.Tensor]:
    return resolve_candidates(xp, cfg, n_tokens, like, batch=batch, candidates=candidates,
                              rng=as_host_rng(rng), **where)


def convnn2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
             cfg: ConvNNConfig = DEFAULT_CONFIG, *, candidates: Any = None, rng: Any = None,
             options: RunOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """ConvNN on an NCHW map (SPEC.md): y [B, O, H, W]; weight [O, C_agg, K] or depthwise [C_agg, K]."""
    spec_xp.check_ndim("x", x, 4, "[B, C, H, W]")
    _check_common(x, weight, bias, cfg, options)
    s = cfg.shuffle_scale
    if s > 1:
        if x.shape[2] % s or x.shape[3] % s:
            raise ValueError(f"shuffle_scale={s} must divide the map size {x.shape[2]}x{x.shape[3]}")
        x = F.pixel_unshuffle(x, s)
    b, c, h, w = x.shape
    p = cfg.padding
    hp, wp = h + 2 * p, w + 2 * p
    padded = F.pad(x, (p, p, p, p)) if p else x
    tokens = padded.reshape(b, c, hp * wp).transpose(1, 2)
    coords = coords_2d(hp, wp, x) if cfg.uses_coords else None
    rows = torch.arange(h, device=x.device) + p
    cols = torch.arange(w, device=x.device) + p
    queries = (rows[:, None] * wp + cols[None, :]).reshape(-1)
    cand = _candidates(cfg, hp * wp, x, b, candidates, rng, grid=(h, w))
    y = _tokens_op(cfg, tokens, coords, queries, weight, bias, cand, options)
    out = y.transpose(1, 2).reshape(b, y.shape[-1], h, w)
    if s > 1:
        check_shuffle_channels(out.shape[1], s, 2)
        out = F.pixel_shuffle(out, s)
    return out


def _unshuffle_1d(x: torch.Tensor, s: int) -> torch.Tensor:
    b, c, length = x.shape
    if length % s:
        raise ValueError(f"shuffle_scale={s} must divide the sequence length {length}")
    return x.reshape(b, c, length // s, s).permute(0, 1, 3, 2).reshape(b, c * s, length // s)


def _shuffle_1d(x: torch.Tensor, s: int) -> torch.Tensor:
    b, cs, length = x.shape
    return x.reshape(b, cs // s, s, length).permute(0, 1, 3, 2).reshape(b, cs // s, length * s)


def convnn1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
             cfg: ConvNNConfig = DEFAULT_CONFIG, *, candidates: Any = None, rng: Any = None,
             options: RunOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """ConvNN on [B, C, L] (SPEC.md): y [B, O, L]; one coordinate channel when coordinates are used."""
    spec_xp.check_ndim("x", x, 3, "[B, C, L]")
    _check_common(x, weight, bias, cfg, options)
    s = cfg.shuffle_scale
    if s > 1:
        x = _unshuffle_1d(x, s)
    b, c, length = x.shape
    p = cfg.padding
    lp = length + 2 * p
    tokens = (F.pad(x, (p, p)) if p else x).transpose(1, 2)
    coords = coords_1d(lp, x) if cfg.uses_coords else None
    queries = torch.arange(length, device=x.device) + p
    cand = _candidates(cfg, lp, x, b, candidates, rng, length=length)
    y = _tokens_op(cfg, tokens, coords, queries, weight, bias, cand, options)
    out = y.transpose(1, 2)
    if s > 1:
        check_shuffle_channels(out.shape[1], s, 1)
        out = _shuffle_1d(out, s)
    return out


def select_neighbors(feats: torch.Tensor, cfg: ConvNNConfig = DEFAULT_CONFIG, *,
                     query_feats: Optional[torch.Tensor] = None, candidates: Any = None, rng: Any = None,
                     options: RunOptions = DEFAULT_OPTIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour indices [B, N, K] (int64) and affinities [B, N, K] for token features [B, N, F]."""
    spec_xp.check_ndim("feats", feats, 3, "[B, N, F]")
    spec_xp.check_float_inputs(xp, feats=feats, query_feats=query_feats)
    checking = options.check_inputs and not _compiling()
    if checking:
        spec_xp.check_finite(xp, "feats", feats)
    if query_feats is None:
        query_feats = feats
    else:
        spec_xp.check_ndim("query_feats", query_feats, 3, "[B, N, F]")
        if tuple(query_feats.shape) != tuple(feats.shape):
            raise ValueError(
                f"query_feats has shape {spec_xp.shape_str(query_feats.shape)}; it must match feats "
                f"{spec_xp.shape_str(feats.shape)}"
            )
        if checking:
            spec_xp.check_finite(xp, "query_feats", query_feats)
    b, n, _ = feats.shape
    queries = torch.arange(n, device=feats.device)
    cand = _candidates(cfg, n, feats, b, candidates, rng)
    check_available(cfg.k, cfg.self_first, queries, cand, n)
    idx, aff = ops.select_topk(query_feats, feats, queries, cand, cfg.k, cfg.metric, cfg.self_first)
    if torch.is_grad_enabled() and (feats.requires_grad or query_feats.requires_grad):
        aff = paired_affinity(cfg.metric, query_feats, gather_rows(feats, idx))
    else:
        aff = aff.to(feats.dtype)
    if cfg.order == "position":
        idx, perm = torch.sort(idx, dim=-1, stable=True)
        aff = torch.gather(aff, -1, perm)
    return idx, aff


# ----------------------------------------------------------------------------- attention
def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, D] -> [B*h, N, D/h]."""
    b, n, d = t.shape
    return t.reshape(b, n, heads, d // heads).transpose(1, 2).reshape(b * heads, n, d // heads)


def merge_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B*h, N, d] -> [B, N, h*d]."""
    bh, n, dh = t.shape
    return t.reshape(bh // heads, heads, n, dh).transpose(1, 2).reshape(bh // heads, n, heads * dh)


def convnn_attention(x: torch.Tensor, params: Mapping[str, torch.Tensor], cfg: Optional[ConvNNConfig] = None, *,
                     heads: int = 1, dropout: float = 0.0, candidates: Any = None, rng: Any = None,
                     train: bool = False, options: RunOptions = DEFAULT_OPTIONS) -> torch.Tensor:
    """ConvNN attention on [B, N, D] (SPEC.md section 5): q selects K keys, softmax-weighted v, taps, dropout, wo."""
    cfg = resolve_attention_config(cfg)
    d = _check_attention_inputs(x, params, heads, options)
    check_attention_taps(xp, x, params, cfg, d)
    taps = params["taps"]
    active = check_dropout(dropout, train, rng)
    host_rng = as_host_rng(rng)
    b, n, _ = x.shape
    qh = split_heads(F.linear(x, params["wq"]), heads)
    kh = split_heads(F.linear(x, params["wk"]), heads)
    vh = split_heads(F.linear(x, params["wv"]), heads).contiguous()
    cand = resolve_candidates(xp, cfg, n, x, batch=b, candidates=candidates, rng=host_rng)
    if cand is not None and cand.ndim == 2 and heads > 1:
        cand = cand[:, None, :].expand(b, heads, cand.shape[-1]).reshape(b * heads, -1)
    queries = torch.arange(n, device=x.device)
    check_available(cfg.k, cfg.self_first, queries, cand, n)
    idx, rho, _ = neighbours_and_weights(cfg, qh, kh, queries, cand, x.dtype)
    if cfg.taps == "depthwise":
        w = taps if heads == 1 else taps.reshape(heads, d // heads, cfg.k)
        y = merge_heads(ops.gather_taps(vh, idx, rho, w, None, "depthwise", options.deterministic), heads)
    else:
        g = gather_rows(vh, idx)  # [B*h, N, K, dh]; full taps mix heads, so heads are joined
        if rho is not None:
            g = g * rho[..., None]
        g = g.reshape(b, heads, n, cfg.k, d // heads).permute(0, 2, 3, 1, 4).reshape(b, n, cfg.k * d)
        y = g @ taps.permute(2, 1, 0).reshape(cfg.k * d, d)
    if active:
        y = y * dropout_mask(y, float(dropout), rng if isinstance(rng, TorchRngKey) else host_rng)
    return F.linear(y, params["wo"])


def _check_attention_inputs(x: torch.Tensor, params: Mapping[str, torch.Tensor], heads: int,
                            options: RunOptions) -> int:
    if options.check_inputs and not _compiling():
        return check_projections(xp, x, params, heads)
    if not isinstance(params, Mapping) or any(k not in params for k in PROJECTIONS):
        raise ValueError(f"params must be a dict with keys {', '.join(PROJECTIONS)}")
    d = x.shape[-1]
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or d % heads:
        raise ValueError(f"heads={heads!r} must be a positive int that divides the width D={d}")
    return d
