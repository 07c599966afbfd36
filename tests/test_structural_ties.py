"""Exact structural ties (SPEC.md section 4, step 1): coordinate-driven euclidean selection agrees on every backend.

Coordinates sit on a regular grid, so two candidates can be exactly as far from a query (two padding
tokens mirrored about a border query, the four neighbours one step away). Each backend used to break
such ties by its own rounding of the coordinate distances; the spec now computes the coordinate part
from integer grid offsets, so tied candidates get bitwise-equal affinities and the lower-index rule
decides. Every backend must give the spec's (NumPy float64) indices exactly, in float32 and float64.

The indices of a map op are read back through its public output: with aggregate_coords, weighting
'none' and a "probe" weight whose output channel (slot k, axis d) copies coordinate channel d of
slot k, y holds the coordinates of every selected token, which decode to its padded row and column.
"""
from __future__ import annotations

import importlib.util
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

import convnn as cc
from convnn import layout

BACKENDS = ("numba", "torch", "jax")
DTYPES = ("float32", "float64")


def _cfg(**kw: Any) -> cc.ConvNNConfig:
    base = dict(select="position", metric="euclidean", self_first=True, order="rank", padding=1)
    base.update(kw)
    return cc.ConvNNConfig(**base)


# id -> (x shape [B, C, *S], config)
CASES = {
    # the issue's case: paper's Loc_Col/Loc_Col on a 5x7 map, padding tokens mirrored about border queries
    "blend-5x7-k6": ((2, 3, 5, 7), _cfg(k=6, select="blend", blend=0.7, aggregate_coords=True)),
    "blend-5x7-k6-softmax": ((2, 3, 5, 7), _cfg(k=6, select="blend", blend=0.7, aggregate_coords=True,
                                                 weighting="softmax")),
    "blend-6x4-position-order": ((1, 2, 6, 4), _cfg(k=7, select="blend", blend=0.4, order="position",
                                                     padding=2)),
    "blend-5x5-no-self": ((2, 2, 5, 5), _cfg(k=5, select="blend", blend=0.5, self_first=False,
                                              aggregate_coords=True)),
    "blend-3x7-p2-softmax-depthwise": ((1, 3, 3, 7), _cfg(k=8, select="blend", blend=0.6, padding=2,
                                                           weighting="softmax", taps="depthwise",
                                                           aggregate_coords=True)),
    # position selection: rings of equally distant tokens everywhere (rank order keeps the tie order visible)
    "position-5x7-rank": ((1, 2, 5, 7), _cfg(k=6)),
    "position-5x5-rank-k13": ((2, 1, 5, 5), _cfg(k=13, self_first=False)),
    "position-4x6-p2-rank": ((1, 2, 4, 6), _cfg(k=10, padding=2)),
    "position-7x3-position-order": ((1, 2, 7, 3), _cfg(k=6, order="position")),
    "position-5x7-softmax": ((1, 2, 5, 7), _cfg(k=5, weighting="softmax", aggregate_coords=True)),
    "position-odd-square-k10": ((1, 3, 5, 5), _cfg(k=10, order="position")),
    # 1-D: one axis, left and right neighbours tie
    "position-1d-rank": ((2, 2, 7), _cfg(k=4, padding=2)),
    "position-1d-position-order": ((1, 3, 9), _cfg(k=4, order="position", self_first=False)),
    "blend-1d-rank": ((2, 3, 8), _cfg(k=4, select="blend", blend=0.7, padding=2, aggregate_coords=True)),
    "blend-1d-softmax": ((1, 2, 6), _cfg(k=3, select="blend", blend=0.3, weighting="softmax")),
}


def _backend(name: str) -> Any:
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    return cc.get_backend(name)


@pytest.fixture
def jax_x64():
    """64-bit jax for the test (float64 cases), restored after."""
    if importlib.util.find_spec("jax") is None:
        yield
        return
    import jax

    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def _round(a: np.ndarray, dtype: str) -> np.ndarray:
    return a.astype(dtype).astype(np.float64)


