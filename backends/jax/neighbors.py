"""The chunked ConvNN engine: per block of query rows, affinities -> top-K -> weights -> gather -> taps.

Query rows are processed in blocks with lax.map, so the live working set is one block's
[G, R, S] affinities and [G, R, K, C] gathered values, never [G, N, K, C] for all rows. Each block
is rematerialised in the backward pass except for its neighbour indices, which are kept (they are
small ints), so training memory stays bounded too. Indices carry no gradient; with softmax
weighting the K selected affinities are recomputed from the features so that their gradient
flows to the features without a dense [N, S] backward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from convnn_core.affinity import EPS_NORM
from convnn_core.config import ConvNNConfig

from .topk import top_k_lower_index

NEIGHBORS_NAME = "convnn_neighbor_indices"
CPU_BLOCK_ELEMENTS = 1 << 20  # 4 MiB of float32: blocks stay in cache
ACCELERATOR_BLOCK_ELEMENTS = 1 << 26  # large blocks keep a GPU busy


@dataclass(frozen=True)
class EngineOptions:
    """Static knobs: matmul precision ('highest' keeps float32 exact on GPUs with TF32) and the block budget."""

    precision: Optional[str] = "highest"
    block_elements: Optional[int] = None  # elements of the largest per-block temporary; None: by device


PRECISIONS = {"default": lax.Precision.DEFAULT, "high": lax.Precision.HIGH, "highest": lax.Precision.HIGHEST}


def _precision(opts: EngineOptions) -> Any:
    return None if opts.precision is None else PRECISIONS[opts.precision]


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


def candidate_features(sel: jnp.ndarray, cand: Optional[jnp.ndarray]) -> jnp.ndarray:
    """The candidates' selection features [G, S, F], without gradient (selection is piecewise constant)."""
    sel = lax.stop_gradient(sel)
    if cand is None:
        return sel
    if cand.ndim == 1:
        return jnp.take(sel, cand, axis=1)
    return jnp.take_along_axis(sel, cand[:, :, None], axis=1)


def select_block(cfg: ConvNNConfig, q: jnp.ndarray, qtok: jnp.ndarray, cand_feats: jnp.ndarray,
                 cand: Optional[jnp.ndarray], precision: Any) -> jnp.ndarray:
    """Token indices [G, R, K] of one block in rank order (self in slot 0 when self_first)."""
    g, r = q.shape[0], q.shape[1]
    aff = affinity_block(cfg.metric, lax.stop_gradient(q), cand_feats, precision)
    s = aff.shape[-1]
    if cfg.self_first:
        cand_tok = lax.broadcasted_iota(qtok.dtype, (1, 1, s), 2) if cand is None else (
            cand[None, None, :] if cand.ndim == 1 else cand[:, None, :])
        aff = jnp.where(cand_tok == qtok[None, :, None], -jnp.inf, aff)
    slots = cfg.k - 1 if cfg.self_first else cfg.k
    parts = []
    if cfg.self_first:
        parts.append(jnp.broadcast_to(qtok[None, :, None], (g, r, 1)))
    if slots > 0:
        pos = top_k_lower_index(aff, slots).astype(qtok.dtype)
        if cand is None:
            tok = pos
        elif cand.ndim == 1:
            tok = cand[pos]
        else:
            tok = jnp.take_along_axis(cand[:, None, :], pos, axis=-1)
        parts.append(tok)
    tok = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
    return lax.stop_gradient(tok)


def slot_affinities(cfg: ConvNNConfig, q: jnp.ndarray, sel: jnp.ndarray, tok: jnp.ndarray) -> jnp.ndarray:
    """The selected affinities [G, R, K], recomputed from the features so that they are differentiable."""
    return paired_affinity(cfg.metric, q[:, :, None, :], gather_rows(sel, tok))


