"""The jax backend on a GPU: the same checks as on the CPU, run where jax sees a GPU (pytest -m gpu).

Run with: pytest -m gpu tests/test_jax_gpu.py
"""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc
from test_jax_helpers import attention_inputs, backend, conv_inputs, x64

jax = pytest.importorskip("jax")
jnp = jax.numpy

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    try:
        devices = jax.devices("gpu")
    except RuntimeError:
        devices = []
    if not devices:
        pytest.skip("jax sees no GPU (install jax with CUDA: pip install 'jax[cuda12]')")
    return devices[0]


def test_top_k_tie_rule_on_gpu(gpu):
    from convnn.backends.jax.topk import top_k_lower_index, top_k_mask

    rng = np.random.default_rng(0)
    for n, k in ((40, 5), (1200, 8), (1156, 9)):
        scores = rng.integers(0, 4, size=(256, n)).astype(np.float32)
        scores[:16] = 1.0
        scores[16:32, : n // 2] = -0.0
        scores[16:32, n // 2:] = 0.0
        want = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
        s = jax.device_put(scores, gpu)
        np.testing.assert_array_equal(np.asarray(jax.jit(top_k_lower_index, static_argnums=1)(s, k)), want)
        mask = np.zeros_like(scores, dtype=bool)
        np.put_along_axis(mask, want, True, axis=-1)
        np.testing.assert_array_equal(np.asarray(jax.jit(top_k_mask, static_argnums=1)(s, k)), mask)


@pytest.mark.parametrize("cfg", [cc.ConvNNConfig(), cc.ConvNNConfig(k=4, weighting="softmax", select="blend"),
                                 cc.ConvNNConfig(k=3, sampling="random", num_samples=9)],
                         ids=["vgg", "blend-softmax", "random"])
def test_convnn2d_on_gpu_matches_spec_float32_and_float64(gpu, cfg):
    x, w, b = conv_inputs(cfg, (4, 3, 8, 8), out=5)
    want = cc.convnn2d(x, w, b, cfg, rng=1)
    be = backend()
    args = [jax.device_put(a.astype(np.float32), gpu) for a in (x, w, b)]
    got = be.convnn2d(*args, cfg, rng=1)
    assert got.devices() == {gpu}
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    with x64():
        got64 = be.convnn2d(*[jax.device_put(a, gpu) for a in (x, w, b)], cfg, rng=1)
        np.testing.assert_allclose(np.asarray(got64), want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


def test_gradients_and_attention_on_gpu(gpu):
    torch = pytest.importorskip("torch")
    cfg = cc.ConvNNConfig(k=4, weighting="softmax")
    x, w, b = conv_inputs(cfg, (2, 2, 4, 5), out=3)
    cot = np.random.default_rng(3).standard_normal((2, 3, 4, 5))
    with x64():
        be = backend()
        p = {k: jax.device_put(v, gpu) for k, v in dict(x=x, w=w, b=b).items()}
        got = jax.jit(jax.grad(lambda q: jnp.sum(be.convnn2d(q["x"], q["w"], q["b"], cfg) * cot)))(p)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in dict(x=x, w=w, b=b).items()}
    (cc.convnn2d(tp["x"], tp["w"], tp["b"], cfg) * torch.tensor(cot)).sum().backward()
    for k in tp:
        np.testing.assert_allclose(np.asarray(got[k]), tp[k].grad.numpy(), rtol=1e-9, atol=1e-10)
    acfg = cc.attention_config(5)
    xa, pa = attention_inputs(acfg, b=2, n=33, d=8)
    want = cc.convnn_attention(xa, pa, acfg, heads=2)
    got = be.convnn_attention(jax.device_put(xa.astype(np.float32), gpu),
                              {k: jax.device_put(v.astype(np.float32), gpu) for k, v in pa.items()}, acfg, heads=2)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
