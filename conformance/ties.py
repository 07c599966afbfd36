"""Tie cases: inputs with exact ties (small integers, duplicate tokens) and the indices the lower-index rule gives.

The expected indices are written out by hand from SPEC.md section 4 ("ties go to the lower token
index"), so they check the oracle as well as the backends.

Structural tie cases (`structural_tie_cases`): euclidean position/blend selection on maps, where
candidates tie exactly because coordinates sit on a regular grid (padding tokens mirrored about a
border query, the rings of equally distant tokens). SPEC.md section 4 step 1 makes those ties exact
on every backend (the coordinate part from integer offsets), so the lower index decides them. The
"inputs free of near-ties" generator cannot produce such cases (a structural tie is a zero gap);
here the inputs are random but drawn (by seed) so that every gap that is not a structural tie is
clear of rounding at the case's dtype. The aggregated values carry coordinates or distinct random
features, so a tie broken differently shows in the output.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from convnn import ConvNNConfig
from convnn.affinity import affinity_matrix
from convnn.grid import grid_distance, make_grid
from convnn.layout import interior_tokens, pad, to_tokens
from convnn.pipeline import selection_features

from .dtypes import round_to
from .tolerances import SELECTION_MARGIN

# scores 1, 3, 3, 2, 3 for every query (DESIGN.md's example): the top 3 by the rule are 1, 2, 4
_SCORES = [1.0, 3.0, 3.0, 2.0, 3.0]
_EUCLID = [0.0, 2.0, 0.0, 2.0, 1.0]
_COSINE = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 1.0]]


def _select(cid: str, dtype: str, cfg: ConvNNConfig, expected: list[list[int]], n: int, f: int,
            query_feats: bool = False, candidates: str = "none", note: str = "") -> Any:
    from .cases import Case

    return Case(f"tie-{cid}-{dtype}", 1, "select_neighbors", cfg, {"B": 1, "N": n, "F": f}, dtype, 0,
                candidates=candidates, bias=False, query_feats=query_feats,
                expected_indices=tuple(tuple(row) for row in expected), note=note, tags=("tie",))


def tie_cases(dtype: str) -> list[Any]:
    """Hand-written tie cases for select_neighbors (exact expected indices) and for the map ops."""
    from .cases import Case

    dot = ConvNNConfig(k=3, select="feature", metric="dot", self_first=False, order="rank", padding=0)
    euc = dot.replace(metric="euclidean")
    cos = dot.replace(metric="cosine", self_first=True)
    cases = [
        _select("dot-rank", dtype, dot, [[1, 2, 4]] * 5, 5, 1, query_feats=True,
                note="scores 1,3,3,2,3: three-way tie, lower indices first"),
        _select("dot-self", dtype, dot.replace(self_first=True),
                [[0, 1, 2], [1, 2, 4], [2, 1, 4], [3, 1, 2], [4, 1, 2]], 5, 1, query_feats=True,
                note="self first, then the tie among the rest"),
        _select("dot-position", dtype, dot.replace(k=2, order="position"), [[1, 2]] * 5, 5, 1, query_feats=True,
                note="tie decides the set; order=position sorts it"),
        _select("dot-candidates", dtype, dot.replace(k=2, sampling="random", num_samples=3), [[2, 4]] * 5, 5, 1,
                query_feats=True, candidates="shared", note="candidates 0,2,4: tie between 2 and 4 both kept"),
        _select("euclid-dup", dtype, euc, [[0, 2, 4], [1, 3, 4], [0, 2, 4], [1, 3, 4], [4, 0, 1]], 5, 1,
                note="duplicate points: equal distances"),
        _select("cosine-dup", dtype, cos, [[0, 2, 3], [1, 4, 0], [2, 0, 3], [3, 0, 2], [4, 0, 1]], 5, 2,
                note="parallel vectors: equal cosines"),
    ]
    tie_map = ConvNNConfig(k=3, select="feature", metric="dot", self_first=False, order="rank", padding=0,
                           aggregate_coords=True)
    cases.append(Case(f"tie-conv1d-{dtype}", 1, "convnn1d", tie_map.replace(k=2), {"B": 1, "C": 1, "L": 6, "O": 2}, dtype, 11,
                      note="tied features, coordinates in the values make the choice visible", tags=("tie",)))
    cases.append(Case(f"tie-conv2d-{dtype}", 1, "convnn2d", tie_map.replace(k=4), {"B": 1, "C": 1, "H": 3, "W": 4, "O": 2},
                      dtype, 12, note="tied features on a map, coordinates in the values", tags=("tie",)))
    return cases + structural_tie_cases(dtype)


# ----------------------------------------------------------------------------- structural ties (SPEC 4, step 1)
def _grid_cfg(**kw: Any) -> ConvNNConfig:
    base: dict[str, Any] = dict(select="position", metric="euclidean", self_first=True, order="rank", padding=1)
    base.update(kw)
    return ConvNNConfig(**base)


# name, op, shape, config, note
STRUCTURAL = (
    ("blend-5x7", "convnn2d", {"B": 2, "C": 3, "H": 5, "W": 7, "O": 4},
     _grid_cfg(k=6, select="blend", blend=0.7, aggregate_coords=True),
     "the issue's Loc_Col/Loc_Col case: padding tokens mirrored about border queries"),
    ("blend-6x4-p2-position-order", "convnn2d", {"B": 1, "C": 2, "H": 6, "W": 4, "O": 3},
     _grid_cfg(k=7, select="blend", blend=0.4, order="position", padding=2),
     "non-square, padding 2, the tie decides the set"),
    ("blend-3x7-p2-softmax", "convnn2d", {"B": 1, "C": 3, "H": 3, "W": 7, "O": 2},
     _grid_cfg(k=8, select="blend", blend=0.6, padding=2, weighting="softmax", taps="depthwise",
               aggregate_coords=True), "odd non-square, every query at a border, softmax weights"),
    ("blend-5x5-no-self", "convnn2d", {"B": 2, "C": 2, "H": 5, "W": 5, "O": 3},
     _grid_cfg(k=5, select="blend", blend=0.5, self_first=False, aggregate_coords=True), "odd square, self not first"),
    ("position-5x7-rank", "convnn2d", {"B": 1, "C": 2, "H": 5, "W": 7, "O": 3}, _grid_cfg(k=6),
     "rings of equally distant tokens in rank order"),
    ("position-4x6-p2-rank", "convnn2d", {"B": 1, "C": 2, "H": 4, "W": 6, "O": 2}, _grid_cfg(k=10, padding=2),
     "non-square, padding 2"),
    ("position-5x5-position-order", "convnn2d", {"B": 2, "C": 3, "H": 5, "W": 5, "O": 2},
     _grid_cfg(k=10, order="position"), "the 3x3 window plus one of four tokens two steps away"),
    ("position-7x3-softmax", "convnn2d", {"B": 1, "C": 2, "H": 7, "W": 3, "O": 3},
     _grid_cfg(k=5, weighting="softmax", aggregate_coords=True), "tall map, softmax over tied slots"),
    ("position-5x5-spatial", "convnn2d", {"B": 1, "C": 2, "H": 5, "W": 5, "O": 2},
     _grid_cfg(k=4, sampling="spatial", num_samples=9), "an evenly spaced candidate grid: ties among candidates"),
    ("position-1d-rank", "convnn1d", {"B": 2, "C": 2, "L": 7, "O": 3}, _grid_cfg(k=4, padding=2),
     "1-D: left and right neighbours tie"),
    ("blend-1d-position-order", "convnn1d", {"B": 2, "C": 3, "L": 8, "O": 2},
     _grid_cfg(k=4, select="blend", blend=0.7, padding=2, order="position", aggregate_coords=True),
     "1-D blend, padding tokens mirrored about the end queries"),
)
STRUCTURAL_SEEDS = 300
# The smallest gap (relative to the affinity scale) between affinities that are not an exact structural tie.
# The generated cases' SELECTION_MARGIN asks 2e-3 at float32 of every ranked gap, which rank-ordered blend
# selection over 35-70 border-heavy queries never reaches; the float32 rounding of a euclidean feature part
# is a few ulp of the scale (ulp 1.2e-7), so 3e-5 (about 250 ulp) still keeps every such gap clear of it.
STRUCTURAL_MARGIN: dict[str, float] = dict(SELECTION_MARGIN, float32=3e-5)


def structural_tie_cases(dtype: str) -> list[Any]:
    """Map cases whose selection holds exact structural ties; each input otherwise clear of near-ties at the dtype.

    A case whose inputs cannot be drawn clear of near-ties at the dtype within STRUCTURAL_SEEDS seeds
    is left out (blend at bfloat16/float16); at float64 and float32 every case exists (tested)."""
    return list(_structural_tie_cases(dtype))


@functools.lru_cache(maxsize=None)
def _structural_tie_cases(dtype: str) -> tuple[Any, ...]:
    from .cases import Case, make_inputs

    out = []
    for i, (name, op, shape, cfg, note) in enumerate(STRUCTURAL):
        cand = "shared" if cfg.sampling != "all" else "none"
        for t in range(STRUCTURAL_SEEDS):
            case = Case(f"stie-{name}-{dtype}", 1, op, cfg, dict(shape), dtype, 4000 + 100 * i + 7919 * t,
                        candidates=cand, bias=True, note=note, tags=("structural-tie",))
            ties, margin = structural_margin(case, make_inputs(case))
            if ties > 0 and margin >= STRUCTURAL_MARGIN[dtype]:
                out.append(case)
                break
    return tuple(out)


def structural_affinities(case: Any, inputs: dict[str, Any]) -> tuple[np.ndarray, int]:
    """The spec's affinities [B, Nq, S] of a grid case in float64 (self masked to -inf) and the slot count."""
    from .cases import n_tokens

    cfg, x = case.cfg, np.asarray(inputs["x"], dtype=np.float64)
    p = cfg.padding
    spatial = tuple(x.shape[2:])
    padded = tuple(n + 2 * p for n in spatial)
    tokens = to_tokens(np, pad(np, x, p, np.zeros))
    n = n_tokens(case)
    feats = selection_features(np, cfg, tokens, np.zeros((n, 0)))  # the feature part (none for position)
    queries = interior_tokens(spatial, p)
    cand = inputs.get("candidates")
    cand = np.arange(n) if cand is None else np.sort(np.asarray(cand, dtype=np.int64))
    grid = make_grid(cfg, padded)
    assert grid is not None, f"{case.id} has no grid (needs select position/blend with metric euclidean)"
    aff = affinity_matrix(np, "euclidean", feats[:, queries], feats[:, cand])
    aff = aff - grid_distance(np, grid, queries[None, :, None], cand[None, None, :], np.float64)
    slots = cfg.k
    if cfg.self_first:
        aff = np.where(cand[None, None, :] == queries[None, :, None], -np.inf, aff)
        slots -= 1
    return aff, slots


