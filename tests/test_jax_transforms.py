"""jit, vmap, compile-once, PRNG keys, dtypes and validation of the jax backend."""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc
from test_jax_helpers import attention_inputs, backend, conv_inputs, x64

jax = pytest.importorskip("jax")
jnp = jax.numpy

from convnn.backends.jax.kernels import TRACE_COUNTS  # noqa: E402

CFG = cc.ConvNNConfig(k=4, weighting="softmax")


def test_compiles_once_per_shape():
    x, w, b = (a.astype(np.float32) for a in conv_inputs(CFG))
    be = backend()
    traces = []

    def step(x, w, b):
        traces.append(1)  # runs only while tracing
        return be.convnn2d(x, w, b, CFG)

    f = be.compile(step)
    before = TRACE_COUNTS["convnn2d"]
    for _ in range(3):
        f(x, w, b).block_until_ready()
    assert len(traces) == 1
    f(x[:1], w, b).block_until_ready()  # a new batch size is a new shape
    assert len(traces) == 2
    # the op's own jitted core (used eagerly) is traced once per shape as well
    be.convnn2d(x, w, b, CFG)
    mid = TRACE_COUNTS["convnn2d"]
    for _ in range(3):
        be.convnn2d(x + 1.0, w, b, CFG)
    assert TRACE_COUNTS["convnn2d"] == mid and mid - before <= 3


def test_vmap_over_weights_and_over_an_extra_batch_axis():
    x, w, b = (a.astype(np.float32) for a in conv_inputs(CFG))
    be = backend()
    ws = jnp.stack([w, 2 * w, -w])
    got = jax.vmap(lambda ww: be.convnn2d(x, ww, b, CFG))(ws)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(got[i]), np.asarray(be.convnn2d(x, ws[i], b, CFG)), rtol=1e-5, atol=1e-5)
    xs = jnp.stack([x, x[::-1]])
    got = jax.jit(jax.vmap(lambda xx: be.convnn2d(xx, w, b, CFG)))(xs)
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(be.convnn2d(x[::-1], w, b, CFG)), rtol=1e-5, atol=1e-5)


def test_random_candidates_from_jax_keys_inside_jit():
    cfg = cc.ConvNNConfig(k=3, sampling="random", num_samples=8)
    x, w, b = (a.astype(np.float32) for a in conv_inputs(cfg))
    be = backend()
    f = jax.jit(lambda x, key: be.convnn2d(x, w, b, cfg, rng=key))
    k1, k2 = be.split_rng(be.make_rng(0), 2)
    a, a2, c = f(x, k1), f(x, k1), f(x, k2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    # the key's draw is an explicit candidate set: same answer when passed as candidates
    from convnn.backends.jax.arrays import draw_on_device

    cand = draw_on_device(k1, 42, 8)
    assert np.all(np.diff(np.asarray(cand)) > 0)
    np.testing.assert_allclose(np.asarray(a), np.asarray(be.convnn2d(x, w, b, cfg, candidates=cand)), rtol=1e-6)
    # an int seed draws on the host exactly as the spec does
    with x64():
        x64_, w64, b64 = conv_inputs(cfg)
        np.testing.assert_allclose(np.asarray(be.convnn2d(x64_, w64, b64, cfg, rng=3)),
                                   cc.convnn2d(x64_, w64, b64, cfg, rng=3), rtol=1e-9)
        gen_a, gen_b = np.random.default_rng(9), np.random.default_rng(9)
        np.testing.assert_allclose(np.asarray(be.convnn2d(x64_, w64, b64, cfg, rng=gen_a)),
                                   cc.convnn2d(x64_, w64, b64, cfg, rng=gen_b), rtol=1e-9)


def test_attention_dropout_uses_the_key_and_is_off_in_eval():
    cfg = cc.attention_config(3)
    x, params = attention_inputs(cfg)
    be = backend()
    x = x.astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in params.items()}
    key = be.make_rng(1)
    eval_out = be.convnn_attention(x, params, cfg, dropout=0.5, rng=key, train=False)
    np.testing.assert_allclose(np.asarray(eval_out), np.asarray(be.convnn_attention(x, params, cfg)), rtol=1e-6)
    t1 = be.convnn_attention(x, params, cfg, dropout=0.5, rng=key, train=True)
    t2 = be.convnn_attention(x, params, cfg, dropout=0.5, rng=key, train=True)
    np.testing.assert_array_equal(np.asarray(t1), np.asarray(t2))
    assert not np.allclose(np.asarray(t1), np.asarray(eval_out))
    with pytest.raises(ValueError, match="needs an rng"):
        be.convnn_attention(x, params, cfg, dropout=0.5, train=True)


