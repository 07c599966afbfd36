"""Gradients of the jax backend in float64: against torch autograd and jax.grad of the spec, and finite differences.

The spec under eager jax.grad is slow (op by op), so most cases use torch autograd of the spec.
"""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc
from test_jax_helpers import attention_inputs, backend, conv_inputs, x64

jax = pytest.importorskip("jax")
jnp = jax.numpy

CASES = {
    "vgg-none": cc.ConvNNConfig(k=4),
    "cosine-softmax-position-order": cc.ConvNNConfig(k=4, weighting="softmax", self_logit=0.5, order="position"),
    "blend-euclid-coords-depthwise": cc.ConvNNConfig(k=3, select="blend", metric="euclidean", weighting="softmax",
                                                     aggregate_coords=True, taps="depthwise"),
}


def _loss(op, cot):
    return lambda p: jnp.sum(op(p) * cot)


def _torch_grad(spec_op, params, cot):
    """Gradients of sum(spec_op(params) * cot) by torch autograd on the spec in float64."""
    torch = pytest.importorskip("torch")
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    (spec_op(tp) * torch.tensor(cot)).sum().backward()
    return {k: v.grad.numpy() for k, v in tp.items()}


def _conv_problem(cfg, seed=0):
    # 4 x 5 maps: no query is equidistant from two padding rows (an exact tie in exact arithmetic that
    # rounding breaks differently in different libraries)
    x, w, b = conv_inputs(cfg, (2, 2, 4, 5), out=3, seed=seed)
    params = {"x": x, "w": w, "b": b}
    cot = np.random.default_rng(seed + 1).standard_normal((2, w.shape[0], 4, 5))
    return params, cot


@pytest.mark.parametrize("name", list(CASES))
def test_convnn2d_grad_matches_torch_autograd_of_spec(name):
    cfg = CASES[name]
    params, cot = _conv_problem(cfg)
    with x64():
        be = backend(block_elements=30)  # several blocks: remat and the scan's backward are exercised
        p = {k: jnp.asarray(v) for k, v in params.items()}
        got = jax.grad(_loss(lambda q: be.convnn2d(q["x"], q["w"], q["b"], cfg), cot))(p)
        want = _torch_grad(lambda q: cc.convnn2d(q["x"], q["w"], q["b"], cfg), params, cot)
        for k in params:
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-9, atol=1e-10)
        if cfg.weighting == "softmax":  # the features get gradient through rho as well as through the gather
            plain = jax.grad(_loss(lambda q: be.convnn2d(q["x"], q["w"], q["b"], cfg.replace(weighting="none")),
                                   cot))(p)
            assert not np.allclose(np.asarray(plain["x"]), np.asarray(got["x"]))


def test_convnn2d_grad_matches_finite_differences_under_jit():
    cfg = CASES["cosine-softmax-position-order"]
    params, cot = _conv_problem(cfg, seed=4)
    with x64():
        be = backend()
        p = {k: jnp.asarray(v) for k, v in params.items()}
        got = jax.jit(jax.grad(_loss(lambda q: be.convnn2d(q["x"], q["w"], q["b"], cfg), cot)))(p)
    # central differences on a few coordinates of each input (selection is locally constant)
    rng = np.random.default_rng(0)
    eps = 1e-6

    def f(q):
        return float(np.sum(cc.convnn2d(q["x"], q["w"], q["b"], cfg) * cot))

    for k, v in params.items():
        for flat in rng.choice(v.size, size=3, replace=False):
            up = {n: a.copy() for n, a in params.items()}
            dn = {n: a.copy() for n, a in params.items()}
            up[k].flat[flat] += eps
            dn[k].flat[flat] -= eps
            fd = (f(up) - f(dn)) / (2 * eps)
            assert abs(fd - float(np.asarray(got[k]).flat[flat])) < 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("cfg", [cc.attention_config(3), cc.attention_config(3, sampling="random", num_samples=5)],
                         ids=["dense", "sampled"])
def test_convnn_attention_grad_matches_torch_autograd_of_spec(cfg):
    x, params = attention_inputs(cfg)
    params["x"] = x
    cand = np.array([0, 2, 3, 5, 6])
    cot = np.random.default_rng(2).standard_normal(x.shape)
    kw = {"heads": 2, "candidates": cand if cfg.sampling != "all" else None}
    with x64():
        p = {k: jnp.asarray(v) for k, v in params.items()}

        def split(q):
            return q["x"], {k: v for k, v in q.items() if k != "x"}

        got = jax.grad(_loss(lambda q: backend().convnn_attention(*split(q), cfg, **kw), cot))(p)
        want = _torch_grad(lambda q: cc.convnn_attention(*split(q), cfg, **kw), params, cot)
        for k in params:
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-9, atol=1e-10)


def test_select_neighbors_affinity_grad_matches_jax_grad_of_spec():
    feats = np.random.default_rng(5).standard_normal((2, 8, 3))
    cfg = cc.ConvNNConfig(k=3, padding=0, metric="euclidean")
    with x64():
        f = jnp.asarray(feats)
        got = jax.grad(lambda v: jnp.sum(backend().select_neighbors(v, cfg)[1] ** 2))(f)
        want = jax.jit(jax.grad(lambda v: jnp.sum(cc.select_neighbors(v, cfg)[1] ** 2)))(f)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-10)
