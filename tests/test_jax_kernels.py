"""The jax kernels behind the one pipeline: traced candidates, heads, blocks, forward mode, staging, capabilities."""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc
from test_jax_helpers import attention_inputs, backend, conv_inputs, x64

jax = pytest.importorskip("jax")
jnp = jax.numpy

from convnn.backends.jax.kernels import TRACE_COUNTS, JaxKernels  # noqa: E402
from convnn.backends.jax.neighbors import plan_blocks  # noqa: E402


def _close(got, want, rtol=1e-9):
    np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=rtol * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("block_elements", [None, 37], ids=["one-block", "many-blocks"])
def test_traced_unsorted_candidates_are_sorted_inside_the_compiled_op(block_elements):
    cfg = cc.ConvNNConfig(k=3, sampling="random", num_samples=9, weighting="softmax")
    x, w, b = conv_inputs(cfg)
    shared = np.array([30, 2, 17, 8, 11, 25, 40, 5, 13])
    per_sample = np.stack([shared, np.array([1, 41, 9, 22, 3, 35, 18, 27, 6])])
    with x64():
        be = backend(block_elements=block_elements)
        f = jax.jit(lambda c: be.convnn2d(x, w, b, cfg, candidates=c))
        for cand in (shared, per_sample):
            _close(f(jnp.asarray(cand)), cc.convnn2d(x, w, b, cfg, candidates=cand))


@pytest.mark.parametrize("taps", ["depthwise", "full"])
def test_attention_heads_with_per_sample_candidates_in_blocks(taps):
    cfg = cc.attention_config(3, sampling="random", num_samples=5, taps=taps)
    x, params = attention_inputs(cfg, b=3, n=9, d=8)
    rng = np.random.default_rng(2)
    cand = np.stack([np.sort(rng.choice(9, 5, replace=False)) for _ in range(3)])
    with x64():
        want = cc.convnn_attention(x, params, cfg, heads=2, candidates=cand)
        for be in (backend(), backend(block_elements=23)):
            _close(be.convnn_attention(x, params, cfg, heads=2, candidates=cand), want)


def test_forward_mode_matches_finite_differences():
    cfg = cc.ConvNNConfig(k=3, weighting="softmax")
    x, w, b = conv_inputs(cfg)
    with x64():
        be = backend()
        tangent = np.random.default_rng(4).standard_normal(x.shape)
        _, got = jax.jvp(lambda xx: be.convnn2d(xx, w, b, cfg), (jnp.asarray(x),), (jnp.asarray(tangent),))
        eps = 1e-6
        fd = (np.asarray(be.convnn2d(x + eps * tangent, w, b, cfg))
              - np.asarray(be.convnn2d(x - eps * tangent, w, b, cfg))) / (2 * eps)
        _close(got, fd, rtol=1e-6)


def test_block_plan_is_balanced_and_within_budget():
    assert plan_blocks(32, 197, 197, 1 << 20) == (16, 197)  # 27 would fit; two balanced groups of 16
    assert plan_blocks(32, 1024, 1156, 1 << 20) == (1, 512)  # one sample is too big: two row blocks
    for batch, rows, per_row, budget in ((5, 7, 3, 40), (3, 100, 9, 50), (7, 11, 2, 10 ** 6)):
        per_sample, r = plan_blocks(batch, rows, per_row, budget)
        groups = -(-batch // per_sample)
        assert groups * per_sample - batch < groups  # the last group pads less than one sample per group
        assert per_sample * r * per_row <= max(budget, r * per_row)


def test_equal_options_share_compiled_code_and_counts_per_op():
    cfg = cc.ConvNNConfig(k=2, metric="dot")
    x, w, b = (a.astype(np.float32) for a in conv_inputs(cfg, (1, 2, 3, 3), out=2))
    assert JaxKernels() == backend().kernels and hash(JaxKernels()) == hash(backend().kernels)
    assert backend().kernels != backend(block_elements=11).kernels
    backend().convnn2d(x, w, b, cfg)
    before = dict(TRACE_COUNTS)
    backend().convnn2d(x, w, b, cfg)  # a new backend object with the same options: no new trace
    assert TRACE_COUNTS["convnn2d"] == before["convnn2d"] and TRACE_COUNTS["convnn_nd"] == before["convnn_nd"]
    backend().convnn1d(x[:, :, 0], w, b, cfg)
    assert TRACE_COUNTS["convnn1d"] >= 1 and TRACE_COUNTS["convnn2d"] == before["convnn2d"]


def test_capabilities_follow_the_x64_switch():
    with x64(False):
        caps = backend().capabilities
        assert caps.dtypes == ("float32",) and not caps.int64_labels
        assert caps.compiles and caps.compile_by_default and "convnn2d" in caps.differentiable
        assert cc.registry.BACKENDS["jax"].dtype_options == {"float64": {"x64": True}}
        x, w, b = conv_inputs(cc.ConvNNConfig(k=2))
        with pytest.raises(TypeError, match="float16 is not supported by backend 'jax'"):
            backend().convnn2d(*(a.astype(np.float16) for a in (x, w, b)), cc.ConvNNConfig(k=2))
    with x64():
        assert backend().capabilities.dtypes == ("float32", "float64")
    be = backend()
    assert be.synchronize(jnp.ones(2)) is not None
    placed = be.place({"a": jnp.ones(2)})
    assert placed["a"].committed
