"""Row-block machinery of the jax kernels: lax.map over blocks of samples and query rows, affinities, top-K, gathers.

Each kernel (select, slot_affinity, gather_taps) runs its per-block function over blocks of
samples and of query rows with lax.map, so the live working set is one block's temporary
([g, R, S] affinities, [g, R, K, C] gathered values), never [B, Nq, K, C] for all rows. The
differentiable kernels rematerialise each block in the backward pass (jax.checkpoint), so
training memory stays bounded too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from convnn.affinity import EPS_NORM
from convnn.grid import Grid, grid_units

from .topk import top_k_lower_index

CPU_BLOCK_ELEMENTS = 1 << 20  # 4 MiB of float32: blocks stay in cache
ACCELERATOR_BLOCK_ELEMENTS = 1 << 26  # large blocks keep a GPU busy
PRECISIONS = {"default": lax.Precision.DEFAULT, "high": lax.Precision.HIGH, "highest": lax.Precision.HIGHEST}


@dataclass(frozen=True)
class EngineOptions:
    """Static knobs: matmul precision ('highest' keeps float32 exact on GPUs with TF32) and the block budget."""

    precision: Optional[str] = "highest"
    block_elements: Optional[int] = None  # elements of the largest per-block temporary; None: by device

    @property
    def lax_precision(self) -> Any:
        return None if self.precision is None else PRECISIONS[self.precision]


def block_budget(opts: EngineOptions) -> int:
    """The block budget in elements: the option, else small (cache-sized) on CPUs and large on accelerators."""
    if opts.block_elements is not None:
        return opts.block_elements
    return CPU_BLOCK_ELEMENTS if jax.default_backend() == "cpu" else ACCELERATOR_BLOCK_ELEMENTS


# ----------------------------------------------------------------------------- affinities and gathers
def safe_norm(f: jnp.ndarray) -> jnp.ndarray:
    """max(||f||, 1e-12) over the last axis, written so that a zero vector has a zero (not NaN) gradient."""
    sq = jnp.sum(f * f, axis=-1)
    return jnp.sqrt(jnp.maximum(sq, jnp.asarray(EPS_NORM * EPS_NORM, dtype=f.dtype)))


def affinity_block(metric: str, q: jnp.ndarray, k: jnp.ndarray, precision: Any) -> jnp.ndarray:
    """a[g, r, s] between queries q [G, R, F] and candidates k [G, S, F]: larger is closer."""
    dots = jnp.einsum("grf,gsf->grs", q, k, precision=precision)
    if metric == "cosine":
        return jnp.clip(dots / (safe_norm(q)[:, :, None] * safe_norm(k)[:, None, :]), -1.0, 1.0)
    if metric == "euclidean":
        sq = jnp.sum(q * q, axis=-1)[:, :, None] + jnp.sum(k * k, axis=-1)[:, None, :] - 2.0 * dots
        return -jnp.maximum(sq, 0.0)
    return dots / math.sqrt(q.shape[-1])


def paired_affinity(metric: str, q: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
    """a[..., j] between q [..., 1, F] and its selected neighbours k [..., K, F] (same formulas)."""
    dots = jnp.sum(q * k, axis=-1)
    if metric == "cosine":
        return jnp.clip(dots / (safe_norm(q) * safe_norm(k)), -1.0, 1.0)
    if metric == "euclidean":
        sq = jnp.sum(q * q, axis=-1) + jnp.sum(k * k, axis=-1) - 2.0 * dots
        return -jnp.maximum(sq, 0.0)
    return dots / math.sqrt(q.shape[-1])


def gather_rows(table: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """out[g, r, k] = table[g, index[g, r, k]] for a table [G, N, C] and index [G, R, K] -> [G, R, K, C]."""
    g, r, k = index.shape
    flat = jnp.take_along_axis(table, index.reshape(g, r * k)[:, :, None], axis=1)
    return flat.reshape(g, r, k, table.shape[-1])


def candidate_features(feats: jnp.ndarray, cand: Optional[jnp.ndarray]) -> jnp.ndarray:
    """The candidates' features [G, S, F] (every token when cand is None; cand [S] shared or [G, S] per group)."""
    if cand is None:
        return feats
    if cand.ndim == 1:
        return jnp.take(feats, cand, axis=1)
    return jnp.take_along_axis(feats, cand[:, :, None], axis=1)


def grid_part(grid: Grid, q_tok: jnp.ndarray, c_tok: jnp.ndarray, dtype: Any) -> jnp.ndarray:
    """The exact coordinate part scale * units of query tokens q_tok and candidate tokens c_tok (broadcast),
    SPEC section 4 step 1: integer units (int32 without x64; make_grid keeps them in range), one product."""
    return grid_units(grid, q_tok, c_tok).astype(dtype) * jnp.asarray(grid.scale, dtype=dtype)


