"""The numba backend's sequence ops (backends/numba/sequence_ops.py) against NumpyOps on autograd NumPy.

Forward values and gradients (autograd.grad of a random projection) in float64 (tight) and float32,
at odd sizes (N=65, 197; heads 1 and 3; batch 1), with masks and dropout drawn from the same seeds.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("autograd")
pytest.importorskip("scipy")

import autograd  # noqa: E402
import autograd.numpy as anp  # noqa: E402

from convnn import get_backend  # noqa: E402
from convnn.backends.common.numpy_ops import NumpyOps  # noqa: E402

REF = NumpyOps(anp)
TOL = {np.float64: 1e-10, np.float32: 1e-4}
DTYPES = (np.float64, np.float32)


@pytest.fixture(scope="module")
def nb():
    return get_backend("numba")


def _close(got, want, dtype) -> None:
    """Elementwise rtol, with an atol of rtol * max|want| (float32 GELU's 1 + erf cancels in NumpyOps too)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == np.dtype(dtype)
    assert got.shape == want.shape
    rtol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * (float(np.max(np.abs(want))) + 1e-30))


def _check(f_new, f_ref, arrays, dtype, seed: int = 7) -> None:
    """Forward and the gradients in every array argument of f_new against f_ref."""
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    y = f_new(*arrays)
    _close(y, f_ref(*arrays), dtype)
    proj = np.random.default_rng(seed).standard_normal(np.shape(y)).astype(dtype)
    argnums = list(range(len(arrays)))
    g_new = autograd.grad(lambda *a: anp.sum(f_new(*a) * proj), argnums)(*arrays)
    g_ref = autograd.grad(lambda *a: anp.sum(f_ref(*a) * proj), argnums)(*arrays)
    for a, b in zip(g_new, g_ref):
        _close(a, b.astype(dtype), dtype)


def _params(d: int, rng: np.random.Generator) -> dict:
    return {k: rng.standard_normal((d, d)) / np.sqrt(d) for k in ("wq", "wk", "wv", "wo")}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 65, 48), (1, 197, 33), (5, 7)])
def test_layer_norm(nb, dtype, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3 + 1
    d = shape[-1]
    _check(nb.layer_norm, REF.layer_norm, [x, rng.standard_normal(d), rng.standard_normal(d)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_eps_and_fallback(nb, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 9)).astype(dtype)
    g, b = np.ones(9, dtype), np.zeros(9, dtype)
    _close(nb.layer_norm(x, g, b, eps=0.5), REF.layer_norm(x, g, b, eps=0.5), dtype)
    g2 = np.ones((3, 9), dtype)  # not [D]: NumpyOps' broadcasting path
    _close(nb.layer_norm(x, g2, b), REF.layer_norm(x, g2, b), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 65, 37), (3, 197, 5), (16411,)])
