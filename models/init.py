"""Parameter specs and PyTorch-default initialisation drawn on the host with NumPy.

Every parameter is drawn from its own Generator seeded by (seed, crc32(path)), so the same seed
gives the same parameters on every backend and in any construction order.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from convnn.tree import unflatten

INIT_KINDS = ("uniform_fan_in", "ones", "zeros", "normal")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its shape and how it starts (torch defaults: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) etc.)."""

    shape: tuple[int, ...]
    init: str
    fan_in: Optional[int] = None

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))


def uniform(shape: tuple[int, ...], fan_in: int) -> ParamSpec:
    """Kaiming-uniform with a = sqrt(5) (weights) and the matching bias bound: both 1/sqrt(fan_in)."""
    return ParamSpec(tuple(int(s) for s in shape), "uniform_fan_in", int(fan_in))


def ones(shape: tuple[int, ...]) -> ParamSpec:
    return ParamSpec(tuple(int(s) for s in shape), "ones")


def zeros(shape: tuple[int, ...]) -> ParamSpec:
    return ParamSpec(tuple(int(s) for s in shape), "zeros")


def normal(shape: tuple[int, ...]) -> ParamSpec:
    """N(0, 1) (the ViT's CLS token)."""
    return ParamSpec(tuple(int(s) for s in shape), "normal")


def path_seed(seed: int, path: str) -> np.random.Generator:
    """The Generator of one parameter: seeded by the run seed and the parameter's dotted path."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(path.encode("utf-8"))])


def draw(spec: ParamSpec, gen: np.random.Generator, dtype: str) -> np.ndarray:
    """A host array for one spec, in `dtype` (drawn in float32 or float64, never via a float64 copy of float32)."""
    np_dtype = np.dtype(dtype)
    if spec.init == "ones":
        return np.ones(spec.shape, dtype=np_dtype)
    if spec.init == "zeros":
        return np.zeros(spec.shape, dtype=np_dtype)
    draw_dtype = np.float64 if np_dtype == np.float64 else np.float32
    if spec.init == "normal":
        return gen.standard_normal(spec.shape, dtype=draw_dtype).astype(np_dtype, copy=False)
    if spec.init == "uniform_fan_in":
        bound = 1.0 / math.sqrt(spec.fan_in)
        out = gen.random(spec.shape, dtype=draw_dtype)
        out *= 2.0 * bound
        out -= bound
        return out.astype(np_dtype, copy=False)
    raise ValueError(f"ParamSpec.init={spec.init!r} is not allowed; choose one of {', '.join(INIT_KINDS)}")


def init_tree(specs: dict[str, ParamSpec], seed: int, dtype: str, backend: Any) -> Any:
    """Nested dict of backend arrays for flat {path: spec}, drawn on the host then converted."""
    flat = {path: backend.asarray(draw(spec, path_seed(seed, path), dtype), dtype)
            for path, spec in specs.items()}
    return unflatten(flat)


def count(specs: dict[str, ParamSpec]) -> int:
    """Total parameters from shapes alone (nothing materialised)."""
    return sum(spec.size for spec in specs.values())
