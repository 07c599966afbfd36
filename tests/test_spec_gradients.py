"""float64 gradients of the spec under torch autograd and jax.grad, against central finite differences."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

import convnn as cc

CASES = {
    "conv2d-cosine-softmax": (cc.ConvNNConfig(k=4, weighting="softmax"), "2d"),
    "conv2d-euclidean-depthwise-position": (
        cc.ConvNNConfig(k=5, metric="euclidean", taps="depthwise", order="position", weighting="softmax"), "2d"),
    "conv2d-blend-coords": (cc.ConvNNConfig(k=3, select="blend", aggregate_coords=True, weighting="softmax",
                                            self_logit=1.0), "2d"),
    "conv2d-random": (cc.ConvNNConfig(k=3, sampling="random", num_samples=7, weighting="softmax"), "2d"),
    "conv1d-dot": (cc.ConvNNConfig(k=3, metric="dot", weighting="softmax", self_first=False), "1d"),
    "attention-dense": (cc.attention_config(3), "attn"),
    "attention-sampled": (cc.attention_config(3, sampling="random", num_samples=4), "attn"),
}


def _inputs(kind: str, cfg: cc.ConvNNConfig, seed: int = 0) -> tuple[dict[str, np.ndarray], Callable]:
    rng = np.random.default_rng(seed)
    if kind == "attn":
        d = 4
        params = {k: rng.standard_normal((d, d)) / 2 for k in ("wq", "wk", "wv", "wo")}
        params["taps"] = rng.standard_normal((d, cfg.k))
        params["x"] = rng.standard_normal((2, 6, d))
        cand = np.array([0, 2, 3, 5])

        def op(p):
            rest = {k: v for k, v in p.items() if k != "x"}
            return cc.convnn_attention(p["x"], rest, cfg, heads=2, candidates=cand if cfg.sampling != "all" else None)

        return params, op
    c = 2
    c_agg = c + (2 if cfg.aggregate_coords and kind == "2d" else 1 if cfg.aggregate_coords else 0)
    w_shape = (3, c_agg, cfg.k) if cfg.taps == "full" else (c_agg, cfg.k)
    params = {"w": rng.standard_normal(w_shape), "b": rng.standard_normal(w_shape[0])}
    if kind == "2d":
        params["x"] = rng.standard_normal((2, c, 3, 4))
        cand = np.array([1, 4, 7, 8, 13, 16, 22])

        def op(p):
            return cc.convnn2d(p["x"], p["w"], p["b"], cfg, candidates=cand if cfg.sampling != "all" else None)

        return params, op
    params["x"] = rng.standard_normal((2, c, 6))

    def op(p):
        return cc.convnn1d(p["x"], p["w"], p["b"], cfg)

    return params, op


def _finite_differences(op: Callable, params: dict[str, np.ndarray], cot: np.ndarray, eps: float = 1e-6):
    grads = {}
    for name, value in params.items():
        g = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            plus, minus = dict(params), dict(params)
            vp, vm = value.copy(), value.copy()
            vp[i] += eps
            vm[i] -= eps
            plus[name], minus[name] = vp, vm
            g[i] = (np.sum(op(plus) * cot) - np.sum(op(minus) * cot)) / (2 * eps)
        grads[name] = g
    return grads


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_autograd_of_spec_matches_finite_differences(case):
    torch = pytest.importorskip("torch")
    cfg, kind = CASES[case]
    params, op = _inputs(kind, cfg)
    cot = np.random.default_rng(9).standard_normal(op(params).shape)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    (op(tparams) * torch.as_tensor(cot)).sum().backward()
    fd = _finite_differences(op, params, cot)
    for name in params:
        np.testing.assert_allclose(tparams[name].grad.numpy(), fd[name], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("case", ["conv2d-cosine-softmax", "conv2d-blend-coords", "attention-dense",
                                  "attention-sampled"])
def test_jax_grad_of_spec_matches_finite_differences(case):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    restore = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        cfg, kind = CASES[case]
        params, op = _inputs(kind, cfg)
        cot = np.random.default_rng(9).standard_normal(op(params).shape)
        grads = jax.grad(lambda p: jnp.sum(op(p) * cot))({k: jnp.asarray(v) for k, v in params.items()})
        fd = _finite_differences(op, params, cot)
        for name in params:
            np.testing.assert_allclose(np.asarray(grads[name]), fd[name], rtol=1e-6, atol=1e-7, err_msg=name)
    finally:
        jax.config.update("jax_enable_x64", restore)
