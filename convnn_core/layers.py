"""The ConvNN ops on maps and sequences (SPEC.md sections 2-4): convnn2d, convnn1d and select_neighbors."""
from __future__ import annotations

from typing import Any, Optional

from ._xp import check_finite, check_float_inputs, check_ndim, device, namespace, shape_str, take_rows
from .aggregate import aggregate, check_taps
from .candidates import RngLike, resolve_candidates
from .config import ConvNNConfig
from .selection import apply_order, neighbor_weights, select_ranked

DEFAULT_CONFIG = ConvNNConfig()


# ----------------------------------------------------------------------------- layout helpers
def pad_2d(xp: Any, x: Any, p: int) -> Any:
    """Zero-pad [B, C, H, W] by p on all four sides."""
    if p == 0:
        return x
    b, c, h, w = x.shape
    zr = xp.zeros((b, c, p, w), dtype=x.dtype, device=device(x))
    x = xp.concat([zr, x, zr], axis=2)
    zc = xp.zeros((b, c, h + 2 * p, p), dtype=x.dtype, device=device(x))
    return xp.concat([zc, x, zc], axis=3)


def pad_1d(xp: Any, x: Any, p: int) -> Any:
    """Zero-pad [B, C, L] by p on both ends."""
    if p == 0:
        return x
    b, c, _ = x.shape
    z = xp.zeros((b, c, p), dtype=x.dtype, device=device(x))
    return xp.concat([z, x, z], axis=2)


def coords_2d(xp: Any, hp: int, wp: int, like: Any) -> Any:
    """[Hp*Wp, 2] coordinates of the padded raster: x = linspace(-1, 1, Wp)[col], then y likewise over rows."""
    xs = _linspace(xp, wp, like)
    ys = _linspace(xp, hp, like)
    cx = xp.reshape(xp.broadcast_to(xs[None, :], (hp, wp)), (hp * wp,))
    cy = xp.reshape(xp.broadcast_to(ys[:, None], (hp, wp)), (hp * wp,))
    return xp.stack([cx, cy], axis=-1)


def coords_1d(xp: Any, lp: int, like: Any) -> Any:
    """[Lp, 1] coordinates of a padded sequence: linspace(-1, 1, Lp)."""
    return _linspace(xp, lp, like)[:, None]


def _linspace(xp: Any, n: int, like: Any) -> Any:
    """linspace(-1, 1, n) computed once on the host in float64, then cast: every namespace gets the same
    bits (torch.linspace rounds differently, which would break exact coordinate ties differently)."""
    import numpy as np

    return xp.asarray(np.linspace(-1.0, 1.0, n), dtype=like.dtype, device=device(like))


