"""The jax backend's forward ops against the spec (convnn_core on NumPy, float64) for the SPEC.md options."""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc
from test_jax_helpers import attention_inputs, backend, conv_inputs, x64

jnp = pytest.importorskip("jax.numpy")

CONV2D = {
    "vgg-default": cc.ConvNNConfig(),
    "cosine-softmax-selflogit": cc.ConvNNConfig(k=4, weighting="softmax", self_logit=1.0),
    "position-euclid-order": cc.ConvNNConfig(select="position", metric="euclidean", order="position"),
    "blend-coords-depthwise": cc.ConvNNConfig(k=5, select="blend", blend=0.3, aggregate_coords=True,
                                              taps="depthwise", weighting="softmax"),
    "dot-not-self-first-pad0": cc.ConvNNConfig(k=6, metric="dot", self_first=False, padding=0),
    "random-seeded": cc.ConvNNConfig(k=4, sampling="random", num_samples=11, weighting="softmax"),
    "spatial": cc.ConvNNConfig(k=3, sampling="spatial", num_samples=4),
    "k1": cc.ConvNNConfig(k=1),
    "shuffle": cc.ConvNNConfig(k=3, shuffle_scale=2, padding=0),
}
BLOCKED = ("cosine-softmax-selflogit", "position-euclid-order", "random-seeded")


def _close(got, want, rtol=1e-9):
    np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=rtol * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("name", list(CONV2D))
def test_convnn2d_matches_spec(name):
    cfg = CONV2D[name]
    shape = (2, 2, 4, 6) if cfg.shuffle_scale > 1 else (2, 3, 4, 5)
    x, w, b = conv_inputs(cfg, shape, out=4 if cfg.shuffle_scale > 1 else 3)
    with x64():
        be = backend()
        got = be.convnn2d(x, w, b, cfg, rng=7)
        want = cc.convnn2d(x, w, b, cfg, rng=7)
        assert got.dtype == jnp.float64 and got.shape == want.shape
        _close(got, want)
        if name in BLOCKED:  # several blocks of samples and of query rows give the same answer
            _close(backend(block_elements=40).convnn2d(x, w, b, cfg, rng=7), want)


@pytest.mark.parametrize("cfg", [
    cc.ConvNNConfig(k=3, weighting="softmax"),
    cc.ConvNNConfig(k=4, select="blend", metric="euclidean", aggregate_coords=True, order="position"),
    cc.ConvNNConfig(k=2, sampling="spatial", num_samples=3, padding=2, taps="depthwise"),
    cc.ConvNNConfig(k=2, shuffle_scale=2, metric="dot"),
], ids=["softmax", "blend-coords", "spatial", "shuffle"])
def test_convnn1d_matches_spec(cfg):
    x, w, b = conv_inputs(cfg, (2, 2, 8), out=4, kind="1d")
    with x64():
        want = cc.convnn1d(x, w, b, cfg)
        _close(backend().convnn1d(x, w, b, cfg), want)
        _close(backend(block_elements=30).convnn1d(x, w, b, cfg), want)


def test_explicit_candidates_shared_and_per_sample():
    cfg = cc.ConvNNConfig(k=3, sampling="random", num_samples=5, weighting="softmax")
    x, w, b = conv_inputs(cfg)
    shared = np.array([20, 3, 8, 15, 30])  # unsorted on purpose
    per_sample = np.array([[1, 9, 10, 17, 25], [0, 8, 14, 22, 41]])
    with x64():
        be = backend()
        for cand in (shared, per_sample):
            _close(be.convnn2d(x, w, b, cfg, candidates=cand), cc.convnn2d(x, w, b, cfg, candidates=cand))
            _close(be.convnn2d(x, w, b, cfg, candidates=jnp.asarray(cand)), cc.convnn2d(x, w, b, cfg, candidates=cand))


