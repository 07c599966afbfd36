"""Neighbour selection (SPEC.md section 4, steps 1-4): top-K with self first, lower-index ties, weights, order."""
from __future__ import annotations

from typing import Any, Optional

from ._xp import is_traced, take_last, take_rows
from .affinity import affinity_matrix, paired_affinity
from .config import ConvNNConfig
from .grid import grid_distance


def _broadcast_candidates(xp: Any, cand: Optional[Any], batch: int, n_tokens: int, like: Any) -> Any:
    from ._xp import device

    if cand is None:
        cand = xp.arange(n_tokens, dtype=xp.int64, device=device(like))
    if cand.ndim == 1:
        cand = xp.broadcast_to(cand[None, :], (batch, cand.shape[0]))
    return cand


class NotEnoughCandidates(ValueError):
    """Fewer candidates (or fewer valid ones, under a key-padding mask) than the K slots a query must fill."""


def check_candidate_count(xp: Any, k: int, self_first: bool, is_self: Optional[Any], n_cand: int) -> None:
    """Raise ValueError when fewer candidates exist than the K (or K-1 besides self) slots to fill.

    Plain k and self_first (not the config): the check also runs inside a torch.compile trace, where
    some torch versions cannot hand a frozen dataclass to a constant-folded call."""
    needed = k - 1 if self_first else k
    available = n_cand
    if is_self is not None and n_cand > 0:
        if is_traced(is_self):
            available = n_cand - 1
        elif bool(xp.any(is_self)):
            available = n_cand - 1
    if available < needed:
        what = "other candidates besides the query itself" if self_first else "candidates"
        raise NotEnoughCandidates(
            f"ConvNNConfig.k={k} needs {needed} {what}, but only {available} are available "
            f"(candidate count {n_cand}); lower k or use more candidates"
        )


def select_ranked(
    xp: Any,
    cfg: ConvNNConfig,
    query_feats: Any,
    key_feats: Any,
    queries: Optional[Any],
    cand: Optional[Any],
    grid: Optional[Any] = None,
) -> tuple[Any, Any]:
    """Indices [B, Nq, K] and affinities [B, Nq, K] in rank order (self in slot 0 when self_first).

    query_feats [B, Nq, F] are the queries' selection features, key_feats [B, N, F] those of all
    tokens; queries [Nq] are the queries' token indices (needed for self_first); cand [S] or [B, S]
    sorted candidate token indices or None for all. Ties go to the lower token index because the
    candidates are sorted and the sort over them is stable. With a grid (convnn.grid.Grid, metric
    euclidean) the features are the feature part only and the exact coordinate part of the queries'
    and candidates' token offsets is added to the squared distance (SPEC section 4, step 1).
    """
    batch, n_tokens = key_feats.shape[0], key_feats.shape[1]
    n_query = query_feats.shape[1]
    cand = _broadcast_candidates(xp, cand, batch, n_tokens, key_feats)
    n_cand = cand.shape[-1]
    cand_feats = take_rows(xp, key_feats, cand)
    aff = affinity_matrix(xp, cfg.metric, query_feats, cand_feats)
    if grid is not None:
        if queries is None:
            raise ValueError("a grid needs the queries' token indices")
        aff = aff - grid_distance(xp, grid, queries[None, :, None], cand[:, None, :], aff.dtype)
    is_self = None
    if cfg.self_first:
        if queries is None:
            raise ValueError("self_first=True needs the queries' token indices")
        is_self = cand[:, None, :] == queries[None, :, None]
    check_candidate_count(xp, cfg.k, cfg.self_first, is_self, n_cand)
    slots = cfg.k - 1 if cfg.self_first else cfg.k
    key = -aff
    if is_self is not None:
        key = xp.where(is_self, xp.asarray(float("inf"), dtype=aff.dtype), key)
    order = xp.argsort(xp.asarray(key), axis=-1, stable=True)[..., :slots]
    top_aff = take_last(xp, aff, order)
    cand_rows = xp.broadcast_to(cand[:, None, :], (batch, n_query, n_cand))
    top_idx = take_last(xp, cand_rows, order)
    if not cfg.self_first:
        return top_idx, top_aff
    query_rows = xp.broadcast_to(queries[None, :], (batch, n_query))
    self_aff = paired_affinity(xp, cfg.metric, query_feats, take_rows(xp, key_feats, query_rows))
    idx = xp.concat([query_rows[:, :, None], top_idx], axis=-1)
    aff_all = xp.concat([self_aff[:, :, None], top_aff], axis=-1)
    return idx, aff_all


def neighbor_weights(xp: Any, cfg: ConvNNConfig, aff: Any) -> Optional[Any]:
    """rho [B, Nq, K]: None for weighting='none', else softmax over the K slots (slot 0 may use self_logit)."""
    if cfg.weighting == "none":
        return None
    logits = aff
    self_logit = cfg.softmax_self_logit
    if self_logit is not None:
        first = xp.full(tuple(aff.shape[:-1]) + (1,), self_logit, dtype=aff.dtype, device=_dev(aff))
        logits = xp.concat([first, aff[..., 1:]], axis=-1)
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(shifted)
    return e / xp.sum(e, axis=-1, keepdims=True)


def _dev(x: Any) -> Any:
    from ._xp import device

    return device(x)