def pixel_unshuffle(xp: Any, x: Any, s: int) -> Any:
    """[B, C, H, W] -> [B, C*s*s, H/s, W/s] with channel c*s*s + i*s + j holding pixel (h*s+i, w*s+j)."""
    b, c, h, w = x.shape
    if h % s or w % s:
        raise ValueError(f"shuffle_scale={s} must divide the map size {h}x{w}")
    x = xp.reshape(x, (b, c, h // s, s, w // s, s))
    x = xp.permute_dims(x, (0, 1, 3, 5, 2, 4))
    return xp.reshape(x, (b, c * s * s, h // s, w // s))


def pixel_shuffle(xp: Any, x: Any, s: int) -> Any:
    """The inverse of pixel_unshuffle: [B, C*s*s, H, W] -> [B, C, H*s, W*s]."""
    b, cs, h, w = x.shape
    c = cs // (s * s)
    x = xp.reshape(x, (b, c, s, s, h, w))
    x = xp.permute_dims(x, (0, 1, 4, 2, 5, 3))
    return xp.reshape(x, (b, c, h * s, w * s))


def pixel_unshuffle_1d(xp: Any, x: Any, s: int) -> Any:
    """[B, C, L] -> [B, C*s, L/s] with channel c*s + m holding token t*s + m."""
    b, c, length = x.shape
    if length % s:
        raise ValueError(f"shuffle_scale={s} must divide the sequence length {length}")
    x = xp.reshape(x, (b, c, length // s, s))
    return xp.reshape(xp.permute_dims(x, (0, 1, 3, 2)), (b, c * s, length // s))


def pixel_shuffle_1d(xp: Any, x: Any, s: int) -> Any:
    """The inverse of pixel_unshuffle_1d: [B, C*s, L] -> [B, C, L*s]."""
    b, cs, length = x.shape
    x = xp.reshape(x, (b, cs // s, s, length))
    return xp.reshape(xp.permute_dims(x, (0, 1, 3, 2)), (b, cs // s, length * s))


def check_shuffle_channels(out_channels: int, scale: int, dims: int) -> None:
    """With shuffle_scale s the op's output channels must split into s**dims sub-pixels (dims 2 or 1)."""
    factor = scale ** dims
    if scale > 1 and out_channels % factor:
        raise ValueError(
            f"weight has {out_channels} output channels; with shuffle_scale={scale} it must be a multiple of {factor}"
        )


def selection_features(xp: Any, cfg: ConvNNConfig, tokens: Any, coords: Optional[Any]) -> Any:
    """What drives selection: features, coordinates, or [blend * f / sigma_b, (1 - blend) * coords]."""
    if cfg.select == "feature":
        return tokens
    b, n, c = tokens.shape
    cb = xp.broadcast_to(coords[None, :, :], (b, n, coords.shape[-1]))
    if cfg.select == "position":
        return cb
    flat = xp.reshape(tokens, (b, n * c))
    sigma = xp.std(flat, axis=1, correction=1) + 1e-6
    return xp.concat([cfg.blend * tokens / sigma[:, None, None], (1.0 - cfg.blend) * cb], axis=-1)


def interior_tokens(xp: Any, h: int, w: int, p: int, like: Any) -> Any:
    """Padded-raster token indices of the H*W interior pixels, row-major."""
    rows = xp.arange(h, dtype=xp.int64, device=device(like)) + p
    cols = xp.arange(w, dtype=xp.int64, device=device(like)) + p
    return xp.reshape(rows[:, None] * (w + 2 * p) + cols[None, :], (h * w,))


def _convnn_tokens(
    xp: Any,
    cfg: ConvNNConfig,
    tokens: Any,
    coords: Optional[Any],
    queries: Any,
    weight: Any,
    bias: Optional[Any],
    cand: Optional[Any],
) -> Any:
    """The op on a padded token raster [B, N', C]: select for the query tokens, weigh, order, aggregate."""
    b, n, c = tokens.shape
    values = tokens
    if cfg.aggregate_coords:
        values = xp.concat([tokens, xp.broadcast_to(coords[None, :, :], (b, n, coords.shape[-1]))], axis=-1)
    check_taps(cfg.taps, weight, bias, values.shape[-1], cfg.k)
    sel = selection_features(xp, cfg, tokens, coords)
    query_rows = xp.broadcast_to(queries[None, :], (b, queries.shape[0]))
    idx, aff = select_ranked(xp, cfg, take_rows(xp, sel, query_rows), sel, queries, cand)
    rho = neighbor_weights(xp, cfg, aff)
    idx, rho = apply_order(xp, cfg, idx, rho)
    return aggregate(xp, cfg.taps, values, idx, rho, weight, bias)


def _check_common(xp: Any, x: Any, weight: Any, bias: Optional[Any], cfg: ConvNNConfig) -> None:
    if not isinstance(cfg, ConvNNConfig):
        raise TypeError(f"cfg must be a ConvNNConfig, got {type(cfg).__name__}")
    check_float_inputs(xp, x=x, weight=weight, bias=bias)
    check_finite(xp, "x", x)


# ----------------------------------------------------------------------------- public ops
def convnn2d(
    x: Any,
    weight: Any,
    bias: Optional[Any] = None,
    cfg: ConvNNConfig = DEFAULT_CONFIG,
    *,
    candidates: Any = None,
    rng: RngLike = None,
) -> Any:
    """ConvNN on an NCHW map: y [B, O, H, W]; weight [O, C_agg, K] (full) or [C_agg, K] (depthwise).

    candidates are explicit token indices into the padded raster ([S] or [B, S]); rng draws them
    for sampling='random' when none are given.
    """
    xp = namespace(x, weight, bias)
    check_ndim("x", x, 4, "[B, C, H, W]")
    _check_common(xp, x, weight, bias, cfg)
    s = cfg.shuffle_scale
    if s > 1:
        x = pixel_unshuffle(xp, x, s)
    b, c, h, w = x.shape
    p = cfg.padding
    hp, wp = h + 2 * p, w + 2 * p
    tokens = xp.reshape(xp.permute_dims(pad_2d(xp, x, p), (0, 2, 3, 1)), (b, hp * wp, c))
    coords = coords_2d(xp, hp, wp, x) if cfg.uses_coords else None
    queries = interior_tokens(xp, h, w, p, x)
    cand = resolve_candidates(xp, cfg, hp * wp, x, batch=b, grid=(h, w), candidates=candidates, rng=rng)
    y = _convnn_tokens(xp, cfg, tokens, coords, queries, weight, bias, cand)
    out = xp.reshape(xp.permute_dims(y, (0, 2, 1)), (b, y.shape[-1], h, w))
    if s > 1:
        check_shuffle_channels(out.shape[1], s, 2)
        out = pixel_shuffle(xp, out, s)
    return out


def convnn1d(
    x: Any,
    weight: Any,
    bias: Optional[Any] = None,
    cfg: ConvNNConfig = DEFAULT_CONFIG,
    *,
    candidates: Any = None,
    rng: RngLike = None,
) -> Any:
    """ConvNN on a [B, C, L] sequence: y [B, O, L]; one coordinate channel when coordinates are used."""
    xp = namespace(x, weight, bias)
    check_ndim("x", x, 3, "[B, C, L]")
    _check_common(xp, x, weight, bias, cfg)
    s = cfg.shuffle_scale
    if s > 1:
        x = pixel_unshuffle_1d(xp, x, s)
    b, c, length = x.shape
    p = cfg.padding
    lp = length + 2 * p
    tokens = xp.permute_dims(pad_1d(xp, x, p), (0, 2, 1))
    coords = coords_1d(xp, lp, x) if cfg.uses_coords else None
    queries = xp.arange(length, dtype=xp.int64, device=device(x)) + p
    cand = resolve_candidates(xp, cfg, lp, x, batch=b, length=length, candidates=candidates, rng=rng)
    y = _convnn_tokens(xp, cfg, tokens, coords, queries, weight, bias, cand)
    out = xp.permute_dims(y, (0, 2, 1))
    if s > 1:
        check_shuffle_channels(out.shape[1], s, 1)
        out = pixel_shuffle_1d(xp, out, s)
    return out


def select_neighbors(
    feats: Any,
    cfg: ConvNNConfig = DEFAULT_CONFIG,
    *,
    query_feats: Any = None,
    candidates: Any = None,
    rng: RngLike = None,
) -> tuple[Any, Any]:
    """Neighbour indices [B, N, K] (int64) and affinities [B, N, K] for token features [B, N, F].

    Every token is a query; with query_feats [B, N, F] the queries are scored with those features
    against feats (attention's q against k), else feats against feats. The slots follow cfg.order.
    """
    xp = namespace(feats, query_feats)
    check_ndim("feats", feats, 3, "[B, N, F]")
    check_float_inputs(xp, feats=feats, query_feats=query_feats)
    check_finite(xp, "feats", feats)
    if query_feats is None:
        query_feats = feats
    else:
        check_ndim("query_feats", query_feats, 3, "[B, N, F]")
        if tuple(query_feats.shape) != tuple(feats.shape):
            raise ValueError(
                f"query_feats has shape {shape_str(query_feats.shape)}; it must match feats {shape_str(feats.shape)}"
            )
        check_finite(xp, "query_feats", query_feats)
    b, n, _ = feats.shape
    queries = xp.arange(n, dtype=xp.int64, device=device(feats))
    cand = resolve_candidates(xp, cfg, n, feats, batch=b, candidates=candidates, rng=rng)
    idx, aff = select_ranked(xp, cfg, query_feats, feats, queries, cand)
    idx, aff = apply_order(xp, cfg, idx, aff)
    return idx, aff
