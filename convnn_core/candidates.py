"""Candidate sets (SPEC.md section 3, `sampling`): all tokens, a uniform random draw, or an even grid.

Candidates are always token indices into the (padded) token raster, sorted ascending so that a
stable sort over candidate positions breaks ties towards the lower token index.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Union

import numpy as np

from ._xp import as_index_array, device, is_traced, shape_str
from .config import ConvNNConfig

RngLike = Union[None, int, np.random.Generator]


def make_rng(rng: RngLike) -> np.random.Generator:
    """A NumPy Generator from an int seed or a Generator (the spec's explicit RNG)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng={rng!r} must be an int seed or a numpy.random.Generator")


def draw_random(n_tokens: int, num_samples: int, rng: RngLike, *, batch: Optional[int] = None) -> np.ndarray:
    """`num_samples` distinct token indices in [0, n_tokens), uniformly, sorted; per sample if batch is given."""
    gen = make_rng(rng)
    if batch is None:
        return np.sort(gen.choice(n_tokens, size=num_samples, replace=False)).astype(np.int64)
    rows = [np.sort(gen.choice(n_tokens, size=num_samples, replace=False)) for _ in range(batch)]
    return np.stack(rows).astype(np.int64)


def spatial_grid_2d(height: int, width: int, padding: int, num_samples: int) -> np.ndarray:
    """The n x n grid of interior pixels (n*n = num_samples) as padded-raster token indices, sorted, distinct."""
    n = math.isqrt(num_samples)
    if n * n != num_samples:
        raise ValueError(
            f"ConvNNConfig.num_samples={num_samples} must be a perfect square (n*n) for 2-D spatial sampling"
        )
    rows = np.floor(np.linspace(0, height - 1, n)).astype(np.int64) + padding
    cols = np.floor(np.linspace(0, width - 1, n)).astype(np.int64) + padding
    tokens = (rows[:, None] * (width + 2 * padding) + cols[None, :]).reshape(-1)
    return np.unique(tokens)  # small maps repeat grid lines; each pixel counts once


def spatial_line(length: int, padding: int, num_samples: int) -> np.ndarray:
    """floor(linspace(0, L-1, num_samples)) + padding: evenly spaced interior tokens of a sequence, distinct."""
    return np.unique(np.floor(np.linspace(0, length - 1, num_samples)).astype(np.int64) + padding)


def resolve_candidates(
    xp: Any,
    cfg: ConvNNConfig,
    n_tokens: int,
    like: Any,
    *,
    batch: int,
    grid: Optional[tuple[int, int]] = None,
    length: Optional[int] = None,
    candidates: Any = None,
    rng: RngLike = None,
) -> Optional[Any]:
    """The candidate token indices for one call: None means all tokens, else an int array [S] or [B, S].

    grid=(H, W) marks a 2-D map, length=L a 1-D sequence (both unpadded); explicit `candidates`
    win over the config's sampling rule and are validated (range, repeats) and sorted.
    """
    if candidates is not None:
        return validate_candidates(xp, candidates, n_tokens, like, batch=batch)
    if cfg.sampling == "all":
        return None
    assert cfg.num_samples is not None  # enforced by ConvNNConfig
    if cfg.num_samples >= n_tokens:
        return None
    if cfg.sampling == "random":
        if rng is None:
            raise ValueError(
                "sampling='random' needs explicit candidates= or an rng= (int seed or numpy Generator); "
                "none was given"
            )
        host = draw_random(n_tokens, cfg.num_samples, rng)
    elif grid is not None:
        host = spatial_grid_2d(grid[0], grid[1], cfg.padding, cfg.num_samples)
    else:
        host = (spatial_line(length, cfg.padding, cfg.num_samples) if length is not None
                else spatial_line(n_tokens, 0, cfg.num_samples))
    return xp.asarray(host, device=device(like))


def validate_candidates(xp: Any, candidates: Any, n_tokens: int, like: Any, *, batch: int) -> Any:
    """Check explicit candidate indices ([S] or [B, S], ints in range, no repeats) and sort them ascending."""
    cand = as_index_array(xp, candidates, like)
    if cand.ndim not in (1, 2):
        raise ValueError(f"candidates has shape {shape_str(cand.shape)}; expected [S] or [B, S] token indices")
    if cand.ndim == 2 and cand.shape[0] != batch:
        raise ValueError(f"candidates has shape {shape_str(cand.shape)}; its first dim must be the batch {batch}")
    if cand.shape[-1] == 0:
        raise ValueError("candidates is empty; give at least one token index")
    cand = xp.sort(cand, axis=-1)
    if not is_traced(cand):
        lo, hi = int(xp.min(cand)), int(xp.max(cand))
        if lo < 0 or hi >= n_tokens:
            raise ValueError(
                f"candidates holds token index {lo if lo < 0 else hi}; allowed are 0..{n_tokens - 1} "
                f"(the padded token raster has {n_tokens} tokens)"
            )
        if cand.shape[-1] > 1 and bool(xp.any(cand[..., 1:] == cand[..., :-1])):
            raise ValueError("candidates holds repeated token indices; each candidate may appear once")
    return cand
