"""The numba backend's VGG vocabulary kernels (backends/numba/vision_ops.py) against NumpyOps on autograd NumPy."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("autograd")

import autograd  # noqa: E402
import autograd.numpy as anp  # noqa: E402

from convnn.backends.common.numpy_ops import NumpyOps  # noqa: E402
from convnn.backends.numba.backend import NumbaBackend  # noqa: E402
from convnn.backends.numba.vision_ops import NumbaVisionOps  # noqa: E402
from convnn.tree import tree_leaves  # noqa: E402

REF = NumpyOps(anp)
TOL = {np.float64: 1e-10, np.float32: 1e-4}
DTYPES = (np.float64, np.float32)


@pytest.fixture(scope="module")
def nb() -> NumbaBackend:
    return nb_backend()


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _close(got: np.ndarray, want: np.ndarray, dtype: type) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == dtype
    assert got.shape == want.shape
    scale = float(np.max(np.abs(want))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype] * scale * 1e-2)


def _check(op, arrays: list[np.ndarray], dtype: type, seed: int = 1) -> None:
    """Forward and the gradient of sum(out * random) in every array: numba vs NumpyOps."""
    arrays = [a.astype(dtype) for a in arrays]
    want = op(REF, *arrays)
    proj = _rng(seed).standard_normal(np.shape(want)).astype(dtype)

    def loss(ops):
        return lambda *a: anp.sum(op(ops, *a) * proj)

    argnums = list(range(len(arrays)))
    got_grads = autograd.grad(loss(nb_backend()), argnums)(*arrays)
    want_grads = autograd.grad(loss(REF), argnums)(*arrays)
    _close(op(nb_backend(), *arrays), want, dtype)
    for g, w in zip(got_grads, want_grads):
        _close(g, w, dtype)


_NB: list = []


def nb_backend() -> NumbaBackend:
    """One numba backend for the module (the kernels compile once)."""
    if not _NB:
        _NB.append(NumbaBackend())
    return _NB[0]


def test_backend_uses_the_vision_kernels(nb):
    for name in ("conv2d", "linear", "batch_norm", "relu", "max_pool2d", "adaptive_avg_pool2d"):
        assert getattr(type(nb), name) is getattr(NumbaVisionOps, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,c,h,w,o,k,stride,padding", [
    (2, 5, 9, 7, 4, 3, 1, "same"),      # the VGG case on an odd map
    (1, 3, 8, 8, 6, 3, 1, 1),           # batch 1
    (3, 7, 11, 9, 5, 3, 2, 1),          # stride 2, odd sizes
    (2, 4, 10, 7, 3, 3, 2, 0),          # stride 2, no padding
    (2, 6, 5, 5, 7, 1, 1, 0),           # pointwise (branching's mix)
    (2, 3, 8, 12, 5, 4, 4, 0),          # patchify (ViT's embedding)
    (2, 3, 6, 7, 4, 2, 1, "same"),      # even kernel: asymmetric 'same' padding
    (2, 3, 5, 6, 2, 3, 3, 2),           # stride 3 with padding 2
])
def test_conv2d_forward_and_grads(dtype, b, c, h, w, o, k, stride, padding):
    rng = _rng(2)
    x, wt, bias = rng.standard_normal((b, c, h, w)), rng.standard_normal((o, c, k, k)), rng.standard_normal(o)
    _check(lambda ops, x, wt, bias: ops.conv2d(x, wt, bias, stride=stride, padding=padding), [x, wt, bias], dtype)
    _check(lambda ops, x, wt: ops.conv2d(x, wt, None, stride=stride, padding=padding), [x, wt], dtype)


def test_conv2d_errors_match_numpy_ops(nb):
    x = np.zeros((1, 3, 4, 4))
    cases = [(np.zeros((2, 4, 3, 3)), {}), (np.zeros((2, 3, 3, 3)), {"stride": 0}),
             (np.zeros((2, 3, 3, 3)), {"stride": 2, "padding": "same"}), (np.zeros((2, 3, 3, 3)), {"padding": -1}),
             (np.zeros((2, 3, 7, 7)), {"padding": 1})]
    for wt, kw in cases:
        with pytest.raises(ValueError) as want:
            REF.conv2d(x, wt, None, **kw)
        with pytest.raises(ValueError) as got:
            nb.conv2d(x, wt, None, **kw)
        assert str(got.value) == str(want.value)


def test_conv2d_other_dtypes_fall_back(nb):
    x = _rng().standard_normal((1, 2, 5, 5))
    wt = _rng(1).standard_normal((3, 2, 3, 3))
    y = nb.conv2d(x.astype(np.float32), wt, None, padding=1)  # mixed dtypes: NumpyOps' promotion
    np.testing.assert_allclose(y, REF.conv2d(x.astype(np.float32), wt, None, padding=1), rtol=1e-12)
    assert y.dtype == np.float64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 7), (5, 4), (1, 6)])
def test_linear_forward_and_grads(dtype, shape):
    rng = _rng(3)
    x, wt, bias = rng.standard_normal(shape), rng.standard_normal((5, shape[-1])), rng.standard_normal(5)
    _check(lambda ops, x, wt, bias: ops.linear(x, wt, bias), [x, wt, bias], dtype)
    _check(lambda ops, x, wt: ops.linear(x, wt, None), [x, wt], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 5, 7, 3), (1, 3, 5, 5), (3, 1, 1, 1)])
def test_batch_norm_train_forward_grads_and_state(dtype, shape):
    rng = _rng(4)
    c = shape[1]
    x, gamma, beta = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(c), rng.standard_normal(c)
    state = {"mean": rng.standard_normal(c).astype(dtype), "var": (rng.random(c) + 0.5).astype(dtype)}
    _check(lambda ops, x, g, b: ops.batch_norm(x, g, b, state, train=True, momentum=0.2)[0], [x, gamma, beta], dtype)
    xs = [a.astype(dtype) for a in (x, gamma, beta)]
    _, got = nb_backend().batch_norm(*xs, state, train=True, momentum=0.2, eps=1e-3)
    _, want = REF.batch_norm(*xs, state, train=True, momentum=0.2, eps=1e-3)
    assert set(got) == {"mean", "var"}
    for key in ("mean", "var"):
        _close(got[key], want[key], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_eval_forward_and_grads(dtype):
    rng = _rng(5)
    x, gamma, beta = rng.standard_normal((3, 4, 5, 6)), rng.standard_normal(4), rng.standard_normal(4)
    mean, var = rng.standard_normal(4), rng.random(4) + 0.5

    def op(ops, x, g, b, m, v):
        return ops.batch_norm(x, g, b, {"mean": m, "var": v}, train=False)[0]

    _check(op, [x, gamma, beta, mean, var], dtype)
    state = {"mean": mean.astype(dtype), "var": var.astype(dtype), "extra": 1}
    _, same = nb_backend().batch_norm(x.astype(dtype), gamma.astype(dtype), beta.astype(dtype), state, train=False)
    assert same == state and same is not state


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_forward_and_grads(dtype):
    _check(lambda ops, x: ops.relu(x), [_rng(6).standard_normal((3, 4, 5, 7))], dtype)
    _check(lambda ops, x: ops.relu(x), [_rng(7).standard_normal((5, 9))], dtype)


def test_relu_ties_follow_torch(nb):
    x = np.array([-1.0, 0.0, 2.0, np.nan])
    y = nb.relu(x)
    np.testing.assert_array_equal(y[:3], [0.0, 0.0, 2.0])
    assert np.isnan(y[3])
    grad = autograd.grad(lambda a: anp.sum(nb.relu(a)))(x[:3])
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,size", [((2, 3, 8, 6), 2), ((1, 5, 9, 7), 2), ((2, 2, 10, 11), 3), ((2, 3, 4, 4), 1)])
def test_max_pool2d_forward_and_grads(dtype, shape, size):
    _check(lambda ops, x: ops.max_pool2d(x, size), [_rng(8).standard_normal(shape)], dtype)


def test_max_pool2d_ties_nan_and_errors(nb):
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, 1, 3] = np.nan
    y = nb.max_pool2d(x, 2)
    assert y[0, 0, 0, 0] == 0.0 and np.isnan(y[0, 0, 0, 1])
    grad = autograd.grad(lambda a: anp.sum(nb.max_pool2d(a, 2)[:, :, :, :1]))(x)
    np.testing.assert_array_equal(grad[0, 0, :, :2], [[1.0, 0.0], [0.0, 0.0]])  # the first maximum takes it
    with pytest.raises(ValueError, match="larger than the map"):
        nb.max_pool2d(np.zeros((1, 1, 1, 4)), 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,out", [((2, 3, 8, 6), (2, 3)), ((2, 3, 7, 5), (3, 2)), ((2, 4, 1, 1), (7, 7)),
                                       ((1, 2, 6, 6), 1), ((2, 2, 5, 9), (5, 4))])
def test_adaptive_avg_pool2d_forward_and_grads(dtype, shape, out):
    _check(lambda ops, x: ops.adaptive_avg_pool2d(x, out), [_rng(9).standard_normal(shape)], dtype)


def test_vgg_training_step_matches_numpy_ops():
    """A whole width-0.125 VGG-11 step: loss, gradients and BatchNorm state as NumpyOps gives them."""
    from convnn.models import create_model

    nb = nb_backend()
    model = create_model("vgg11", backend=nb, num_classes=10, width=0.125, head="light", dtype="float64")
    params, state = model.init(0)
    rng = _rng(10)
    x = rng.standard_normal((3, 3, 32, 32))
    labels = rng.integers(0, 10, size=3)

    def loss_with(ops):
        def loss(p):
            ops_model = create_model("vgg11", backend=ops, num_classes=10, width=0.125, head="light",
                                     dtype="float64")
            logits, new_state = ops_model.apply(p, state, x, train=True)
            return ops.cross_entropy(logits, labels), new_state
        return loss

    ref = NumpyOps(anp)
    (got_loss, got_state), got = nb.value_and_grad(loss_with(nb), has_aux=True)(params)
    (want_loss, want_state), want = ref.value_and_grad(loss_with(ref), has_aux=True)(params)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-10)
    for g, w in zip(tree_leaves(got), tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-10)
    for g, w in zip(tree_leaves(got_state), tree_leaves(want_state)):
        np.testing.assert_allclose(g, w, rtol=1e-10)
