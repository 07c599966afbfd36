"""Arrays and explicit randomness for the torch backend: dtypes, asarray / to_numpy, and an RNG key (an integer
seed, split deterministically).

A key seeds a fresh torch.Generator per call on the tensor's device (dropout masks) and a NumPy
Generator for candidate draws. An int seed or a numpy Generator given instead is used exactly as
the spec uses it (NumPy draws), so both backends then see the same candidates and masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch


@dataclass(frozen=True)
class TorchRngKey:
    """The torch backend's RNG key: an immutable 63-bit seed."""

    seed: int


def make_rng(seed: int) -> TorchRngKey:
    """A key from an int seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed={seed!r} must be an int")
    return TorchRngKey(int(seed) & ((1 << 63) - 1))


def split_rng(key: TorchRngKey, n: int) -> tuple[TorchRngKey, ...]:
    """n new keys derived from key (a pure function of key and n)."""
    key = as_key(key)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an int >= 1")
    words = np.random.SeedSequence([key.seed & 0xFFFFFFFF, key.seed >> 32, n]).generate_state(2 * n, dtype=np.uint32)
    return tuple(TorchRngKey(((int(words[2 * i]) << 32) | int(words[2 * i + 1])) & ((1 << 63) - 1)) for i in range(n))


def as_key(rng: Any) -> TorchRngKey:
    """A TorchRngKey from a key or an int seed."""
    if isinstance(rng, TorchRngKey):
        return rng
    return make_rng(rng)


RngLike = Union[None, int, np.random.Generator, TorchRngKey]


def as_host_rng(rng: RngLike) -> Optional[Union[int, np.random.Generator]]:
    """What the spec's candidate draw accepts: None, a numpy Generator (ints become one, as in the spec)."""
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, TorchRngKey):
        return np.random.default_rng(rng.seed)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng={rng!r} must be None, an int seed, a numpy.random.Generator or a torch backend key")


def generator(key: TorchRngKey, device: torch.device) -> torch.Generator:
    """A torch.Generator on `device` seeded from key."""
    gen = torch.Generator(device=device)
    gen.manual_seed(key.seed)
    return gen


def dropout_mask(like: torch.Tensor, p: float, rng: Any) -> torch.Tensor:
    """Inverted-dropout multipliers (0 or 1/(1-p)) shaped like `like`.

    A TorchRngKey draws on the device; a numpy Generator (or an int) draws on the host as the spec does.
    """
    if isinstance(rng, TorchRngKey):
        keep = torch.rand(like.shape, generator=generator(rng, like.device), device=like.device,
                          dtype=torch.float32) >= p
        return keep.to(like.dtype) / (1.0 - p)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(int(rng))
    keep = gen.random(tuple(like.shape)) >= p
    return torch.as_tensor(keep.astype(np.float64) / (1.0 - p), dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------- arrays
DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
    "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8, "bool": torch.bool,
}


def resolve_dtype(dtype: Any) -> Optional[torch.dtype]:
    """A torch dtype from a name ('float32', ...), a torch dtype or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not allowed; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def asarray(value: Any, device: torch.device, dtype: Any = None) -> torch.Tensor:
    """A tensor on `device` (dtype name or None to keep; NumPy float64 stays float64)."""
    dt = resolve_dtype(dtype)
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dt if dt is not None else value.dtype)
    arr = np.asarray(value)
    return torch.as_tensor(arr, device=device, dtype=dt)


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy copy on the host (bfloat16 becomes float32)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)
        return t.cpu().numpy().copy()
    return np.asarray(value)