def test_dtypes_float32_float64_and_x64_option():
    with x64(False):
        be = backend()
        assert be.asarray(np.ones(2)).dtype == jnp.float32
        with pytest.raises(ValueError, match="64-bit"):
            be.asarray(np.ones(2), "float64")
    with x64(False):
        assert cc.get_backend("jax", x64=True) is not None and jax.config.jax_enable_x64
    with x64():
        assert backend().asarray([1.0, 2.0], "float64").dtype == jnp.float64
        x, w, b = conv_inputs(CFG)
        with pytest.raises(TypeError, match="share one dtype"):
            backend().convnn2d(x, w.astype(np.float32), b, CFG)


def test_validation_errors_match_the_spec():
    x, w, b = conv_inputs(CFG)
    be = backend()
    cases = [
        dict(x=x[0], w=w, b=b, cfg=CFG),
        dict(x=x, w=w[..., :2], b=b, cfg=CFG),
        dict(x=x, w=w, b=b[:2], cfg=CFG),
        dict(x=x, w=w, b=b, cfg=CFG.replace(sampling="random", num_samples=5)),
        dict(x=x, w=w, b=b, cfg=CFG, candidates=[1, 1, 2, 3, 4]),
        dict(x=x, w=w, b=b, cfg=CFG, candidates=[0, 1, 2, 99]),
        dict(x=np.where(np.arange(5) == 2, np.nan, x), w=w, b=b, cfg=CFG),
        dict(x=x, w=w, b=b, cfg=CFG.replace(sampling="spatial", num_samples=5)),
    ]
    for case in cases:
        kw = {"candidates": case["candidates"]} if "candidates" in case else {}
        with pytest.raises((ValueError, TypeError)) as spec_err:
            cc.convnn2d(case["x"], case["w"], case["b"], case["cfg"], **kw)
        with pytest.raises(type(spec_err.value)) as ours:
            be.convnn2d(case["x"], case["w"], case["b"], case["cfg"], **kw)
        # same message; where the spec lists the rng kinds it takes, the jax backend adds jax keys
        assert str(ours.value).split(" (")[0] == str(spec_err.value).split(" (")[0]
    with pytest.raises(ValueError, match="heads=3"):
        xa, pa = attention_inputs(cc.attention_config(3))
        be.convnn_attention(xa, pa, cc.attention_config(3), heads=3)
    with pytest.raises(ValueError, match="precision"):
        cc.get_backend("jax", precision="fast")


def test_traced_inputs_skip_data_checks_but_keep_shape_checks():
    x, w, b = (a.astype(np.float32) for a in conv_inputs(CFG))
    be = backend()
    out = jax.jit(lambda x: be.convnn2d(x, w, b, CFG))(x.at[0, 0, 0, 0].set(np.nan) if hasattr(x, "at")
                                                        else np.where(np.arange(5) == 0, np.nan, x))
    assert out.shape == (2, 4, 4, 5)
    with pytest.raises(ValueError, match="taps='full' needs"):
        jax.jit(lambda x: be.convnn2d(x, w[..., :2], b, CFG))(x)


def test_concrete_inputs_closed_over_inside_jit():
    # concrete arrays captured by a jitted function are still checked, without leaking tracers
    x, w, b = (jnp.asarray(a.astype(np.float32)) for a in conv_inputs(CFG))
    be = backend()
    out = jax.jit(lambda w: be.convnn2d(x, w, b, CFG))(w)
    np.testing.assert_allclose(np.asarray(out), np.asarray(be.convnn2d(x, w, b, CFG)), rtol=1e-6, atol=1e-6)
    xa, pa = attention_inputs(cc.attention_config(3))
    xa = jnp.asarray(xa.astype(np.float32))
    pa = {k: jnp.asarray(v.astype(np.float32)) for k, v in pa.items()}
    jax.jit(lambda t: be.convnn_attention(xa, {**pa, "taps": t}, cc.attention_config(3)))(pa["taps"])
    jax.jit(lambda t: be.kvt_attention(xa, {**pa, "wo": t}, 2))(pa["wo"])
    bad = x.at[0, 0, 0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="NaN"):
        jax.jit(lambda w: be.convnn2d(bad, w, b, CFG))(w)
