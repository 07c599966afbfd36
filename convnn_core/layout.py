"""N-d layout steps of the pipeline (SPEC section 2): pixel (un)shuffle, zero padding, tokens, coordinates.

Array steps take an Array API namespace `xp`; the coordinate table and the query indices are
host NumPy constants, computed once in float64 so every backend gets the same bits.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def unshuffle(xp: Any, x: Any, s: int) -> Any:
    """[B, C, *S] -> [B, C*s^d, *S/s]; channel c*s^d + (offsets row-major) holds pixel (S/s*idx + offsets)."""
    if s == 1:
        return x
    b, c = x.shape[0], x.shape[1]
    spatial = tuple(x.shape[2:])
    d = len(spatial)
    split: list[int] = []
    for n in spatial:
        split += [n // s, s]
    x = xp.reshape(x, (b, c) + tuple(split))
    perm = (0, 1) + tuple(3 + 2 * i for i in range(d)) + tuple(2 + 2 * i for i in range(d))
    x = xp.permute_dims(x, perm)
    return xp.reshape(x, (b, c * s ** d) + tuple(n // s for n in spatial))


def shuffle(xp: Any, x: Any, s: int) -> Any:
    """The inverse of unshuffle: [B, C*s^d, *S] -> [B, C, *S*s]."""
    if s == 1:
        return x
    b, cs = x.shape[0], x.shape[1]
    spatial = tuple(x.shape[2:])
    d = len(spatial)
    c = cs // s ** d
    x = xp.reshape(x, (b, c) + (s,) * d + spatial)
    perm = [0, 1]
    for i in range(d):
        perm += [2 + d + i, 2 + i]
    x = xp.permute_dims(x, tuple(perm))
    return xp.reshape(x, (b, c) + tuple(n * s for n in spatial))


def pad(xp: Any, x: Any, p: int, zeros: Any) -> Any:
    """Zero-pad every spatial axis of [B, C, *S] by p on both sides; zeros(shape) makes zeros like x."""
    if p == 0:
        return x
    for axis in range(2, x.ndim):
        shape = list(x.shape)
        shape[axis] = p
        z = zeros(tuple(shape))
        x = xp.concat([z, x, z], axis=axis)
    return x


def to_tokens(xp: Any, x: Any) -> Any:
    """[B, C, *S] -> [B, prod(S), C] (row-major over the spatial axes)."""
    b, c = x.shape[0], x.shape[1]
    n = math.prod(x.shape[2:])
    perm = (0,) + tuple(range(2, x.ndim)) + (1,)
    return xp.reshape(xp.permute_dims(x, perm), (b, n, c))


def from_tokens(xp: Any, y: Any, spatial: Sequence[int]) -> Any:
    """[B, Nq, O] -> [B, O, *S]."""
    b, _, o = y.shape
    return xp.reshape(xp.permute_dims(y, (0, 2, 1)), (b, o) + tuple(spatial))


def coordinates(padded: Sequence[int]) -> np.ndarray:
    """[prod(S'), d] float64 coordinates of the padded grid: linspace(-1, 1, n) per axis, last axis first (x, y)."""
    axes = [np.linspace(-1.0, 1.0, n) for n in padded]
    grids = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.reshape(-1) for g in reversed(grids)], axis=-1)


def interior_tokens(spatial: Sequence[int], p: int) -> np.ndarray:
    """Padded-raster token indices (int64) of the interior positions, row-major."""
    padded = tuple(n + 2 * p for n in spatial)
    ranges = np.meshgrid(*[np.arange(n) + p for n in spatial], indexing="ij")
    return np.ravel_multi_index(tuple(r.reshape(-1) for r in ranges), padded).astype(np.int64)


def check_divisible(spatial: Sequence[int], s: int) -> None:
    """shuffle_scale must divide every spatial size."""
    if s > 1 and any(n % s for n in spatial):
        size = "x".join(str(n) for n in spatial)
        what = "sequence length" if len(spatial) == 1 else "map size"
        raise ValueError(f"ConvNNConfig.shuffle_scale={s} must divide the {what} {size}")


def check_shuffle_channels(out_channels: int, scale: int, dims: int) -> None:
    """With shuffle_scale s the op's output channels must split into s**dims sub-pixels."""
    factor = scale ** dims
    if scale > 1 and out_channels % factor:
        raise ValueError(
            f"weight has {out_channels} output channels; with shuffle_scale={scale} it must be a multiple of {factor}"
        )
