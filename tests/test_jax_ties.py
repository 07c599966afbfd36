"""The lower-index tie rule in the jax backend: lax.top_k's own behaviour, the enforced rule, tie-built inputs."""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc
from test_jax_helpers import backend, conv_inputs, x64

jax = pytest.importorskip("jax")
jnp = jax.numpy

from convnn.backends.jax.topk import group_size, top_k_lower_index, top_k_mask  # noqa: E402


def _stable(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def test_lax_top_k_facts_that_motivate_the_rule():
    # ties among equal values do come back lower index first on this device...
    assert np.asarray(jax.lax.top_k(jnp.asarray([1.0, 3.0, 3.0, 2.0, 3.0]), 3)[1]).tolist() == [1, 2, 4]
    # ...but -0.0 ranks below +0.0, which the rule counts as a tie
    assert np.asarray(jax.lax.top_k(jnp.asarray([0.0, -0.0, 0.0, 1.0]), 3)[1]).tolist() == [3, 0, 2]


def test_rule_on_small_cases():
    f = jax.jit(top_k_lower_index, static_argnums=1)
    assert np.asarray(f(jnp.asarray([1.0, 3.0, 3.0, 2.0, 3.0]), 3)).tolist() == [1, 2, 4]
    assert np.asarray(f(jnp.asarray([0.0, -0.0, 0.0, 1.0]), 3)).tolist() == [3, 0, 1]
    assert np.asarray(f(jnp.asarray([-0.0, 0.0, -jnp.inf, 5.0]), 4)).tolist() == [3, 0, 1, 2]


@pytest.mark.parametrize("n,k", [(40, 5), (1200, 8)], ids=["direct", "two-stage"])
def test_rule_on_tie_heavy_rows(n, k):
    assert (group_size(n, k) > 0) == (n >= 256)
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(64, n)).astype(np.float32)  # every row full of ties at the boundary
    scores[:8] = 1.0  # rows that are all one value
    scores[8:16, : n // 2] = -0.0
    scores[8:16, n // 2:] = 0.0
    got = np.asarray(jax.jit(top_k_lower_index, static_argnums=1)(jnp.asarray(scores), k))
    np.testing.assert_array_equal(got, _stable(scores, k))
    mask = np.asarray(jax.jit(top_k_mask, static_argnums=1)(jnp.asarray(scores), k))
    want = np.zeros_like(mask)
    np.put_along_axis(want, _stable(scores, k), True, axis=-1)
    np.testing.assert_array_equal(mask, want)


def test_tied_maps_select_like_the_spec():
    # zero pixels tie with the zero padding (cosine 0 and euclidean distances) and repeated pixels tie
    rng = np.random.default_rng(1)
    x = np.repeat(rng.integers(0, 2, size=(2, 2, 4, 1)).astype(np.float64), 5, axis=3)
    x[:, :, 1, 2] = 0.0
    with x64():
        be = backend()
        for cfg in (cc.ConvNNConfig(k=6), cc.ConvNNConfig(k=5, metric="euclidean", weighting="softmax"),
                    cc.ConvNNConfig(k=4, select="position", metric="euclidean")):
            _, w, b = conv_inputs(cfg, x.shape)
            np.testing.assert_allclose(np.asarray(be.convnn2d(x, w, b, cfg)), cc.convnn2d(x, w, b, cfg),
                                       rtol=1e-9, atol=1e-9)
        feats = np.transpose(x.reshape(2, 2, 20), (0, 2, 1))
        cfg = cc.ConvNNConfig(k=7, padding=0, metric="dot", self_first=False)
        idx, _ = be.select_neighbors(feats, cfg)
        np.testing.assert_array_equal(np.asarray(idx), cc.select_neighbors(feats, cfg)[0])


def test_kvt_attention_ties_to_the_lower_key():
    x = np.ones((1, 6, 2))  # every score equal: keep keys 0..k-1
    eye = np.eye(2)
    params = {"wq": eye, "wk": eye, "wv": eye, "wo": eye}
    x[0, :, 1] = np.arange(6)  # distinct values, equal scores per row come from wq=0 below
    params["wq"] = np.zeros((2, 2))
    with x64():
        got = backend().kvt_attention(x, params, 2)
        np.testing.assert_allclose(np.asarray(got), cc.kvt_attention(x, params, 2), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(got)[0, :, 1], 0.5)  # mean of the values of keys 0 and 1