def _inputs(shape: tuple[int, ...], cfg: cc.ConvNNConfig, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    dims = len(shape) - 2
    c_agg = shape[1] + (dims if cfg.aggregate_coords else 0)
    x = _round(rng.standard_normal(shape), dtype)
    if cfg.taps == "full":
        w = _round(rng.standard_normal((3, c_agg, cfg.k)) / np.sqrt(c_agg * cfg.k), dtype)
        b = _round(rng.standard_normal(3), dtype)
    else:
        w = _round(1.0 + 0.3 * rng.standard_normal((c_agg, cfg.k)), dtype)
        b = _round(rng.standard_normal(c_agg), dtype)
    return x, w, b


def _probe(shape: tuple[int, ...], cfg: cc.ConvNNConfig) -> tuple[cc.ConvNNConfig, np.ndarray]:
    """(config, weight) whose output holds the coordinates of every selected token (selection unchanged)."""
    dims = len(shape) - 2
    probe = cfg.replace(aggregate_coords=True, weighting="none", taps="full", self_logit=None)
    c = shape[1]
    w = np.zeros((dims * cfg.k, c + dims, cfg.k))
    for k in range(cfg.k):
        for d in range(dims):
            w[dims * k + d, c + d, k] = 1.0
    return probe, w


def _decode(y: np.ndarray, shape: tuple[int, ...], cfg: cc.ConvNNConfig) -> np.ndarray:
    """Padded token indices [B, Nq, K] from a probe output y [B, dims*K, *S]."""
    dims = len(shape) - 2
    p = cfg.padding
    padded = tuple(n + 2 * p for n in shape[2:])
    b = y.shape[0]
    flat = y.reshape(b, cfg.k, dims, -1).transpose(0, 3, 1, 2)  # [B, Nq, K, dims], coordinate x first
    pos = []
    for d in range(dims):  # coordinate d runs along axis (dims - 1 - d)
        n = padded[dims - 1 - d]
        pos.append(np.rint((flat[..., d] + 1.0) * (n - 1) / 2.0).astype(np.int64) if n > 1 else
                   np.zeros(flat.shape[:-1], dtype=np.int64))
    axes = list(reversed(pos))  # row-major axes: slowest first
    return np.ravel_multi_index(tuple(axes), padded)


def _op(be: Any, dims: int) -> Any:
    return be.convnn2d if dims == 2 else be.convnn1d


def _spec_op(dims: int) -> Any:
    return cc.convnn2d if dims == 2 else cc.convnn1d


def _run(be: Any, shape, cfg, x, w, b, dtype) -> np.ndarray:
    dims = len(shape) - 2
    y = _op(be, dims)(be.asarray(x, dtype), be.asarray(w, dtype), None if b is None else be.asarray(b, dtype), cfg)
    return np.asarray(be.to_numpy(y), dtype=np.float64)


def _indices(be: Any, shape, cfg, x, dtype) -> np.ndarray:
    probe, w = _probe(shape, cfg)
    y = _run(be, shape, probe, x, w, None, dtype)
    return _decode(y, shape, probe)


def _spec_indices(shape, cfg, x) -> np.ndarray:
    probe, w = _probe(shape, cfg)
    y = np.asarray(_spec_op(len(shape) - 2)(x, w, None, probe))
    return _decode(y, shape, probe)


# ----------------------------------------------------------------------------- the exact rule, by hand
def _exact_units(shape: tuple[int, ...], padding: int) -> tuple[np.ndarray, np.ndarray]:
    """(query tokens [Nq], exact squared coordinate distances [Nq, N] as Fractions) on the padded grid."""
    padded = tuple(n + 2 * padding for n in shape[2:])
    steps = [Fraction(2, n - 1) if n > 1 else Fraction(0) for n in padded]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in padded], indexing="ij"), -1).reshape(-1, len(padded))
    inner = np.stack(np.meshgrid(*[np.arange(n) + padding for n in shape[2:]], indexing="ij"), -1)
    inner = inner.reshape(-1, len(padded))
    queries = np.ravel_multi_index(tuple(inner.T), padded)
    dist = np.empty((len(queries), len(grid)), dtype=object)
    for i, q in enumerate(inner):
        for j, t in enumerate(grid):
            dist[i, j] = sum(((int(a) - int(c)) * s) ** 2 for a, c, s in zip(q, t, steps))
    return queries, dist


