"""The ConvNN ops on maps and sequences (SPEC.md sections 2-4): convnn2d, convnn1d and select_neighbors."""
from __future__ import annotations

from typing import Any, Optional

from . import layout, pipeline
from ._xp import device, namespace
from .candidates import RngLike
from .config import ConvNNConfig
from .spec_kernels import SpecKernels

DEFAULT_CONFIG = ConvNNConfig()


# ----------------------------------------------------------------------------- layout helpers (kept for callers)
def _zeros(xp: Any, like: Any) -> Any:
    return lambda shape: xp.zeros(shape, dtype=like.dtype, device=device(like))


def pad_2d(xp: Any, x: Any, p: int) -> Any:
    """Zero-pad [B, C, H, W] by p on all four sides."""
    return layout.pad(xp, x, p, _zeros(xp, x))


def pad_1d(xp: Any, x: Any, p: int) -> Any:
    """Zero-pad [B, C, L] by p on both ends."""
    return layout.pad(xp, x, p, _zeros(xp, x))


def coords_2d(xp: Any, hp: int, wp: int, like: Any) -> Any:
    """[Hp*Wp, 2] coordinates of the padded raster: x = linspace(-1, 1, Wp)[col], then y over rows."""
    return xp.asarray(layout.coordinates((hp, wp)), dtype=like.dtype, device=device(like))


def coords_1d(xp: Any, lp: int, like: Any) -> Any:
    """[Lp, 1] coordinates of a padded sequence: linspace(-1, 1, Lp)."""
    return xp.asarray(layout.coordinates((lp,)), dtype=like.dtype, device=device(like))


def pixel_unshuffle(xp: Any, x: Any, s: int) -> Any:
    """[B, C, H, W] -> [B, C*s*s, H/s, W/s] with channel c*s*s + i*s + j holding pixel (h*s+i, w*s+j)."""
    layout.check_divisible(tuple(x.shape[2:]), s)
    return layout.unshuffle(xp, x, s)


def pixel_shuffle(xp: Any, x: Any, s: int) -> Any:
    """The inverse of pixel_unshuffle: [B, C*s*s, H, W] -> [B, C, H*s, W*s]."""
    return layout.shuffle(xp, x, s)


check_shuffle_channels = layout.check_shuffle_channels


def selection_features(xp: Any, cfg: ConvNNConfig, tokens: Any, coords: Optional[Any]) -> Any:
    """What drives selection (the pipeline's step): features, coordinates, or the blend."""
    return pipeline.selection_features(xp, cfg, tokens, coords)


def interior_tokens(xp: Any, h: int, w: int, p: int, like: Any) -> Any:
    """Padded-raster token indices of the H*W interior pixels, row-major."""
    return xp.asarray(layout.interior_tokens((h, w), p), device=device(like))


def spec_kernels(*arrays: Any) -> SpecKernels:
    """The spec's kernels on the namespace of the given arrays."""
    return SpecKernels(namespace(*arrays))


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
    return pipeline.convnn_nd(spec_kernels(x, weight, bias), x, weight, bias, cfg, 2, candidates=candidates, rng=rng)


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
    return pipeline.convnn_nd(spec_kernels(x, weight, bias), x, weight, bias, cfg, 1, candidates=candidates, rng=rng)


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
    return pipeline.select_neighbors(spec_kernels(feats, query_feats), feats, cfg, query_feats=query_feats,
                                     candidates=candidates, rng=rng)
