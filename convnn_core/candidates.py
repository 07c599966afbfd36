"""Candidate sets (SPEC.md section 3, `sampling`): all tokens, a uniform random draw, or an even grid.

Candidates are always token indices into the (padded) token raster, sorted ascending so that a
stable sort over candidate positions breaks ties towards the lower token index.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np


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
