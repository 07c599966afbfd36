"""The numba selection's fast paths (block skip, floor, large row blocks, the symmetric one-image-per-thread kernel)
against a brute-force rank with the lower-index tie rule: random inputs, all-equal affinities, K near the candidate
count, candidate subsets, heads, all-zero rows. Every test runs on both selection kernels where they apply."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from convnn.backends.numba import primitives, select_kernels, self_select_kernels  # noqa: E402
from convnn.backends.numba.primitives import select_indices  # noqa: E402


@pytest.fixture(autouse=True, params=["row-blocks", "symmetric"])
def kernel(request, monkeypatch):
    """Run each test with the symmetric kernel taken whenever it applies, then with it never taken."""
    monkeypatch.setattr(primitives, "SELF_SELECT_ITEMS_PER_THREAD", 0 if request.param == "symmetric" else 10 ** 9)
    return request.param


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


def _spy_symmetric(monkeypatch) -> list:
    calls = []
    real = self_select_kernels.select_self

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(self_select_kernels, "select_self", spy)
    return calls


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("self_first", [True, False])
@pytest.mark.parametrize("k", [9, 40])  # 40: more than a row's positive affinities, so zeros enter the top-K
def test_zero_rows_padding_and_zero_queries(kernel, metric, self_first, k, monkeypatch):
    """A zero-padded map: padding and all-zero queries have affinity exactly 0 with every token, and rows on
    disjoint channel groups exactly 0 with each other, so the lowest tokens must win those ties."""
    calls = _spy_symmetric(monkeypatch)
    rng = np.random.default_rng(11)
    inner = rng.standard_normal((3, 12, 12, 8))
    group = rng.integers(0, 2, (3, 12, 12, 1))
    inner *= np.where(np.arange(8) < 4, group == 0, group == 1)  # each row on channels 0-3 or 4-7 only
    inner *= rng.random((3, 12, 12, 1)) > 0.25  # a quarter of the rows all zero
    grid = np.zeros((3, 14, 14, 8))
    grid[:, 1:-1, 1:-1] = inner
    x = grid.reshape(3, 196, 8)
    queries = (np.arange(1, 13)[:, None] * 14 + np.arange(1, 13)[None]).ravel()  # the interior tokens
    got = _select(x, queries, np.arange(196), 1, metric, k, self_first)
    np.testing.assert_array_equal(got, _expected(x, queries, np.arange(196), 1, metric, k, self_first))
    assert len(calls) == (1 if kernel == "symmetric" else 0)


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mirrored_pairs_find_each_other_across_block_rows(kernel, metric, dtype, monkeypatch):
    """Token i and token n-1-i nearly coincide, so every row's best cosine neighbour sits at the other end of the
    matrix: the first row's in the last column of the first tile, the last row's in the first tile, and
    the middle rows' near the diagonal (300 rows: three block rows, the last one short)."""
    calls = _spy_symmetric(monkeypatch)
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 300, 16))
    x[:, 150:] = x[:, 149::-1] + 0.05 * rng.standard_normal((2, 150, 16))
    x = x.astype(dtype)
    every = np.arange(300)
    for k in (2, 9):
        got = _select(x, every, every, 1, metric, k, True)
        np.testing.assert_array_equal(got, _expected(x, every, every, 1, metric, k, True))
        if metric == "cosine":  # (a dot product also rewards long rows)
            np.testing.assert_array_equal(got[:, 0, :, 1], np.broadcast_to(every[::-1], (2, 300)))
    assert len(calls) == (2 if kernel == "symmetric" else 0)


def test_symmetric_kernel_equals_row_blocks_on_float32_maps(monkeypatch):
    """The VGG case (float32, padded 20x20 map, K=9, several block rows): both kernels give the same indices."""
    rng = np.random.default_rng(12)
    grid = np.zeros((4, 22, 22, 16), dtype=np.float32)
    grid[:, 1:-1, 1:-1] = np.maximum(rng.standard_normal((4, 20, 20, 16)), 0.0)
    x = grid.reshape(4, 484, 16)
    queries = (np.arange(1, 21)[:, None] * 22 + np.arange(1, 21)[None]).ravel()
    calls = _spy_symmetric(monkeypatch)
    both = {}
    for items in (0, 10 ** 9):
        monkeypatch.setattr(primitives, "SELF_SELECT_ITEMS_PER_THREAD", items)
        both[items] = _select(x, queries, np.arange(484), 1, "cosine", 9, True)
    assert len(calls) == 1
    np.testing.assert_array_equal(both[0], both[10 ** 9])


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("self_first", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_select_with_affinity_scores_the_slots_it_returns(kernel, metric, self_first, dtype):
    """The affinities that come with the indices (from the symmetric kernel's scan, or scored afterwards) are the
    slots' affinities, zero queries and the self slot included."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 150, 8)).astype(dtype)
    x[:, ::7] = 0.0  # zero rows among queries and candidates
    queries = np.arange(0, 150, 2)
    rows = np.broadcast_to(np.arange(150)[None], (2, 150))
    idx, aff = primitives.select_with_affinity(x, queries, x, rows, queries, 2, metric, 9, self_first)
    np.testing.assert_array_equal(idx, select_indices(x, queries, x, rows, queries, 2, metric, 9, self_first))
    want = primitives.slot_affinity(np.ascontiguousarray(x[:, queries]), x, idx, metric)
    assert aff.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(aff, want, rtol=tol, atol=tol)


def test_tiny_rows_are_not_taken_for_zero_rows(kernel):
    """A float32 row of 1e-25s has squares that underflow to 0, yet it is not a zero row: its cosine with a
    parallel row is 1, so it must not lose to the lowest tokens as a zero row would."""
    x = np.zeros((2, 40, 4), dtype=np.float32)
    x[:, 5:] = np.random.default_rng(14).standard_normal((2, 35, 4)).astype(np.float32)
    x[:, 30] = x[:, 20] * np.float32(1e-25)
    queries = np.arange(5, 40)
    got = _select(x, queries, np.arange(40), 1, "dot", 3, False)
    assert got.shape == (2, 1, 35, 3)
    x64 = x.astype(np.float64)
    got64 = _select(x64, queries, np.arange(40), 1, "dot", 3, False)
    np.testing.assert_array_equal(got, got64)
