"""The numba backend's one-pass input layout: padded tokens equal the pipeline's default (pad, then the
channels-last view) exactly, with the same gradient, and the layer reaches it."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
import autograd.numpy as anp  # noqa: E402
from autograd import grad  # noqa: E402

from convnn import ConvNNConfig, get_backend  # noqa: E402
from convnn.backends.numba import token_layout  # noqa: E402
from convnn.backends.numba.kernels import NumbaKernels  # noqa: E402
from convnn.kernels import KernelsBase  # noqa: E402

SHAPES = [((2, 3, 4, 5), 1), ((2, 3, 4, 5), 0), ((1, 5, 3, 6), 2), ((2, 3, 7), 2), ((3, 2, 5), 0)]


def _default(x, p: int):
    return KernelsBase.padded_tokens(NumbaKernels(1), x, p)


@pytest.mark.parametrize("shape,p", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padded_tokens_equal_the_default_layout(shape, p, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    out = token_layout.padded_tokens(x, p)
    assert out.dtype == dtype and out.flags.c_contiguous
    np.testing.assert_array_equal(out, np.asarray(_default(x, p)))


@pytest.mark.parametrize("shape,p", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padded_tokens_gradient_equals_the_default(shape, p, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    cot = rng.standard_normal(np.shape(_default(x, p))).astype(dtype)
    fused = grad(lambda a: anp.sum(token_layout.padded_tokens(a, p) * cot))(x)
    default = grad(lambda a: anp.sum(_default(a, p) * cot))(x)
    assert fused.dtype == dtype and fused.shape == x.shape
    np.testing.assert_array_equal(fused, default)


def test_the_layer_pads_through_the_one_pass_kernel(monkeypatch):
    calls = []
    real = token_layout.padded_tokens
    monkeypatch.setattr(token_layout, "padded_tokens", lambda x, p: calls.append(p) or real(x, p))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((5, 4, 9)).astype(np.float32)
    cfg = ConvNNConfig(k=9, padding=1)
    y = get_backend("numba").convnn2d(x, w, None, cfg)
    assert calls == [1]
    monkeypatch.setattr(NumbaKernels, "padded_tokens", KernelsBase.padded_tokens)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(get_backend("numba").convnn2d(x, w, None, cfg)))


def test_other_inputs_take_the_default():
    assert not token_layout.applies(np.zeros((2, 3, 4, 5), dtype=np.float16))
    assert not token_layout.applies(np.zeros((2, 3, 4, 5, 6), dtype=np.float32))
    assert token_layout.applies(np.zeros((2, 3, 4), dtype=np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_contiguous_tokens_of_a_channels_last_view(dtype):
    a = np.random.default_rng(5).standard_normal((3, 70, 130)).astype(dtype)
    view = a.transpose(0, 2, 1)
    out = token_layout.contiguous_tokens(view, np.dtype(dtype))
    assert out.flags.c_contiguous and out.dtype == dtype
    np.testing.assert_array_equal(out, view)
    same = np.ascontiguousarray(view)
    assert token_layout.contiguous_tokens(same, np.dtype(dtype)) is same
    np.testing.assert_array_equal(token_layout.contiguous_tokens(view, np.dtype(np.float64)), view)
