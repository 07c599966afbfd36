"""How close a case is to a tie: the smallest affinity gap that decides which neighbours (and in which rank) are chosen.

Computed in float64 with the spec's own building blocks, so cases can be drawn whose neighbour
indices every correct backend must reproduce exactly at the case's dtype.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from convnn.affinity import affinity_matrix
from convnn.attention import split_heads
from convnn.layers import coords_1d, coords_2d, interior_tokens, pad_1d, pad_2d, selection_features


def _map_features(case: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selection features of every padded token [B, N', F] and the queries' token indices."""
    cfg = case.cfg
    p = cfg.padding
    if x.ndim == 4:
        b, c, h, w = x.shape
        hp, wp = h + 2 * p, w + 2 * p
        tokens = np.transpose(pad_2d(np, x, p), (0, 2, 3, 1)).reshape(b, hp * wp, c)
        coords = coords_2d(np, hp, wp, x) if cfg.uses_coords else None
        queries = interior_tokens(np, h, w, p, x)
    else:
        b, c, length = x.shape
        tokens = np.transpose(pad_1d(np, x, p), (0, 2, 1))
        coords = coords_1d(np, length + 2 * p, x) if cfg.uses_coords else None
        queries = np.arange(length) + p
    return selection_features(np, cfg, tokens, coords), queries


def _query_key(case: Any, inputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query features [B', Nq, F], key features [B', N, F], query token indices [Nq])."""
    if case.op in ("convnn2d", "convnn1d", "identity_conv3x3", "identity_conv1x1"):
        sel, queries = _map_features(case, inputs["x"])
        return sel[:, queries], sel, queries
    if case.op == "select_neighbors":
        feats = inputs["feats"]
        q = inputs["query_feats"] if inputs.get("query_feats") is not None else feats
        return q, feats, np.arange(feats.shape[1])
    x = inputs["x"]
    qh = split_heads(np, x @ inputs["wq"].T, case.heads)
    kh = split_heads(np, x @ inputs["wk"].T, case.heads)
    return qh, kh, np.arange(x.shape[1])


def _candidates(case: Any, inputs: dict[str, Any], batch: int, n: int) -> np.ndarray:
    cand = inputs.get("candidates")
    if cand is None:
        cand = np.arange(n)
    cand = np.sort(np.asarray(cand, dtype=np.int64), axis=-1)
    if cand.ndim == 1:
        cand = np.broadcast_to(cand[None, :], (batch, cand.shape[0]))
    elif cand.shape[0] != batch:  # per-sample candidates shared by the heads of a sample
        cand = np.repeat(cand, batch // cand.shape[0], axis=0)
    return cand


def candidate_count(case: Any, inputs: dict[str, Any]) -> int:
    """The largest k the case's candidates allow (the spec raises beyond it)."""
    q, keys, queries = _query_key(case, inputs)
    cand = _candidates(case, inputs, keys.shape[0], keys.shape[1])
    n_cand = cand.shape[-1]
    if not case.cfg.self_first:
        return n_cand
    has_self = bool(np.any(cand[:, None, :] == queries[None, :, None]))
    return n_cand - (1 if has_self else 0) + 1


def affinity_rows(case: Any, inputs: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Affinities [B', Nq, S] of the selectable candidates (self masked to -inf with self_first) and the slot count."""
    q, keys, queries = _query_key(case, inputs)
    cand = _candidates(case, inputs, keys.shape[0], keys.shape[1])
    cand_feats = np.take_along_axis(keys, cand[:, :, None], axis=1)
    aff = affinity_matrix(np, case.cfg.metric, q, cand_feats)
    slots = case.cfg.k
    if case.cfg.self_first:
        aff = np.where(cand[:, None, :] == queries[None, :, None], -np.inf, aff)
        slots -= 1
    return aff, slots


def selection_margin(case: Any, inputs: dict[str, Any]) -> float:
    """Smallest deciding gap relative to the affinity scale: inf when nothing is decided by a comparison."""
    aff, slots = affinity_rows(case, inputs)
    if slots <= 0 or aff.shape[-1] == 0:
        return float("inf")
    finite = aff[np.isfinite(aff)]
    scale = max(float(np.max(np.abs(finite))) if finite.size else 1.0, 1e-12)
    ranked = -np.sort(-aff, axis=-1)  # descending, -inf (self) last
    width = min(slots + 1, ranked.shape[-1])
    head = ranked[..., :width]
    with np.errstate(invalid="ignore"):
        gaps = np.where(np.isfinite(head[..., 1:]), head[..., :-1] - head[..., 1:], np.inf)
    if case.cfg.order != "rank":
        gaps = gaps[..., slots - 1:slots]  # only the boundary between chosen and rejected decides the set
    if gaps.size == 0:
        return float("inf")
    return float(np.min(gaps)) / scale
