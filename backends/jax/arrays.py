"""Arrays, dtypes and randomness for the jax backend: asarray, to_numpy, PRNG keys, device draws, tracer checks."""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = ("float16", "bfloat16", "float32", "float64", "int32", "int64", "uint8", "bool")
X64_HINT = ("enable 64-bit jax with convnn.get_backend('jax', x64=True) or "
            "jax.config.update('jax_enable_x64', True)")


def x64_enabled() -> bool:
    """Whether jax keeps float64/int64 (jax_enable_x64)."""
    return bool(jax.config.jax_enable_x64)


def index_dtype() -> Any:
    """int64 with x64 enabled, else int32 (jax's widest integer then)."""
    return jnp.int64 if x64_enabled() else jnp.int32


try:  # public name, kept across jax versions; the private one is the fallback if it ever moves
    _TRACER = jax.core.Tracer
except AttributeError:  # pragma: no cover - depends on the jax version
    from jax._src.core import Tracer as _TRACER


def is_tracer(x: Any) -> bool:
    """True for values being traced by jit/grad/vmap (their contents cannot be read)."""
    return isinstance(x, _TRACER)


def asarray(value: Any, dtype: Optional[str] = None) -> jnp.ndarray:
    """A jax array from a host value; dtype a name such as 'float32' (64-bit ones need x64 enabled)."""
    if dtype is None:
        return value if isinstance(value, jax.Array) else jnp.asarray(value)
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not allowed; choose one of {', '.join(DTYPES)} or None")
    if name in ("float64", "int64") and not x64_enabled():
        raise ValueError(f"dtype={name!r} needs 64-bit jax, which is off; {X64_HINT}")
    return jnp.asarray(value, dtype=jnp.dtype(name))


def to_numpy(value: Any) -> np.ndarray:
    """A host NumPy copy of a jax array (or anything array-like)."""
    return np.array(jax.device_get(value), copy=True)


def make_rng(seed: int) -> jnp.ndarray:
    """A typed jax PRNG key (jax.random.key) from an int seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed={seed!r} must be an int")
    return jax.random.key(int(seed))


def split_rng(key: Any, n: int) -> tuple[Any, ...]:
    """n independent keys from one (jax.random.split); an int seed is turned into a key first."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an int >= 1")
    return tuple(jax.random.split(as_key(key), n))


def as_key(rng: Any) -> jnp.ndarray:
    """A typed jax key from a key (typed or raw uint32[2]), an int seed or a NumPy Generator."""
    if isinstance(rng, jax.Array) or is_tracer(rng):
        if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
            return rng
        if rng.dtype == jnp.uint32 and rng.shape == (2,):
            return jax.random.wrap_key_data(rng)
    if isinstance(rng, np.random.Generator):
        return jax.random.key(int(rng.integers(0, 2**31 - 1)))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return jax.random.key(int(rng))
    raise TypeError(f"rng={rng!r} must be a jax PRNG key, an int seed or a numpy.random.Generator")


def is_jax_key(rng: Any) -> bool:
    """A typed jax key (jax.random.key) or a raw uint32[2] key (jax.random.PRNGKey), concrete or traced."""
    if not isinstance(rng, jax.Array):
        return False
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng.ndim == 0
    return rng.dtype == jnp.uint32 and rng.shape == (2,)


def draw_on_device(key: Any, n_tokens: int, num_samples: int) -> jnp.ndarray:
    """num_samples distinct token indices in [0, n_tokens), uniformly, sorted ascending (jit-able)."""
    perm = jax.random.permutation(as_key(key), n_tokens)[:num_samples]
    return jnp.sort(perm).astype(index_dtype())
