"""The numba forward that projects each image's value rows by all K taps and then adds each query's slots
(gather_kernels.project_gather) against the gathered-tile product, on maps large enough to take it."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from convnn import ConvNNConfig, get_backend  # noqa: E402
from convnn.backends.numba import gather_kernels, primitives  # noqa: E402


def _inputs(dtype, heads: int = 1, batch: int = 3, side: int = 16, chan: int = 8, k: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = side + 2
    values = np.zeros((batch, p, p, chan), dtype=dtype)
    values[:, 1:-1, 1:-1] = rng.standard_normal((batch, side, side, chan))
    values = values.reshape(batch, p * p, chan)
    idx = rng.integers(0, p * p, (batch, heads, side * side, k))
    idx[:, :, :7, 1] = 0  # slots on padding (zero rows)
    rho = rng.random((batch, heads, side * side, k)).astype(dtype)
    weight = rng.standard_normal((6, chan, k)).astype(dtype)
    return values, idx, rho, weight


def _tile_path(monkeypatch, values, idx, rho, weight, bias=None):
    monkeypatch.setattr(primitives, "_projects_first", lambda *a: False)
    out = primitives.gather_taps(values, idx, rho, weight, "full", bias)
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_rho", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_project_then_gather_equals_the_gathered_product(monkeypatch, dtype, with_rho, with_bias):
    values, idx, rho, weight = _inputs(dtype)
    rho = rho if with_rho else None
    bias = np.linspace(-1.0, 2.0, weight.shape[0]).astype(dtype) if with_bias else None
    calls = []
    real = gather_kernels.project_gather
    monkeypatch.setattr(gather_kernels, "project_gather", lambda *a: calls.append(1) or real(*a))
    got = primitives.gather_taps(values, idx, rho, weight, "full", bias)
    assert calls, "the projected path did not run"
    monkeypatch.undo()
    want = _tile_path(monkeypatch, values, idx, rho, weight, bias)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_small_maps_several_heads_and_non_finite_taps_take_the_tile_path():
    values, idx, _, weight = _inputs(np.float32)
    w2t = primitives._full_taps_matrix(weight)
    assert primitives._projects_first(values, idx, w2t)
    assert not primitives._projects_first(values[:, :200], idx, w2t)
    assert not primitives._projects_first(values, np.repeat(idx, 2, axis=1), w2t)
    w2t[3, 2] = np.inf
    assert not primitives._projects_first(values, idx, w2t)


def test_a_layer_with_the_projected_forward_keeps_its_gradient():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 16, 16))
    w = rng.standard_normal((5, 4, 9))
    be = get_backend("numba", threads=1)
    cfg = ConvNNConfig(k=9, padding=1)
    from autograd import grad
    import autograd.numpy as anp

    cot = rng.standard_normal((2, 5, 16, 16))
    gx = grad(lambda a: anp.sum(be.convnn2d(a, w, None, cfg) * cot))(x)
    numeric = np.zeros(6)
    probes = [(0, 1, 3, 4), (1, 3, 15, 0), (0, 0, 8, 8), (1, 2, 0, 15), (0, 3, 7, 9), (1, 0, 12, 2)]
    for n, pos in enumerate(probes):
        d = np.zeros_like(x)
        d[pos] = 1e-6
        up = np.sum(be.convnn2d(x + d, w, None, cfg) * cot)
        numeric[n] = (up - np.sum(be.convnn2d(x - d, w, None, cfg) * cot)) / 2e-6
    np.testing.assert_allclose([gx[p] for p in probes], numeric, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("side", [16, 6])  # the projected forward, and the tile path (small map)
def test_the_layer_bias_is_added_once_with_its_gradient(side):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, side, side))
    w = rng.standard_normal((4, 3, 9))
    bias = np.array([0.5, -1.0, 2.0, 0.0])
    be = get_backend("numba", threads=1)
    cfg = ConvNNConfig(k=9, padding=1)
    y0 = be.convnn2d(x, w, None, cfg)
    y1 = be.convnn2d(x, w, bias, cfg)
    np.testing.assert_allclose(y1 - y0, np.broadcast_to(bias[None, :, None, None], y0.shape), atol=1e-12)
    from autograd import grad
    import autograd.numpy as anp

    cot = rng.standard_normal(y0.shape)
    gb = grad(lambda b_: anp.sum(be.convnn2d(x, w, b_, cfg) * cot))(bias)
    np.testing.assert_allclose(gb, cot.sum(axis=(0, 2, 3)), rtol=1e-12)
