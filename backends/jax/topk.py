"""Top-K along the last axis with SPEC.md's tie rule: equal scores go to the lower position.

lax.top_k alone is not enough: it ranks -0.0 below +0.0 (top_k([0, -0, 0, 1], 3) gives
positions [3, 0, 2], the rule wants [3, 0, 1]) and XLA does not promise which of several equal
values it keeps at the K-th place on every device. So zeros are canonicalised, rows with more
a value equal to the K-th left out are redone exactly (the picks are then the values above
the K-th plus the lowest positions equal to it), and the K picks are finally ordered by
(score descending, position ascending).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax


def canonical_zeros(scores: jnp.ndarray) -> jnp.ndarray:
    """Scores with -0.0 replaced by +0.0, so that the two compare as the tie they are."""
    return jnp.where(scores == 0, jnp.zeros((), scores.dtype), scores)


def _tie_mask(scores: jnp.ndarray, kth: jnp.ndarray, k: int) -> jnp.ndarray:
    """The k winners as a mask: every score above the k-th, then the lowest positions equal to it."""
    above = scores > kth
    tied = scores == kth
    need = k - jnp.sum(above, axis=-1, keepdims=True)
    return above | (tied & (jnp.cumsum(tied, axis=-1) <= need))


def _positions_of(mask: jnp.ndarray, k: int) -> jnp.ndarray:
    """The positions of the k True entries of each row (ascending), by a top_k over distinct keys."""
    n = mask.shape[-1]
    positions = lax.broadcasted_iota(jnp.float32, mask.shape, mask.ndim - 1)
    key = jnp.where(mask, float(n) - positions, 0.0)  # distinct positive keys for the winners
    return lax.top_k(key, k)[1].astype(jnp.int32)


def _direct_top_k(scores: jnp.ndarray, k: int, ordered: bool = True) -> jnp.ndarray:
    """top_k_lower_index on canonical scores by one lax.top_k (plus the exact redo for ambiguous rows).

    ordered=False returns the same set in an unspecified order (saves the final sort).
    """
    n = scores.shape[-1]
    # only the indices of lax.top_k are used (XLA CPU then keeps its fast TopK kernel); one extra
    # pick shows whether a value equal to the k-th was left out, the only case that needs the redo
    pos = lax.top_k(scores, min(k + 1, n))[1].astype(jnp.int32)
    if k < n:
        vals = jnp.take_along_axis(scores, pos, axis=-1)
        kth = vals[..., k - 1:k]
        unambiguous = jnp.all(vals[..., k] < vals[..., k - 1])
        pos = lax.cond(unambiguous, lambda: pos[..., :k], lambda: _positions_of(_tie_mask(scores, kth, k), k))
    if not ordered:
        return pos
    vals = jnp.take_along_axis(scores, pos, axis=-1)
    _, pos = lax.sort((-vals, pos), dimension=-1, num_keys=2)
    return pos


def group_size(n: int, k: int) -> int:
    """Positions per group for the two-stage top-k (about sqrt(n / k)); 0 when one stage is cheaper."""
    size = int(round(math.sqrt(n / k)))
    if n < 256 or size < 4 or k * size * 2 > n:
        return 0
    return size


def _grouped_top_k(scores: jnp.ndarray, k: int, size: int) -> jnp.ndarray:
    """Two stages: the k best groups by their maxima, then the k best among those groups' entries.

    Exact under the tie rule: a winner's group has a maximum that is itself among the k best
    group maxima (ties between groups going to the lower group, which holds lower positions).
    """
    n = scores.shape[-1]
    groups = -(-n // size)
    pad = groups * size - n
    if pad:
        filler = jnp.full(scores.shape[:-1] + (pad,), -jnp.inf, scores.dtype)
        scores = jnp.concatenate([scores, filler], axis=-1)
    grouped = scores.reshape(scores.shape[:-1] + (groups, size))
    best = jnp.sort(_direct_top_k(jnp.max(grouped, axis=-1), k, ordered=False), axis=-1)  # ascending groups
    picked = jnp.take_along_axis(grouped, best[..., None], axis=-2)  # [..., k, size], in position order
    offsets = best[..., None] * size + lax.broadcasted_iota(jnp.int32, picked.shape, picked.ndim - 1)
    flat = picked.reshape(picked.shape[:-2] + (k * size,))
    inner = _direct_top_k(flat, k)
    return jnp.take_along_axis(offsets.reshape(flat.shape), inner, axis=-1)


def top_k_lower_index(scores: jnp.ndarray, k: int) -> jnp.ndarray:
    """int32 positions [..., k] of the k largest scores, in decreasing score, ties to the lower position.

    `scores` must be free of NaN; -inf entries are allowed (they are picked last). Long rows use
    two stages (best groups, then best entries in them), which is several times faster on CPUs.
    """
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of scores {n}")
    scores = canonical_zeros(scores)
    size = group_size(n, k)
    return _grouped_top_k(scores, k, size) if size else _direct_top_k(scores, k)


def top_k_mask(scores: jnp.ndarray, k: int) -> jnp.ndarray:
    """Boolean mask of the k largest scores per row, ties to the lower position (exact, no sort)."""
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is larger than the number of keys N={n}")
    scores = canonical_zeros(scores)
    pos = lax.top_k(scores, k)[1]
    return _tie_mask(scores, jnp.take_along_axis(scores, pos[..., -1:], axis=-1), k)
