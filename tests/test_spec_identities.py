"""SPEC.md section 6: the four identities, on every Array API namespace, to float64 precision."""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc

TOL = 1e-10


def conv2d_3x3_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Direct 3x3 cross-correlation with zero padding 1 (NumPy, float64)."""
    bsz, _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((bsz, w.shape[0], h, wd)) + b[None, :, None, None]
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("oc,bchw->bohw", w[:, :, dy, dx], xp[:, :, dy:dy + h, dx:dx + wd])
    return out


# Holds where twice the smaller coordinate step exceeds the diagonal step (SPEC.md 6.1).
CONV_CFG = cc.ConvNNConfig(select="position", metric="euclidean", k=9, padding=1, order="position", taps="full")


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (1, 2, 4, 7), (2, 1, 6, 4), (1, 4, 1, 1)])
def test_position_selection_is_conv3x3(ns, rng, shape):
    bsz, c, h, w = shape
    x = rng.standard_normal(shape)
    weight = rng.standard_normal((5, c, 9))
    bias = rng.standard_normal(5)
    y = ns.to_numpy(cc.convnn2d(ns.asarray(x), ns.asarray(weight), ns.asarray(bias), CONV_CFG))
    ref = conv2d_3x3_reference(x, weight.reshape(5, c, 3, 3), bias)
    np.testing.assert_allclose(y, ref, rtol=TOL, atol=TOL)


def test_position_selection_without_self_first_is_conv3x3(ns, rng):
    x = rng.standard_normal((2, 2, 4, 5))
    weight = rng.standard_normal((3, 2, 9))
    cfg = CONV_CFG.replace(self_first=False)
    y = ns.to_numpy(cc.convnn2d(ns.asarray(x), ns.asarray(weight), None, cfg))
    np.testing.assert_allclose(y, conv2d_3x3_reference(x, weight.reshape(3, 2, 3, 3), np.zeros(3)), rtol=TOL, atol=TOL)


def test_position_selection_is_framework_conv2d(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 6, 4))
    weight = rng.standard_normal((4, 3, 9))
    bias = rng.standard_normal(4)
    xt, wt, bt = (torch.as_tensor(a) for a in (x, weight, bias))
    y = cc.convnn2d(xt, wt, bt, CONV_CFG)
    ref = torch.nn.functional.conv2d(xt, wt.reshape(4, 3, 3, 3), bt, padding=1)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=TOL, atol=TOL)


def _attention_params(rng: np.random.Generator, d: int, k: int) -> dict[str, np.ndarray]:
    params = {name: rng.standard_normal((d, d)) / np.sqrt(d) for name in ("wq", "wk", "wv", "wo")}
    params["taps"] = np.ones((d, k))
    return params


@pytest.mark.parametrize("heads", [1, 2])
def test_dense_convnn_attention_is_softmax_attention(ns, rng, heads):
    n, d = 7, 8
    x = rng.standard_normal((2, n, d))
    params = _attention_params(rng, d, n)
    args = (ns.asarray(x), {k: ns.asarray(v) for k, v in params.items()})
    y = ns.to_numpy(cc.convnn_attention(*args, cc.attention_config(n), heads=heads))
    ref = ns.to_numpy(cc.multihead_attention(*args, heads=heads))
    np.testing.assert_allclose(y, ref, rtol=TOL, atol=TOL)
    # and against an independent NumPy softmax attention
    q, kk, v = (x @ params[w].T for w in ("wq", "wk", "wv"))
    dh = d // heads
    outs = []
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        s = q[..., sl] @ np.swapaxes(kk[..., sl], 1, 2) / np.sqrt(dh)
        p = np.exp(s - s.max(-1, keepdims=True))
        outs.append((p / p.sum(-1, keepdims=True)) @ v[..., sl])
    np.testing.assert_allclose(y, np.concatenate(outs, -1) @ params["wo"].T, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_dense_convnn_attention_below_n_is_kvt(ns, rng, k):
    n, d = 7, 6
    x = rng.standard_normal((2, n, d))
    params = _attention_params(rng, d, k)
    args = (ns.asarray(x), {key: ns.asarray(v) for key, v in params.items()})
    y = ns.to_numpy(cc.convnn_attention(*args, cc.attention_config(k), heads=2))
    ref = ns.to_numpy(cc.kvt_attention(*args, k, heads=2))
    np.testing.assert_allclose(y, ref, rtol=TOL, atol=TOL)


def test_kvt_matches_explicit_topk_mask(rng):
    n, d, k = 6, 4, 2
    x = rng.standard_normal((1, n, d))
    params = _attention_params(rng, d, k)
    y = cc.kvt_attention(x, params, k)
    q, kk, v = (x[0] @ params[w].T for w in ("wq", "wk", "wv"))
    s = q @ kk.T / np.sqrt(d)
    out = np.zeros((n, d))
    for i in range(n):
        top = np.argsort(-s[i], kind="stable")[:k]
        p = np.exp(s[i, top] - s[i, top].max())
        out[i] = (p / p.sum()) @ v[top]
    np.testing.assert_allclose(y[0], out @ params["wo"].T, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dot"])
def test_k1_self_first_is_1x1_conv(ns, rng, metric):
    x = rng.standard_normal((2, 3, 4, 5))
    weight = rng.standard_normal((6, 3, 1))
    bias = rng.standard_normal(6)
    cfg = cc.ConvNNConfig(k=1, metric=metric, self_first=True)
    y = ns.to_numpy(cc.convnn2d(ns.asarray(x), ns.asarray(weight), ns.asarray(bias), cfg))
    ref = np.einsum("oc,bchw->bohw", weight[:, :, 0], x) + bias[None, :, None, None]
    np.testing.assert_allclose(y, ref, rtol=TOL, atol=TOL)


def test_k1_self_first_is_1x1_conv_1d(ns, rng):
    x = rng.standard_normal((2, 3, 7))
    weight = rng.standard_normal((4, 3, 1))
    y = ns.to_numpy(cc.convnn1d(ns.asarray(x), ns.asarray(weight), None, cc.ConvNNConfig(k=1)))
    np.testing.assert_allclose(y, np.einsum("oc,bcl->bol", weight[:, :, 0], x), rtol=TOL, atol=TOL)


def test_position_selection_1d_is_conv1d_k3(ns, rng):
    x = rng.standard_normal((2, 2, 6))
    weight = rng.standard_normal((3, 2, 3))
    cfg = cc.ConvNNConfig(select="position", metric="euclidean", k=3, padding=1, order="position")
    y = ns.to_numpy(cc.convnn1d(ns.asarray(x), ns.asarray(weight), None, cfg))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1)))
    ref = sum(np.einsum("oc,bcl->bol", weight[:, :, t], xp[:, :, t:t + 6]) for t in range(3))
    np.testing.assert_allclose(y, ref, rtol=TOL, atol=TOL)
