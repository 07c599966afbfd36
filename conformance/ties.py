"""Tie cases: inputs with exact ties (small integers, duplicate tokens) and the indices the lower-index rule gives.

The expected indices are written out by hand from SPEC.md section 4 ("ties go to the lower token
index"), so they check the oracle as well as the backends.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from convnn import ConvNNConfig

from .dtypes import round_to

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
    return cases


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
