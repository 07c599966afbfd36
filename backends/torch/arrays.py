"""Arrays and explicit randomness for the torch backend: dtypes, asarray / to_numpy, and RNG keys.

TorchRngKey (an integer seed, split deterministically) seeds a fresh torch.Generator per call on
the tensor's device (dropout masks) and draws candidates exactly as the spec does for that seed
(NumPy), so a key and its seed agree. An int seed or a numpy Generator given instead is used
exactly as the spec uses it (NumPy draws), so both backends then see the same candidates and masks.

Two keys serve the nn.Modules, both traceable by torch.compile(fullgraph=True) (Dynamo cannot trace
np.random.default_rng):
  GlobalRngKey   training draws: candidates (torch.randperm) and dropout masks (torch.rand) from torch's
                 global RNG on the device, so torch.manual_seed makes runs repeatable;
  SeedTensorKey  evaluation's fixed draw: the spec's draw for the seed held in a 0-d int64 tensor (the
                 module's `sample_seed` buffer), run by the custom op convnn::seeded_candidates, which
                 compiled graphs keep as one opaque node.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch


@dataclass(frozen=True)
class TorchRngKey:
    """The torch backend's RNG key: an immutable 63-bit seed."""

    seed: int


@dataclass(frozen=True)
class GlobalRngKey(TorchRngKey):
    """Draw from torch's global RNG on the device (torch.randperm / torch.rand): the modules' training draws.

    Traceable by torch.compile(fullgraph=True); `seed` is unused (torch.manual_seed sets the stream).
    """

    seed: int = -1


@dataclass(frozen=True)
class SeedTensorKey(TorchRngKey):
    """The spec's candidate draw for the seed in a 0-d integer tensor (a module's `sample_seed` buffer).

    Drawn by the custom op convnn::seeded_candidates, so the seed is read when the graph runs, not when it
    is traced: a compiled module follows load_state_dict, and its draw equals the eager one.
    """

    seed: Any = None  # a 0-d int64 torch.Tensor


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
        return np.random.default_rng(key_seed(rng))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng={rng!r} must be None, an int seed, a numpy.random.Generator or a torch backend key")


def key_seed(key: TorchRngKey) -> int:
    """The integer seed of a seeded key (a SeedTensorKey's tensor is read on the host)."""
    if isinstance(key, GlobalRngKey):
        raise TypeError("a GlobalRngKey draws from torch's global RNG and has no seed")
    return int(key.seed)


def generator(key: TorchRngKey, device: torch.device) -> torch.Generator:
    """A torch.Generator on `device` seeded from key."""
    gen = torch.Generator(device=device)
    gen.manual_seed(key_seed(key))
    return gen


def dropout_mask(like: torch.Tensor, p: float, rng: Any) -> torch.Tensor:
    """Inverted-dropout multipliers (0 or 1/(1-p)) shaped like `like`.

    A GlobalRngKey draws from torch's global RNG on the device (traceable); a TorchRngKey from a generator
    it seeds on the device; a numpy Generator (or an int) draws on the host as the spec does.
    """
    if isinstance(rng, GlobalRngKey):
        keep = torch.rand(like.shape, device=like.device, dtype=torch.float32) >= p
        return keep.to(like.dtype) / (1.0 - p)
    if isinstance(rng, TorchRngKey):
        keep = torch.rand(like.shape, generator=generator(rng, like.device), device=like.device,
                          dtype=torch.float32) >= p
        return keep.to(like.dtype) / (1.0 - p)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(int(rng))
    keep = gen.random(tuple(like.shape)) >= p
    return torch.as_tensor(keep.astype(np.float64) / (1.0 - p), dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------- candidate draws
def _host_constant(fn: Any) -> Any:
    """Dynamo calls a function so marked once while tracing and keeps its result as a constant (the marker
    torch.compiler.assume_constant_result sets; convnn.pipeline.host_constant is the same)."""
    fn._dynamo_marked_constant = True
    return fn


@functools.lru_cache(maxsize=256)
def _spec_draw(seed: int, n_tokens: int, count: int) -> tuple[int, ...]:
    from convnn.candidates import draw_random

    return tuple(int(i) for i in draw_random(n_tokens, count, np.random.default_rng(seed)))


@_host_constant  # on the plain function: Dynamo looks through an lru_cache wrapper and would trace the NumPy
def spec_draw(seed: int, n_tokens: int, count: int) -> tuple[int, ...]:
    """The spec's uniform draw (convnn.draw_random) for an int seed: sorted token indices (a tuple: cached)."""
    return _spec_draw(int(seed), int(n_tokens), int(count))


@torch.library.custom_op("convnn::seeded_candidates", mutates_args=())
def seeded_candidates(seed: torch.Tensor, n_tokens: int, count: int, device: torch.device) -> torch.Tensor:
    """The spec's draw for the seed held in a 0-d integer tensor, as int64 [count] on `device`."""
    return torch.tensor(spec_draw(int(seed), int(n_tokens), int(count)), dtype=torch.int64, device=device)


@seeded_candidates.register_fake
def _seeded_candidates_fake(seed: torch.Tensor, n_tokens: int, count: int, device: torch.device) -> torch.Tensor:
    return torch.empty((count,), dtype=torch.int64, device=device)


def draw_candidates(key: TorchRngKey, n_tokens: int, count: int, device: Any) -> torch.Tensor:
    """`count` distinct sorted token indices in [0, n_tokens) for a key, as int64 on `device`.

    GlobalRngKey: torch.randperm from the global RNG on the device; SeedTensorKey: the spec's draw for its
    seed through the custom op; TorchRngKey: the spec's draw for its int seed (a constant under tracing).
    All three trace under torch.compile(fullgraph=True).
    """
    device = torch.device(device)
    if isinstance(key, GlobalRngKey):
        return torch.sort(torch.randperm(n_tokens, device=device)[:count]).values
    if isinstance(key, SeedTensorKey):
        return seeded_candidates(key.seed, n_tokens, count, device)
    return torch.tensor(spec_draw(int(key.seed), int(n_tokens), int(count)), dtype=torch.int64, device=device)


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