def _lower_index_rule(queries: np.ndarray, dist: np.ndarray, k: int, self_first: bool, order: str) -> np.ndarray:
    out = []
    for i, q in enumerate(queries):
        cands = [j for j in range(dist.shape[1]) if not (self_first and j == q)]
        ranked = sorted(cands, key=lambda j: (dist[i, j], j))[: k - (1 if self_first else 0)]
        row = ([int(q)] if self_first else []) + ranked
        out.append(sorted(row) if order == "position" else row)
    return np.asarray(out)


POSITION_CASES = [cid for cid, (_, cfg) in CASES.items() if cfg.select == "position"]


@pytest.mark.parametrize("cid", POSITION_CASES)
def test_position_cases_hold_exact_ties_and_the_spec_breaks_them_to_the_lower_index(cid):
    shape, cfg = CASES[cid]
    queries, dist = _exact_units(shape, cfg.padding)
    want = _lower_index_rule(queries, dist, cfg.k, cfg.self_first, cfg.order)
    # the case is not vacuous: at some query the K-th chosen and the first rejected token are equally far
    # (order=position), or two of the ranked slots are (order=rank: the tie decides their order)
    slots = cfg.k - (1 if cfg.self_first else 0)
    first = slots - 1 if cfg.order == "position" else 0
    tied = 0
    for i, q in enumerate(queries):
        row = sorted(d for j, d in enumerate(dist[i]) if not (cfg.self_first and j == q))
        tied += any(row[r] == row[r + 1] for r in range(first, slots))
    assert tied > 0
    x = np.random.default_rng(1).standard_normal(shape)
    got = _spec_indices(shape, cfg, x)
    assert np.array_equal(got, np.broadcast_to(want, got.shape))


def test_the_issue_case_has_mirrored_padding_ties():
    """5x7 map, padding 1: the padding tokens left and right of the top-left query are mirror images. From the
    coordinate channels their squared distances differ by rounding (so each backend used to break the tie its own
    way); from integer grid offsets they are equal, and the lower index (the left one) wins in every backend."""
    from convnn.grid import grid_units, make_grid

    padded = (7, 9)
    q = np.ravel_multi_index((1, 1), padded)  # the top-left interior pixel
    left, right = np.ravel_multi_index((1, 0), padded), np.ravel_multi_index((1, 2), padded)
    c = layout.coordinates(padded)
    gemm = [c[q] @ c[q] + c[t] @ c[t] - 2.0 * (c[q] @ c[t]) for t in (left, right)]  # a GEMM-based distance
    assert gemm[0] != gemm[1]
    grid = make_grid(CASES["blend-5x7-k6"][1], padded)
    assert grid_units(grid, np.int64(q), np.int64(left)) == grid_units(grid, np.int64(q), np.int64(right))
    shape, cfg = CASES["blend-5x7-k6"]
    x = np.random.default_rng(0).standard_normal(shape)
    idx = _spec_indices(shape, cfg, x)
    query = 0  # interior pixel (0, 0) is padded token q
    row = idx[0, query].tolist()
    assert row[0] == q and left in row and (right not in row or row.index(left) < row.index(right))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cid", list(CASES))