def slot_weights(cfg: ConvNNConfig, aff: jnp.ndarray) -> jnp.ndarray:
    """rho: softmax over the K slots; slot 0 uses self_logit when the config sets one."""
    self_logit = cfg.softmax_self_logit
    if self_logit is not None:
        aff = jnp.concatenate([jnp.full(aff.shape[:-1] + (1,), self_logit, dtype=aff.dtype), aff[..., 1:]], axis=-1)
    return jax.nn.softmax(aff, axis=-1)


def position_order(tok: jnp.ndarray, *aligned: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    """Re-sort the K slots by token index (order='position'), carrying aligned arrays along."""
    return tuple(lax.sort((tok,) + aligned, dimension=-1, num_keys=1))


def plan_blocks(n_samples: int, n_query: int, per_row: int, budget: int) -> tuple[int, int]:
    """(samples per block, query rows per block) so that one block's largest temporary fits `budget` elements.

    Whole samples are grouped while they fit; a sample too big on its own is split into row blocks.
    """
    per_sample = n_query * per_row
    if per_sample <= budget:
        return max(1, min(n_samples, budget // per_sample)), n_query
    blocks = -(-per_sample // max(budget, 1))
    return 1, -(-n_query // blocks)


def _pad_axis0(a: jnp.ndarray, size: int) -> jnp.ndarray:
    extra = size - a.shape[0]
    return a if extra == 0 else jnp.concatenate([a, jnp.zeros((extra,) + a.shape[1:], a.dtype)], axis=0)


def _map_rows(fn: Callable[..., Any], q: jnp.ndarray, qtok: jnp.ndarray, consts: Any, rows: int) -> Any:
    """fn(q_block [G, R, F], qtok_block [R], consts) over row blocks of q [G, Nq, F]; outputs joined on axis 1."""
    g, n, f = q.shape
    if rows >= n:
        return fn(q, qtok, consts)
    blocks = -(-n // rows)
    pad = blocks * rows - n
    if pad:
        q = jnp.concatenate([q, jnp.zeros((g, pad, f), q.dtype)], axis=1)
        qtok = jnp.concatenate([qtok, jnp.broadcast_to(qtok[:1], (pad,))])
    qb = jnp.moveaxis(q.reshape(g, blocks, rows, f), 1, 0)
    out = lax.map(lambda args: fn(args[0], args[1], consts), (qb, qtok.reshape(blocks, rows)))

    def join(a: jnp.ndarray) -> jnp.ndarray:
        a = jnp.moveaxis(a, 0, 1)  # [X, blocks, R, ...]
        return a.reshape((a.shape[0], blocks * rows) + a.shape[3:])[:, :n]

    return jax.tree_util.tree_map(join, out)


def map_blocks(fn: Callable[..., Any], q: jnp.ndarray, qtok: jnp.ndarray, consts: Any, *, heads: int,
               per_row: int, budget: int) -> Any:
    """Run fn(q_block [g, R, F], qtok_block [R], consts_block) -> pytree of [x, R, ...] over blocks of samples and rows.

    q [G, Nq, F] and every leaf of consts [G, ...] hold G = B * heads groups (the heads of one sample
    stay in one block); per_row is the largest temporary per query row and group. Outputs are
    joined to [B, Nq, ...]. Blocks run under lax.map and are rematerialised in the backward pass
    except for the values tagged NEIGHBORS_NAME.
    """
    g_total, n_query, _ = q.shape
    batch = g_total // heads
    per_sample, rows = plan_blocks(batch, n_query, heads * per_row, budget)
    body = jax.checkpoint(fn, policy=jax.checkpoint_policies.save_only_these_names(NEIGHBORS_NAME))
    groups = -(-batch // per_sample)
    if groups == 1:
        return _map_rows(body, q, qtok, consts, rows)
    size = groups * per_sample * heads

    def split(a: jnp.ndarray) -> jnp.ndarray:
        a = _pad_axis0(a, size)
        return a.reshape((groups, per_sample * heads) + a.shape[1:])

    out = lax.map(lambda args: _map_rows(body, args[0], qtok, args[1], rows),
                  (split(q), jax.tree_util.tree_map(split, consts)))
    return jax.tree_util.tree_map(lambda a: a.reshape((groups * a.shape[1],) + a.shape[2:])[:batch], out)


def _per_group_candidates(cand: Optional[jnp.ndarray]) -> tuple[Optional[jnp.ndarray], Optional[jnp.ndarray]]:
    """(shared [S] candidates or None, per-group [G, S] candidates or None)."""
    if cand is None or cand.ndim == 1:
        return cand, None
    return None, cand


def neighbors(cfg: ConvNNConfig, q: jnp.ndarray, sel: jnp.ndarray, qtok: jnp.ndarray,
              cand: Optional[jnp.ndarray], opts: EngineOptions) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Indices and affinities [G, Nq, K] (cfg.order applied) for queries q [G, Nq, F] against sel [G, N, F]."""
    precision = _precision(opts)
    shared, own = _per_group_candidates(cand)
    consts = {"sel": sel, "cand_feats": candidate_features(sel, cand), "cand": own}
    per_row = max(consts["cand_feats"].shape[1], cfg.k * sel.shape[-1])

    def block(qb: jnp.ndarray, tb: jnp.ndarray, c: dict) -> tuple[jnp.ndarray, jnp.ndarray]:
        cb = shared if c["cand"] is None else c["cand"]
        tok = checkpoint_name(select_block(cfg, qb, tb, c["cand_feats"], cb, precision), NEIGHBORS_NAME)
        aff = slot_affinities(cfg, qb, c["sel"], tok)
        return position_order(tok, aff) if cfg.order == "position" else (tok, aff)

    return map_blocks(block, q, qtok, consts, heads=1, per_row=per_row, budget=block_budget(opts))


def aggregate(cfg: ConvNNConfig, q: jnp.ndarray, sel: jnp.ndarray, values: jnp.ndarray, qtok: jnp.ndarray,
              cand: Optional[jnp.ndarray], reduce: Callable[[jnp.ndarray], jnp.ndarray], opts: EngineOptions,
              heads: int = 1) -> jnp.ndarray:
    """reduce(rho-weighted gathered values [g, R, K, C]) -> [g / heads, R, O] per block, joined to [B, Nq, O]."""
    precision = _precision(opts)
    shared, own = _per_group_candidates(cand)
    consts = {"sel": sel, "values": values, "cand_feats": candidate_features(sel, cand), "cand": own}
    per_row = max(consts["cand_feats"].shape[1], cfg.k * values.shape[-1], cfg.k * sel.shape[-1])

    def block(qb: jnp.ndarray, tb: jnp.ndarray, c: dict) -> jnp.ndarray:
        cb = shared if c["cand"] is None else c["cand"]
        tok = checkpoint_name(select_block(cfg, qb, tb, c["cand_feats"], cb, precision), NEIGHBORS_NAME)
        rho = None
        if cfg.weighting == "softmax":
            rho = slot_weights(cfg, slot_affinities(cfg, qb, c["sel"], tok))
        if cfg.order == "position":
            tok, rho = position_order(tok, rho) if rho is not None else (position_order(tok)[0], None)
        gathered = gather_rows(c["values"], tok)
        if rho is not None:
            gathered = gathered * rho[..., None]
        return reduce(gathered)

    return map_blocks(block, q, qtok, consts, heads=heads, per_row=per_row, budget=block_budget(opts))


def block_budget(opts: EngineOptions) -> int:
    """The block budget in elements: the option, else small (cache-sized) on CPUs and large on accelerators."""
    if opts.block_elements is not None:
        return opts.block_elements
    return CPU_BLOCK_ELEMENTS if jax.default_backend() == "cpu" else ACCELERATOR_BLOCK_ELEMENTS
