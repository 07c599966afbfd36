"""Candidate sets for one call (SPEC.md section 3, `sampling`), resolved before tracing where possible.

An int seed or a NumPy Generator draws on the host with the spec's own sampler, so the jax backend
picks the very candidates the spec picks for the same seed; a jax PRNG key draws on the device
inside the compiled function (the jit-friendly way in training loops).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from convnn_core.candidates import draw_random, make_rng, spatial_grid_2d, spatial_line, validate_candidates
from convnn_core.config import ConvNNConfig
from convnn_core.selection import check_candidate_count
from convnn_core._xp import shape_str

from .arrays import index_dtype, is_tracer


@dataclass
class Candidates:
    """What the compiled op gets: fixed indices ([S] or [B, S], maybe unsorted when traced), or a key to draw with."""

    indices: Optional[jnp.ndarray] = None
    key: Optional[jnp.ndarray] = None
    count: Optional[int] = None  # candidates per row (None: all tokens)
    sorted: bool = True


def is_jax_key(rng: Any) -> bool:
    """A typed jax key (jax.random.key) or a raw uint32[2] key (jax.random.PRNGKey)."""
    if not isinstance(rng, jax.Array):
        return False
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng.ndim == 0
    return rng.dtype == jnp.uint32 and rng.shape == (2,)


def as_typed_key(key: jnp.ndarray) -> jnp.ndarray:
    """Typed form of a jax key (raw uint32[2] keys are wrapped)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def draw_on_device(key: jnp.ndarray, n_tokens: int, num_samples: int) -> jnp.ndarray:
    """num_samples distinct token indices in [0, n_tokens), uniformly, sorted ascending."""
    perm = jax.random.permutation(as_typed_key(key), n_tokens)[:num_samples]
    return jnp.sort(perm).astype(index_dtype())


def _check_traced(candidates: jnp.ndarray, batch: int) -> None:
    if candidates.ndim not in (1, 2):
        raise ValueError(f"candidates has shape {shape_str(candidates.shape)}; expected [S] or [B, S] token indices")
    if candidates.ndim == 2 and candidates.shape[0] != batch:
        raise ValueError(f"candidates has shape {shape_str(candidates.shape)}; its first dim must be the batch {batch}")
    if candidates.shape[-1] == 0:
        raise ValueError("candidates is empty; give at least one token index")
    if not jnp.issubdtype(candidates.dtype, jnp.integer):
        raise TypeError(f"candidates has dtype {candidates.dtype}; integer token indices are required")


def resolve(
    cfg: ConvNNConfig,
    n_tokens: int,
    queries: np.ndarray,
    *,
    batch: int,
    grid: Optional[tuple[int, int]] = None,
    length: Optional[int] = None,
    candidates: Any = None,
    rng: Any = None,
) -> Candidates:
    """The candidates of one call, checked like the spec does (range, repeats, k against the count).

    queries are the query token indices (host), used to know whether the query itself is a candidate.
    """
    host: Optional[np.ndarray] = None
    if candidates is not None:
        if is_tracer(candidates):
            _check_traced(candidates, batch)
            out = Candidates(indices=candidates.astype(index_dtype()), count=candidates.shape[-1], sorted=False)
            _check_count(cfg, out.count, None, queries)
            return out
        host = validate_candidates(np, np.asarray(candidates), n_tokens, np.zeros(0), batch=batch)
    elif cfg.sampling == "all" or cfg.num_samples >= n_tokens:
        _check_count(cfg, n_tokens, np.arange(n_tokens), queries)
        return Candidates()
    elif cfg.sampling == "random":
        if rng is None:
            raise ValueError(
                "sampling='random' needs explicit candidates= or an rng= (a jax key, an int seed or a numpy "
                "Generator); none was given"
            )
        if is_jax_key(rng):
            out = Candidates(key=rng, count=cfg.num_samples)
            _check_count(cfg, out.count, None, queries)
            return out
        host = draw_random(n_tokens, cfg.num_samples, make_rng(rng))
    elif grid is not None:
        host = spatial_grid_2d(grid[0], grid[1], cfg.padding, cfg.num_samples)
    else:
        host = (spatial_line(length, cfg.padding, cfg.num_samples) if length is not None
                else spatial_line(n_tokens, 0, cfg.num_samples))
    _check_count(cfg, host.shape[-1], host, queries)
    return Candidates(indices=jnp.asarray(host.astype(np.int64), dtype=index_dtype()), count=host.shape[-1])


def _check_count(cfg: ConvNNConfig, n_cand: int, host: Optional[np.ndarray], queries: np.ndarray) -> None:
    """The spec's 'k against the candidate count' check; unknown candidates count the query as one (as traced)."""
    is_self = None
    if cfg.self_first:
        is_self = np.ones(1, dtype=bool) if host is None else np.isin(queries, host).reshape(-1)
    check_candidate_count(np, cfg, is_self, n_cand)
