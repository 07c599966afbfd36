"""Exact structural ties (SPEC.md section 4, step 1): the coordinate part of a euclidean distance from grid offsets.

For select=position or blend with metric=euclidean the squared distance is a feature part plus

    (1 - blend)^2 * (sx^2 * dcol^2 + sy^2 * drow^2),  sx = 2 / (W' - 1), sy = 2 / (H' - 1)

(position: blend = 0 and no feature part; 1-D: one axis; N-d: one term per axis). Every backend
evaluates it the same way: with L = lcm of the axes' (S'_d - 1),

    units(i, j) = sum_d mult_d * (offset_d(i, j))^2,  mult_d = (L / (S'_d - 1))^2   (an exact integer)
    coordinate part = scale * units,                  scale = (1 - blend)^2 * 4 / L^2

so candidates at equal offsets (mirror images, the ring of one step, even different offsets at
the same distance) get bitwise-equal coordinate parts on every backend, and the lower-index rule
decides them. `units` and `scale` are rounded once each to the working dtype, then multiplied.
Token t of the padded raster sits at the row-major position unravel(t, S') (row = t // W',
col = t % W' in 2-D).

The pipeline builds one static `Grid` per call (hashable, so it is part of a compiled plan) and
hands it to the kernels beside the selection features, which then hold only the feature part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

# the largest units value a backend may meet must fit a signed 32-bit integer (jax without x64)
MAX_UNITS = 2 ** 31 - 1


@dataclass(frozen=True)
class Grid:
    """The padded grid of a map op and the integer weights of its squared per-axis offsets."""

    shape: tuple[int, ...]  # padded spatial sizes S', row-major (the last axis is x)
    mult: tuple[int, ...]  # per axis: (L / (S'_d - 1))^2, or 0 for an axis of size 1
    scale: float  # float64: (1 - blend)^2 * 4 / L^2, the squared distance of one unit

    @property
    def max_units(self) -> int:
        """The largest units value between two tokens of the grid (opposite corners)."""
        return sum(m * (n - 1) ** 2 for n, m in zip(self.shape, self.mult))

    def describe(self) -> str:
        size = "x".join(str(n) for n in self.shape)
        return f"grid {size}, mult {self.mult}, scale {self.scale!r}"


def uses_grid(cfg: Any) -> bool:
    """Whether a map config takes the exact coordinate part (select position or blend, metric euclidean)."""
    return cfg.select in ("position", "blend") and cfg.metric == "euclidean"


def make_grid(cfg: Any, padded: Sequence[int]) -> Optional[Grid]:
    """The Grid of a map op on padded sizes S', or None when its selection does not use one."""
    if not uses_grid(cfg):
        return None
    padded = tuple(int(n) for n in padded)
    steps = [n - 1 for n in padded if n > 1]
    lcm = 1
    for s in steps:
        lcm = lcm * s // math.gcd(lcm, s)
    mult = tuple((lcm // (n - 1)) ** 2 if n > 1 else 0 for n in padded)
    blend = 0.0 if cfg.select == "position" else float(cfg.blend)
    grid = Grid(padded, mult, (1.0 - blend) ** 2 * (4.0 / float(lcm * lcm)))
    if grid.max_units > MAX_UNITS:
        size = "x".join(str(n) for n in padded)
        raise ValueError(
            f"ConvNNConfig.select={cfg.select!r} with metric='euclidean' on the padded grid {size}: the exact "
            f"coordinate distances (SPEC section 4, step 1) need {grid.max_units} integer units, more than "
            f"{MAX_UNITS}; use a map whose padded sides minus one share a larger common factor, or metric='cosine'"
        )
    return grid


def grid_units(grid: Grid, q_tok: Any, c_tok: Any) -> Any:
    """units(i, j) for integer token arrays q_tok and c_tok that broadcast (any array library with // % * +).

    The integers keep the token arrays' dtype (int64, or int32 in jax without x64: max_units fits it)."""
    total = None
    stride = 1
    for n, m in zip(reversed(grid.shape), reversed(grid.mult)):
        if m:
            d = (q_tok // stride) % n - (c_tok // stride) % n
            term = d * d * m
            total = term if total is None else total + term
        stride *= n
    if total is None:  # a single token: every offset is 0
        total = q_tok * 0 + c_tok * 0
    return total


def grid_distance(xp: Any, grid: Grid, q_tok: Any, c_tok: Any, dtype: Any) -> Any:
    """The coordinate part scale * units in dtype: the scale and the units each rounded once, then one product."""
    from ._xp import device

    units = grid_units(grid, q_tok, c_tok)
    return xp.astype(units, dtype) * xp.asarray(grid.scale, dtype=dtype, device=device(units))
