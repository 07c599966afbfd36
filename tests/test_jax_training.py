"""The jax backend's layers against torch.nn.functional, AdamW and clipping against torch, and a jitted train step."""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc
from test_jax_helpers import backend, x64

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
jnp = jax.numpy
F = torch.nn.functional


def _t(a):
    return torch.tensor(np.asarray(a))


def _close(got, want, rtol=1e-10):
    np.testing.assert_allclose(np.asarray(got), want.detach().numpy() if hasattr(want, "detach") else want,
                               rtol=rtol, atol=rtol)


def test_layers_match_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    bias = rng.standard_normal(4)
    with x64():
        be = backend()
        _close(be.conv2d(x, w, bias, padding=1), F.conv2d(_t(x), _t(w), _t(bias), padding=1))
        _close(be.conv2d(x, w, None, stride=2), F.conv2d(_t(x), _t(w), stride=2))
        _close(be.conv2d(x, w[:, :, :2, :2], bias, padding="same"),
               F.conv2d(_t(x), _t(w[:, :, :2, :2]), _t(bias), padding="same"))
        lw, lb = rng.standard_normal((5, 6)), rng.standard_normal(5)
        _close(be.linear(jnp.asarray(x), lw, lb), F.linear(_t(x), _t(lw), _t(lb)))
        g, bt = rng.standard_normal(3), rng.standard_normal(3)
        state = {"mean": jnp.asarray(rng.standard_normal(3)), "var": jnp.asarray(rng.random(3) + 0.5)}
        rm, rv = _t(state["mean"]).clone(), _t(state["var"]).clone()
        y, new = be.batch_norm(jnp.asarray(x), jnp.asarray(g), jnp.asarray(bt), state, train=True)
        want = F.batch_norm(_t(x), rm, rv, _t(g), _t(bt), training=True, momentum=0.1, eps=1e-5)
        _close(y, want)
        _close(new["mean"], rm)
        _close(new["var"], rv)
        y, same = be.batch_norm(jnp.asarray(x), jnp.asarray(g), jnp.asarray(bt), new, train=False)
        _close(y, F.batch_norm(_t(x), rm, rv, _t(g), _t(bt), training=False))
        _close(be.layer_norm(jnp.asarray(x), jnp.ones(6), jnp.zeros(6)), F.layer_norm(_t(x), (6,)))
        _close(be.gelu(jnp.asarray(x)), F.gelu(_t(x)))
        _close(be.relu(jnp.asarray(x)), F.relu(_t(x)))
        _close(be.max_pool2d(jnp.asarray(x), 2), F.max_pool2d(_t(x), 2))
        for size in ((7, 7), (3, 4), (1, 1)):
            _close(be.adaptive_avg_pool2d(jnp.asarray(x), size), F.adaptive_avg_pool2d(_t(x), size))
        _close(be.adaptive_avg_pool2d(jnp.asarray(x[:, :, :1, :1]), (7, 7)),
               F.adaptive_avg_pool2d(_t(x[:, :, :1, :1]), (7, 7)))
        logits, labels = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
        _close(be.softmax(jnp.asarray(logits)), F.softmax(_t(logits), -1))
        _close(be.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), F.cross_entropy(_t(logits), _t(labels)))


def test_dropout_is_inverted_and_keyed():
    be = backend()
    x = jnp.ones((200, 50))
    key = be.make_rng(0)
    y = be.dropout(x, 0.25, key, train=True)
    kept = np.asarray(y) != 0
    assert 0.70 < kept.mean() < 0.80 and np.allclose(np.asarray(y)[kept], 1 / 0.75)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(be.dropout(x, 0.25, key, train=True)))
    assert be.dropout(x, 0.25, key, train=False) is x


def test_adamw_and_clipping_match_torch():
    rng = np.random.default_rng(1)
    params = {"a": rng.standard_normal((3, 2)), "b": {"c": rng.standard_normal(4)}}
    grads = [{"a": rng.standard_normal((3, 2)), "b": {"c": rng.standard_normal(4)}} for _ in range(3)]
    with x64():
        be = backend()
        opt = be.adamw(1e-2, weight_decay=0.1)
        p = jax.tree_util.tree_map(jnp.asarray, params)
        state = opt.init(p)
        update = jax.jit(opt.update)
        for g in grads:
            p, state = update(jax.tree_util.tree_map(jnp.asarray, g), state, p)
        tp = [torch.tensor(params["a"], requires_grad=True), torch.tensor(params["b"]["c"], requires_grad=True)]
        topt = torch.optim.AdamW(tp, lr=1e-2, weight_decay=0.1, eps=1e-8)
        for g in grads:
            tp[0].grad, tp[1].grad = torch.tensor(g["a"]), torch.tensor(g["b"]["c"])
            topt.step()
        _close(p["a"], tp[0], rtol=1e-12)
        _close(p["b"]["c"], tp[1], rtol=1e-12)
        # clipping: torch's formula, both when it scales and when it does not
        for max_norm in (0.5, 100.0):
            clipped, norm = be.clip_grad_norm(jax.tree_util.tree_map(jnp.asarray, grads[0]), max_norm)
            tg = [torch.tensor(grads[0]["a"]), torch.tensor(grads[0]["b"]["c"])]
            tparams = [torch.zeros_like(t, requires_grad=True) for t in tg]
            for t, gg in zip(tparams, tg):
                t.grad = gg
            tnorm = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
            _close(norm, tnorm, rtol=1e-12)
            _close(clipped["a"], tparams[0].grad, rtol=1e-12)


def test_jitted_train_step_learns_and_compiles_once():
    cfg = cc.ConvNNConfig(k=3, weighting="softmax")
    be = backend()
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((8, 2, 4, 4)).astype(np.float32))
    labels = jnp.asarray((np.asarray(x).mean(axis=(1, 2, 3)) > 0).astype(np.int32))
    params = {"w": jnp.asarray(rng.standard_normal((4, 2, 3)).astype(np.float32) * 0.3), "b": jnp.zeros(4),
              "head": jnp.asarray(rng.standard_normal((2, 4)).astype(np.float32) * 0.3)}
    traces = []

    def loss_fn(p, x, y):
        traces.append(1)
        h = be.relu(be.convnn2d(x, p["w"], p["b"], cfg))
        logits = be.linear(h.mean(axis=(2, 3)), p["head"], None)
        return be.cross_entropy(logits, y)

    step = be.make_train_step(loss_fn, be.adamw(1e-1), max_grad_norm=1.0)
    opt_state = be.adamw(1e-1).init(params)
    losses = []
    for _ in range(25):
        params, opt_state, loss, _, norm = step(params, opt_state, x, labels)
        losses.append(float(loss))
    assert len(traces) == 1
    assert losses[-1] < losses[0] * 0.6, losses
    assert np.isfinite(float(norm))