def test_backend_indices_equal_the_spec(cid, backend, dtype, jax_x64):
    shape, cfg = CASES[cid]
    be = _backend(backend)
    x, _, _ = _inputs(shape, cfg, dtype)
    want = _spec_indices(shape, cfg, x)
    got = _indices(be, shape, cfg, x, dtype)
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"{len(bad)} slots differ, first at {bad[0].tolist()}: got {got[tuple(bad[0][:2])]} " \
                          f"want {want[tuple(bad[0][:2])]}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cid", list(CASES))
def test_backend_values_equal_the_spec(cid, backend, dtype, jax_x64):
    shape, cfg = CASES[cid]
    be = _backend(backend)
    x, w, b = _inputs(shape, cfg, dtype)
    want = np.asarray(_spec_op(len(shape) - 2)(x, w, b, cfg))
    got = _run(be, shape, cfg, x, w, b, dtype)
    scale = max(1.0, float(np.max(np.abs(want))))
    rtol, atol = (1e-9, 1e-12) if dtype == "float64" else (1e-4, 1e-5)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_candidates_keep_the_rule(backend, jax_x64):
    """A candidate subset symmetric about the map's centre: mirrored candidates tie; the lower index wins."""
    shape = (2, 2, 5, 5)
    cfg = _cfg(k=4, sampling="random", num_samples=12)
    rows, cols = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
    pick = ((rows + cols) % 4 == 0).reshape(-1)
    cand = np.flatnonzero(pick)[:12]
    be = _backend(backend)
    x = np.random.default_rng(3).standard_normal(shape)
    probe, w = _probe(shape, cfg)
    want = _decode(np.asarray(cc.convnn2d(x, w, None, probe, candidates=cand)), shape, probe)
    for dtype in DTYPES:
        y = be.convnn2d(be.asarray(x, dtype), be.asarray(w, dtype), None, probe, candidates=cand)
        got = _decode(np.asarray(be.to_numpy(y), dtype=np.float64), shape, probe)
        assert np.array_equal(got, want), dtype


# ----------------------------------------------------------------------------- the conformance suite's cases
@pytest.mark.parametrize("dtype", DTYPES)
def test_conformance_has_the_structural_tie_cases(dtype):
    from convnn.conformance.cases import level1_cases, make_inputs
    from convnn.conformance.ties import STRUCTURAL, structural_margin

    cases = [c for c in level1_cases((dtype,), full=False) if "structural-tie" in c.tags]
    assert len(cases) == len(STRUCTURAL)
    assert {c.cfg.select for c in cases} == {"position", "blend"}
    assert {c.cfg.order for c in cases} == {"rank", "position"}
    assert {c.op for c in cases} == {"convnn2d", "convnn1d"}
    assert any(c.shape.get("H") != c.shape.get("W") and "H" in c.shape for c in cases)  # non-square
    assert any(c.shape.get("H", 0) % 2 and c.shape.get("W", 0) % 2 for c in cases)  # odd
    for case in cases:
        ties, margin = structural_margin(case, make_inputs(case))
        assert ties > 0, case.id  # a structural tie decides the selection...
        assert margin > 0, case.id  # ...and nothing else is a tie


def test_the_near_tie_free_generator_rejects_structural_ties():
    from convnn.conformance.cases import level1_cases, make_inputs
    from convnn.conformance.selection import selection_margin
    from convnn.conformance.tolerances import SELECTION_MARGIN

    for case in level1_cases(("float64",), full=False):
        if "structural-tie" in case.tags:
            assert selection_margin(case, make_inputs(case)) < SELECTION_MARGIN["float64"], case.id


@pytest.mark.parametrize("backend", BACKENDS)
def test_conformance_structural_cases_pass(backend, jax_x64):
    from convnn.conformance.levels import OracleCache, check_forward
    from convnn.conformance.cases import level1_cases

    be = _backend(backend)
    cache = OracleCache()
    for case in level1_cases(DTYPES, full=False):
        if "structural-tie" not in case.tags:
            continue
        for result in check_forward(be, backend, case, cache):
            assert result.status == "pass", (case.id, result.detail)