def test_k_equal_to_candidate_count_and_too_large():
    cfg = cc.ConvNNConfig(k=5, sampling="random", num_samples=4)
    x, w, b = conv_inputs(cfg)
    cand = np.array([0, 1, 2, 3])  # padding tokens only: the query is never a candidate, so k - 1 = 4 fit
    with x64():
        be = backend()
        _close(be.convnn2d(x, w, b, cfg, candidates=cand), cc.convnn2d(x, w, b, cfg, candidates=cand))
        dense = cc.ConvNNConfig(k=20, self_first=False, padding=0)
        xd, wd, bd = conv_inputs(dense)
        _close(be.convnn2d(xd, wd, bd, dense), cc.convnn2d(xd, wd, bd, dense))  # K = N = 20 tokens
    too_many = cc.ConvNNConfig(k=21, self_first=False, padding=0)
    xt, wt, bt = conv_inputs(too_many)
    with pytest.raises(ValueError, match="k=21"):
        backend().convnn2d(xt, wt, bt, too_many)


def test_select_neighbors_matches_spec_indices_and_affinities():
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((2, 9, 3))
    qf = rng.standard_normal((2, 9, 3))
    with x64():
        be = backend()
        for cfg in (cc.ConvNNConfig(k=4, padding=0), cc.ConvNNConfig(k=3, metric="dot", self_first=False,
                                                                    order="position", padding=0)):
            idx, aff = be.select_neighbors(feats, cfg, query_feats=qf)
            widx, waff = cc.select_neighbors(feats, cfg, query_feats=qf)
            np.testing.assert_array_equal(np.asarray(idx), widx)
            _close(aff, waff)


@pytest.mark.parametrize("cfg,heads", [
    (cc.attention_config(3), 2),
    (cc.attention_config(7), 1),  # K = N: softmax attention
    (cc.attention_config(3, sampling="random", num_samples=4), 2),
    (cc.attention_config(2, taps="full", metric="cosine"), 1),
], ids=["dense-k3-h2", "dense-kN", "sampled", "full-taps-cosine"])
def test_convnn_attention_matches_spec(cfg, heads):
    x, params = attention_inputs(cfg)
    with x64():
        want = cc.convnn_attention(x, params, cfg, heads=heads, rng=11)
        _close(backend().convnn_attention(x, params, cfg, heads=heads, rng=11), want)
        _close(backend(block_elements=25).convnn_attention(x, params, cfg, heads=heads, rng=11), want)


def test_dense_attention_identity_and_baselines():
    cfg = cc.attention_config(7)
    x, params = attention_inputs(cfg)
    params["taps"] = np.ones_like(params["taps"])
    with x64():
        be = backend()
        _close(be.convnn_attention(x, params, cfg, heads=2), cc.multihead_attention(x, params, heads=2))
        for name, args in [("multihead_attention", ()), ("kvt_attention", (3,)), ("local_attention", (2,)),
                           ("sparse_attention", ("local", 3)), ("sparse_attention", ("strided", 2))]:
            _close(getattr(be, name)(x, params, *args, heads=2), getattr(cc, name)(x, params, *args, heads=2))
        mask = np.tril(np.ones((7, 7), dtype=bool))
        _close(be.masked_attention(x, params, mask), cc.masked_attention(x, params, mask))


def test_float32_within_conformance_tolerance():
    cfg = cc.ConvNNConfig(k=4, weighting="softmax")
    x, w, b = conv_inputs(cfg)
    want = cc.convnn2d(x, w, b, cfg)
    with x64(False):
        got = backend().convnn2d(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), cfg)
        assert got.dtype == jnp.float32
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5 * scale)


def test_identity_position_select_is_conv2d():
    cfg = cc.ConvNNConfig(select="position", metric="euclidean", order="position")
    x, w, b = conv_inputs(cfg, (2, 3, 5, 5))
    with x64():
        be = backend()
        conv = be.conv2d(jnp.asarray(x), jnp.asarray(w.reshape(w.shape[0], 3, 3, 3)), jnp.asarray(b), padding=1)
        _close(be.convnn2d(x, w, b, cfg), np.asarray(conv))
