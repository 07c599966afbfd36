"""The numba selection's fast paths (block skip, floor, large row blocks) against a brute-force rank with the
lower-index tie rule: random inputs, all-equal affinities, K near the candidate count, candidate subsets, heads."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from convnn.backends.numba import select_kernels  # noqa: E402
from convnn.backends.numba.primitives import select_indices  # noqa: E402


def _affinities(q: np.ndarray, kf: np.ndarray, metric: str) -> np.ndarray:
    """[Nq, S] float64 affinities of query rows q [Nq, F] against candidate rows kf [S, F]."""
    q = q.astype(np.float64)
    kf = kf.astype(np.float64)
    if metric == "cosine":
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        kn = kf / np.maximum(np.linalg.norm(kf, axis=1, keepdims=True), 1e-12)
        return np.clip(qn @ kn.T, -1.0, 1.0)
    return (q @ kf.T) / np.sqrt(q.shape[1])


def _expected(x: np.ndarray, queries: np.ndarray, cand: np.ndarray, heads: int, metric: str, k: int,
              self_first: bool) -> np.ndarray:
    """[B, H, Nq, K] by a stable sort of the negated affinities (ties to the lower token)."""
    b, _, f = x.shape
    fh = f // heads
    out = np.empty((b, heads, queries.shape[0], k), dtype=np.int64)
    for bi in range(b):
        for h in range(heads):
            cols = slice(h * fh, (h + 1) * fh)
            aff = _affinities(x[bi][queries][:, cols], x[bi][cand][:, cols], metric)
            for r, qt in enumerate(queries):
                row = aff[r].copy()
                if self_first:
                    row[cand == qt] = -np.inf
                order = cand[np.argsort(-row, kind="stable")]
                if self_first:
                    out[bi, h, r] = np.concatenate([[qt], order[order != qt][:k - 1]])
                else:
                    out[bi, h, r] = order[:k]
    return out


def _select(x, queries, cand, heads, metric, k, self_first):
    rows = np.broadcast_to(cand[None], (x.shape[0], cand.shape[0]))
    return select_indices(x, queries, x, rows, queries, heads, metric, k, self_first)


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("self_first", [True, False])
@pytest.mark.parametrize("k", [1, 9, 40])
def test_random_matches_oracle(metric, self_first, k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((2, 300, 16))
    queries = np.arange(0, 300, 3)
    cand = np.arange(300)
    got = _select(x, queries, cand, 1, metric, k, self_first)
    np.testing.assert_array_equal(got, _expected(x, queries, cand, 1, metric, k, self_first))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("self_first", [True, False])
def test_all_equal_affinities_take_lowest_tokens(dtype, self_first):
    x = np.full((1, 200, 16), 0.25, dtype=dtype)  # unit rows: every cosine is exactly 1
    queries = np.array([0, 5, 100, 199])
    got = _select(x, queries, np.arange(200), 1, "cosine", 9, self_first)
    for r, qt in enumerate(queries):
        low = [t for t in range(12) if not (self_first and t == qt)]
        want = ([qt] + low[:8]) if self_first else low[:9]
        assert got[0, 0, r].tolist() == want


@pytest.mark.parametrize("self_first", [True, False])
def test_integer_ties_follow_lower_index(self_first):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, (2, 250, 16)).astype(np.float32)  # exact dots, many ties
    queries = np.arange(250)
    cand = np.arange(250)
    got = _select(x, queries, cand, 1, "dot", 7, self_first)
    np.testing.assert_array_equal(got, _expected(x, queries, cand, 1, "dot", 7, self_first))


@pytest.mark.parametrize("self_first", [True, False])
def test_k_close_to_candidate_count(self_first):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 70, 12))
    queries = np.arange(70)
    cand = np.arange(70)
    k = 70 if self_first else 69
    got = _select(x, queries, cand, 1, "cosine", k, self_first)
    np.testing.assert_array_equal(got, _expected(x, queries, cand, 1, "cosine", k, self_first))


def test_candidate_subset_and_heads():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 400, 32))
    cand = np.sort(rng.choice(400, 150, replace=False))
    queries = np.arange(400)
    for self_first in (True, False):
        got = _select(x, queries, cand, 2, "dot", 9, self_first)
        np.testing.assert_array_equal(got, _expected(x, queries, cand, 2, "dot", 9, self_first))


def test_clamped_cosine_does_not_displace_an_earlier_tie():
    """A raw dot of 1.0000001 clamps to 1.0: it ties an earlier 1.0 and must not replace it (both scans)."""
    row = np.array([1.0, 1.0, 0.5, 1.0000001, 1.0000002] + [0.0] * 60, dtype=np.float32)
    cand = np.arange(row.shape[0])
    for blocked in (False, True):
        vals = np.empty(2)
        ids = np.empty(2, dtype=np.int64)
        if blocked:
            nb = -(-row.shape[0] // select_kernels.SCAN_BLOCK)
            select_kernels._top_slots_blocked(row, cand, -1, False, 2, vals, ids, 0, 1.0, np.empty(nb),
                                              np.empty(6), np.empty(3), np.empty(nb, dtype=np.int64))
        else:
            select_kernels._top_slots(row, cand, -1, False, 2, vals, ids, 0, 0.0, row, 1.0)
        assert ids.tolist() == [0, 1]
        assert vals.tolist() == [1.0, 1.0]
