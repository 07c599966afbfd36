"""select='blend' on a sample with a single feature entry (one token, one channel): sigma_b is defined as 0.

SPEC section 3 takes sigma_b as the unbiased std of all feature entries of sample b on the padded grid,
+ 1e-6. The unbiased std of one value is 0/0; the pipeline defines sigma_b = 0 there, so the
denominator is the 1e-6 alone (convnn.pipeline.selection_features). It used to give NaN on every backend.
"""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc
from convnn import pipeline

BACKENDS = ("numpy", "numba", "torch", "jax")
CONFIGS = {
    "cosine-softmax": cc.ConvNNConfig(k=1, select="blend", blend=0.5, padding=0, weighting="softmax"),
    "euclid-coords": cc.ConvNNConfig(k=1, select="blend", blend=0.3, metric="euclidean", padding=0,
                                     aggregate_coords=True, weighting="softmax", self_logit=None),
    "dot-not-self-first": cc.ConvNNConfig(k=1, select="blend", metric="dot", padding=0, self_first=False),
}


def _inputs(cfg: cc.ConvNNConfig, dims: int):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1) + (1,) * dims)  # two samples, each a single entry
    c_agg = 1 + (dims if cfg.aggregate_coords else 0)
    w = rng.standard_normal((3, c_agg, 1))
    b = rng.standard_normal(3)
    return x, w, b


def _expected(x: np.ndarray, w: np.ndarray, b: np.ndarray, dims: int) -> np.ndarray:
    """One token and K=1: the only neighbour is the token itself with rho 1 -> a 1x1 conv of the values."""
    v = x.reshape(x.shape[0], 1)
    if w.shape[1] > 1:  # aggregate_coords: the single token's coordinates are linspace(-1, 1, 1) = -1
        v = np.concatenate([v, -np.ones((x.shape[0], dims))], axis=1)
    y = v @ w[:, :, 0].T + b
    return y.reshape((x.shape[0], w.shape[0]) + (1,) * dims)


def test_sigma_of_a_single_entry_is_zero():
    tokens = np.array([[[2.0]], [[-3.0]]])  # [B=2, N=1, C=1]
    sigma = pipeline.blend_sigma(np, tokens)
    np.testing.assert_array_equal(sigma, [pipeline.BLEND_SIGMA_EPS] * 2)
    coords = np.array([[-1.0]])
    feats = pipeline.selection_features(np, cc.ConvNNConfig(select="blend", blend=0.25), tokens, coords)
    np.testing.assert_allclose(feats[:, 0, :], [[0.25 * 2.0 / 1e-6, -0.75], [0.25 * -3.0 / 1e-6, -0.75]])
    two = np.array([[[1.0], [3.0]]])  # two entries: the unbiased std as before
    np.testing.assert_allclose(pipeline.blend_sigma(np, two), [np.std([1.0, 3.0], ddof=1) + 1e-6])
    assert "single entry" in pipeline.selection_features.__doc__


@pytest.mark.parametrize("dims", (2, 1))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_spec_single_entry_blend_is_finite(name, dims):
    cfg = CONFIGS[name]
    x, w, b = _inputs(cfg, dims)
    op = cc.convnn2d if dims == 2 else cc.convnn1d
    y = op(x, w, b, cfg)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, _expected(x, w, b, dims), rtol=1e-12, atol=1e-12)


def _backend(name: str):
    pytest.importorskip(name)
    return cc.get_backend(name)


@pytest.mark.parametrize("dims", (2, 1))
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_single_entry_blend(backend, name, dims):
    cfg = CONFIGS[name]
    be = _backend(backend)
    x, w, b = _inputs(cfg, dims)
    op = be.convnn2d if dims == 2 else be.convnn1d
    y = be.to_numpy(op(*(be.asarray(a, dtype="float32") for a in (x, w, b)), cfg))
    assert np.isfinite(y).all(), f"{backend}: {y}"
    np.testing.assert_allclose(y, _expected(x, w, b, dims), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ("numba", "torch", "jax"))
def test_single_entry_blend_gradients_are_finite(backend):
    be = _backend(backend)
    cfg = CONFIGS["cosine-softmax"]
    x, w, b = (be.asarray(a, dtype="float32") for a in _inputs(cfg, 2))

    def loss(params):
        return be.xp.sum(be.convnn2d(params["x"], params["w"], params["b"], cfg) ** 2)

    value, grads = be.value_and_grad(loss)({"x": x, "w": w, "b": b})
    assert np.isfinite(float(be.to_numpy(value)))
    for g in grads.values():
        assert np.isfinite(be.to_numpy(g)).all()