def select_block(q: jnp.ndarray, qtok: jnp.ndarray, cand_feats: jnp.ndarray, cand: Optional[jnp.ndarray], *,
                 k: int, metric: str, self_first: bool, precision: Any, grid: Optional[Grid] = None) -> jnp.ndarray:
    """Token indices [G, R, K] of one block in rank order (the query in slot 0 when self_first); a grid adds
    the exact coordinate part to the euclidean distance."""
    g, r = q.shape[0], q.shape[1]
    aff = affinity_block(metric, q, cand_feats, precision)
    s = aff.shape[-1]
    if self_first or grid is not None:
        cand_tok = lax.broadcasted_iota(qtok.dtype, (1, 1, s), 2) if cand is None else (
            cand[None, None, :] if cand.ndim == 1 else cand[:, None, :])
    if grid is not None:
        aff = aff - grid_part(grid, qtok[None, :, None], cand_tok.astype(qtok.dtype), aff.dtype)
    if self_first:
        aff = jnp.where(cand_tok == qtok[None, :, None], -jnp.inf, aff)
    slots = k - 1 if self_first else k
    parts = []
    if self_first:
        parts.append(jnp.broadcast_to(qtok[None, :, None], (g, r, 1)))
    if slots > 0:
        pos = top_k_lower_index(aff, slots).astype(qtok.dtype)
        if cand is None:
            tok = pos
        elif cand.ndim == 1:
            tok = cand[pos]
        else:
            tok = jnp.take_along_axis(cand[:, None, :], pos, axis=-1)
        parts.append(tok.astype(qtok.dtype))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


# ----------------------------------------------------------------------------- blocks of samples and rows
def plan_blocks(n_samples: int, n_query: int, per_row: int, budget: int) -> tuple[int, int]:
    """(samples per block, query rows per block) so that one block's largest temporary fits `budget` elements.

    Whole samples are grouped while they fit (the groups balanced, so the padding of the last one
    stays small); a sample too big on its own is split into balanced row blocks.
    """
    per_sample = n_query * per_row
    if per_sample <= budget:
        fit = max(1, min(n_samples, budget // per_sample))
        groups = -(-n_samples // fit)
        return -(-n_samples // groups), n_query
    blocks = -(-per_sample // max(budget, 1))
    return 1, -(-n_query // blocks)


def _pad_axis(a: jnp.ndarray, axis: int, size: int) -> jnp.ndarray:
    """a padded to `size` along axis by repeating its first entry (a valid row of any kind: index, feature, weight)."""
    extra = size - a.shape[axis]
    if extra == 0:
        return a
    first = lax.slice_in_dim(a, 0, 1, axis=axis)
    shape = list(a.shape)
    shape[axis] = extra
    return jnp.concatenate([a, jnp.broadcast_to(first, tuple(shape))], axis=axis)


def _leading(tree: Any) -> tuple[int, int]:
    leaf = jax.tree_util.tree_leaves(tree)[0]
    return int(leaf.shape[0]), int(leaf.shape[1])


def _map_rows(fn: Callable[..., Any], rowed: Any, row_consts: Any, consts: Any, rows: int) -> Any:
    """fn(rowed_block [g, R, ...], row_consts_block [R, ...], consts) over row blocks; outputs joined on axis 1."""
    g, n = _leading(rowed)
    if rows >= n:
        return fn(rowed, row_consts, consts)
    blocks = -(-n // rows)

    def split_rowed(a: jnp.ndarray) -> jnp.ndarray:
        a = _pad_axis(a, 1, blocks * rows)
        return jnp.moveaxis(a.reshape((g, blocks, rows) + a.shape[2:]), 1, 0)

    def split_row_consts(a: jnp.ndarray) -> jnp.ndarray:
        a = _pad_axis(a, 0, blocks * rows)
        return a.reshape((blocks, rows) + a.shape[1:])

    args = (jax.tree_util.tree_map(split_rowed, rowed), jax.tree_util.tree_map(split_row_consts, row_consts))
    out = lax.map(lambda a: fn(a[0], a[1], consts), args)

    def join(a: jnp.ndarray) -> jnp.ndarray:
        a = jnp.moveaxis(a, 0, 1)  # [x, blocks, R, ...]
        return a.reshape((a.shape[0], blocks * rows) + a.shape[3:])[:, :n]

    return jax.tree_util.tree_map(join, out)


def map_blocks(fn: Callable[..., Any], rowed: Any, consts: Any, *, row_consts: Any = None, heads: int = 1,
               per_row: int, budget: int, remat: bool = False) -> Any:
    """Run fn(rowed_block, row_consts_block, consts_block) -> pytree of [x, R, ...] over blocks of samples and rows.

    rowed: pytree of [G, Nq, ...] (G = B * heads groups, the heads of one sample stay in one block);
    row_consts: pytree of [Nq, ...] shared by every group (e.g. the query token indices); consts:
    pytree of [G, ...] per group. per_row is the largest temporary per query row and group. An
    output leaf holds x = g (one row per group) or g / heads (per sample) rows per block; leaves
    are joined to [G, Nq, ...] or [B, Nq, ...]. remat: rematerialise each block in the backward pass.
    """
    g_total, n_query = _leading(rowed)
    batch = g_total // heads
    per_sample, rows = plan_blocks(batch, n_query, heads * per_row, budget)
    body = jax.checkpoint(fn) if remat else fn
    groups = -(-batch // per_sample)
    if groups == 1:
        return _map_rows(body, rowed, row_consts, consts, rows)
    size = groups * per_sample * heads

    def split(a: jnp.ndarray) -> jnp.ndarray:
        a = _pad_axis(a, 0, size)
        return a.reshape((groups, per_sample * heads) + a.shape[1:])

    out = lax.map(lambda a: _map_rows(body, a[0], row_consts, a[1], rows),
                  (jax.tree_util.tree_map(split, rowed), jax.tree_util.tree_map(split, consts)))

    def join(a: jnp.ndarray) -> jnp.ndarray:
        valid = batch * (a.shape[1] // per_sample)
        return a.reshape((groups * a.shape[1],) + a.shape[2:])[:valid]

    return jax.tree_util.tree_map(join, out)