def test_torch_fused_path_is_turned_away_with_a_reason():
    pytest.importorskip("torch")
    from convnn.kernels import PathRequest

    be = cc.get_backend("torch")
    cfg = _cfg(k=9, select="blend", blend=0.5)
    choice = be.kernels.choose_path(PathRequest("convnn2d", cfg, "float32", "cuda"))
    assert choice.path.startswith("eager") and "grid distance" in choice.passed_over[0][1]
    plain = be.kernels.choose_path(PathRequest("convnn2d", cfg.replace(metric="cosine"), "float32", "cuda"))
    assert "grid distance" not in "".join(why for _, why in plain.passed_over)


def test_grid_descriptor():
    from convnn.grid import grid_units, make_grid

    assert make_grid(_cfg(metric="cosine"), (7, 9)) is None
    assert make_grid(_cfg(select="feature"), (7, 9)) is None
    g = make_grid(_cfg(select="blend", blend=0.25), (7, 9))
    assert g.shape == (7, 9) and g.mult == (16, 9) and g.scale == 0.75 ** 2 * 4.0 / 24 ** 2
    # (drow, dcol) = (3, 0) and (0, 4) are equally far on this grid: sy = 2/6, sx = 2/8
    assert grid_units(g, np.int64(0), np.int64(27)) == grid_units(g, np.int64(0), np.int64(4)) == 144
    line = make_grid(_cfg(), (9,))
    assert line.mult == (1,) and line.scale == 4.0 / 64
    single = make_grid(_cfg(), (1, 1))
    assert single.mult == (0, 0) and int(grid_units(single, np.int64(0), np.int64(0))) == 0
    with pytest.raises(ValueError, match="integer units"):
        make_grid(_cfg(), (40000, 40001))


@pytest.mark.parametrize("cand_kind", ["all", "shared", "per-sample"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_with_a_grid_match_the_spec_kernels(backend, cand_kind, jax_x64):
    """select and slot_affinity with a grid, straight through the kernels contract, against the spec's kernels."""
    from convnn.grid import make_grid
    from convnn.spec_kernels import SpecKernels

    be = _backend(backend)
    rng = np.random.default_rng(5)
    padded = (6, 7)
    n = 42
    grid = make_grid(_cfg(select="blend", blend=0.6), padded)
    feats = rng.standard_normal((2, n, 3))
    feats[:, : 7] = 0.0  # the first padded row: zero features, mirrored ties about every query below it
    feats[:, 35:] = 0.0
    queries = np.arange(7, 35, dtype=np.int64)
    cand = {"all": None, "shared": np.arange(0, n, 2, dtype=np.int64),
            "per-sample": np.stack([np.arange(0, n, 2), np.arange(1, n, 2)]).astype(np.int64)}[cand_kind]
    spec = SpecKernels(np)
    kw = dict(k=7, metric="euclidean", self_first=False, heads=1, grid=grid)
    want = spec.select(feats, queries, cand, **kw)
    want_aff = spec.slot_affinity(feats, queries, want, metric="euclidean", heads=1, grid=grid)
    kern = be.kernels
    keys = be.asarray(feats, "float64")
    c = None if cand is None else kern.index_array(cand)
    got = np.asarray(be.to_numpy(kern.select(keys, queries, c, **kw)))
    assert np.array_equal(got, want)
    aff = kern.slot_affinity(keys, queries, kern.index_array(got), metric="euclidean", heads=1, grid=grid)
    np.testing.assert_allclose(np.asarray(be.to_numpy(aff)), want_aff, rtol=1e-12, atol=1e-12)
    # no feature part at all (select=position): the keys have no columns
    pos = make_grid(_cfg(), padded)
    want = spec.select(feats[..., :0], queries, cand, **dict(kw, grid=pos))
    got = np.asarray(be.to_numpy(kern.select(be.asarray(feats[..., :0], "float64"), queries, c, **dict(kw, grid=pos))))
    assert np.array_equal(got, want)