def test_gelu(nb, dtype, shape):
    x = np.random.default_rng(2).standard_normal(shape) * 2.5
    _check(nb.gelu, REF.gelu, [x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_extremes(nb, dtype):
    x = np.array([-40.0, -9.0, -5.0, -4.0, -1e-3, 0.0, 1e-6, 3.9, 4.1, 6.0, 40.0])
    _check(nb.gelu, REF.gelu, [x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 65, 65), (1, 3, 197)])
def test_softmax(nb, dtype, shape):
    x = np.random.default_rng(3).standard_normal(shape) * 4
    _check(nb.softmax, REF.softmax, [x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_other_axis(nb, dtype):
    x = np.random.default_rng(4).standard_normal((4, 5, 6))
    _check(lambda a: nb.softmax(a, axis=1), lambda a: REF.softmax(a, axis=1), [x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,classes", [(1, 10), (32, 10), (7, 3)])
def test_cross_entropy(nb, dtype, batch, classes):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((batch, classes)) * 3
    labels = rng.integers(0, classes, batch)
    _check(lambda z: nb.cross_entropy(z, labels), lambda z: REF.cross_entropy(z, labels), [logits], dtype)
    with pytest.raises(ValueError):
        nb.cross_entropy(logits.astype(dtype), labels[:-1] if batch > 1 else labels[:0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_same_draw_and_gradient(nb, dtype):
    x = np.random.default_rng(6).standard_normal((2, 65, 24))
    _check(lambda a: nb.dropout(a, 0.3, 11, train=True), lambda a: REF.dropout(a, 0.3, 11, train=True), [x], dtype)
    xd = x.astype(dtype)
    assert nb.dropout(xd, 0.3, 11, train=False) is xd
    assert nb.dropout(xd, 0.0, 11, train=True) is xd
    with pytest.raises(ValueError):
        nb.dropout(xd, 0.5, None, train=True)
    with pytest.raises(ValueError):
        nb.dropout(xd, 1.0, 1, train=True)


def _attention_case(nb, dtype, b, n, d, heads, mask=None, dropout=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, n, d))
    params = _params(d, rng)
    names = list(params)
    kw = {"heads": heads, "dropout": dropout, "train": dropout > 0, "rng": 5 if dropout > 0 else None}

    def make(ops):
        return lambda x_, *ws: ops.masked_attention(x_, dict(zip(names, ws)), mask, **kw)

    _check(make(nb), make(REF), [x] + [params[k] for k in names], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,d,heads", [(2, 65, 24, 1), (1, 65, 24, 3), (1, 197, 12, 3), (3, 17, 9, 1)])
def test_multihead_attention(nb, dtype, b, n, d, heads):
    _attention_case(nb, dtype, b, n, d, heads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [1, 3])
def test_attention_dropout(nb, dtype, heads):
    _attention_case(nb, dtype, 2, 65, 12, heads, dropout=0.25)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [1, 3])
def test_masked_attention_shared_and_per_head_masks(nb, dtype, heads):
    n = 65
    band = NumpyOps.band_mask(n, kind="window", width=4)
    _attention_case(nb, dtype, 2, n, 12, heads, mask=band)
    per_row = np.random.default_rng(9).random((2 * heads, n, n)) < 0.5
    per_row[:, np.arange(n), np.arange(n)] = True  # no fully masked row
    _attention_case(nb, dtype, 2, n, 12, heads, mask=per_row, dropout=0.1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_local_sparse_kvt_attention_use_the_kernels(nb, dtype):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 33, 12)).astype(dtype)
    params = {k: v.astype(dtype) for k, v in _params(12, rng).items()}
    for name, args in (("local_attention", (5,)), ("sparse_attention", ("strided", 4)), ("kvt_attention", (7,))):
        got = getattr(nb, name)(x, params, *args, heads=3)
        _close(got, getattr(REF, name)(x, params, *args, heads=3), dtype)


def test_attention_checks_match_numpy_ops(nb):
    x = np.zeros((1, 5, 6), np.float32)
    params = {k: np.zeros((6, 6), np.float32) for k in ("wq", "wk", "wv", "wo")}
    with pytest.raises(ValueError, match="heads"):
        nb.multihead_attention(x, params, heads=4)
    with pytest.raises(ValueError, match="rng"):
        nb.multihead_attention(x, params, dropout=0.5, train=True)
    with pytest.raises(ValueError, match="missing"):
        nb.multihead_attention(x, {"wq": params["wq"]})


def test_float32_gradients_stay_float32(nb):
    """The point of the primitives: a float32 loss gives float32 gradients through every op."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 9, 6)).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in _params(6, rng).items()}
    g, b = np.ones(6, np.float32), np.zeros(6, np.float32)
    labels = np.array([1, 4])

    def loss(x_):
        h = nb.layer_norm(x_, g, b)
        h = nb.gelu(nb.multihead_attention(h, params, heads=3, dropout=0.1, rng=1, train=True))
        h = nb.dropout(h, 0.2, 2, train=True)
        return nb.cross_entropy(nb.softmax(h[:, 0]), labels)

    assert autograd.grad(loss)(x).dtype == np.float32