def structural_margin(case: Any, inputs: dict[str, Any]) -> tuple[int, float]:
    """(exact ties that decide the selection, smallest other deciding gap relative to the affinity scale).

    Exact ties (equal float64 affinities: equal features and offsets) are decided by the lower-index
    rule on every backend; every other gap must be clear of the dtype's rounding. Position selection
    has no feature part, so its gaps are whole grid units: exact in any working precision (inf)."""
    aff, slots = structural_affinities(case, inputs)
    ranked = -np.sort(-aff, axis=-1)[..., : slots + 1]
    gaps = ranked[..., :-1] - ranked[..., 1:]
    if case.cfg.order != "rank":
        gaps = gaps[..., slots - 1:slots]  # only the boundary decides the set
    finite = gaps[np.isfinite(gaps)]
    ties = int(np.sum(finite == 0.0))
    if case.cfg.select == "position":
        return ties, float("inf")
    others = finite[finite > 0.0]
    scale = max(float(np.max(np.abs(aff[np.isfinite(aff)]))), 1e-12)
    return ties, (float(np.min(others)) / scale if others.size else float("inf"))


def tie_inputs(case: Any) -> dict[str, Any]:
    """Inputs of a tie case: integer-valued features whose ties are exact in every float dtype."""
    out: dict[str, Any] = {"candidates": None}
    if case.op == "select_neighbors":
        if case.cfg.metric == "dot":
            out["feats"] = np.asarray(_SCORES)[None, :, None]
            out["query_feats"] = np.ones((1, 5, 1))
        elif case.cfg.metric == "euclidean":
            out["feats"] = np.asarray(_EUCLID)[None, :, None]
            out["query_feats"] = None
        else:
            out["feats"] = np.asarray(_COSINE)[None]
            out["query_feats"] = None
        if case.candidates != "none":
            out["candidates"] = np.asarray([0, 2, 4], dtype=np.int64)
        return out
    rng = np.random.default_rng(case.seed)
    s = case.shape
    spatial = (s["H"], s["W"]) if case.op == "convnn2d" else (s["L"],)
    n = int(np.prod(spatial))
    values = np.asarray([1.0, 3.0, 3.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 3.0, 2.0, 2.0])[:n]
    out["x"] = values.reshape((1, 1) + spatial)
    c_agg = 1 + len(spatial)
    out["weight"] = round_to(rng.standard_normal((s["O"], c_agg, case.cfg.k)), case.dtype)
    out["bias"] = round_to(rng.standard_normal(s["O"]), case.dtype)
    return out
