"""NumpyOps (backends/numpy/vocab.py) against torch.nn.functional in float64, forward and autograd gradients."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
anp = pytest.importorskip("autograd.numpy")

from convnn.backends.common.numpy_ops import NumpyOps  # noqa: E402
from convnn import attention as spec_attention  # noqa: E402

OPS = NumpyOps(np)
AOPS = NumpyOps(anp)


def t(a: np.ndarray, grad: bool = False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.fixture
def gen() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 1, "same"), (2, 1, "same"), (4, 4, 0),
                                                    (1, 1, 0), (3, 2, 1)])
def test_conv2d_forward_and_grad(gen, kernel, stride, padding):
    x = gen.standard_normal((2, 3, 8, 8))
    w = gen.standard_normal((5, 3, kernel, kernel))
    b = gen.standard_normal(5)
    y = OPS.conv2d(x, w, b, stride=stride, padding=padding)
    xt, wt, bt = t(x, True), t(w, True), t(b, True)
    yt = F.conv2d(xt, wt, bt, stride=stride, padding=padding)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = gen.standard_normal(y.shape)
    (yt * t(g)).sum().backward()
    vg = AOPS.value_and_grad(lambda p: anp.sum(AOPS.conv2d(p["x"], p["w"], p["b"], stride=stride,
                                                           padding=padding) * g))
    _, grads = vg({"x": x, "w": w, "b": b})
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["w"], wt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["b"], bt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_linear_layer_norm_gelu_softmax(gen):
    x = gen.standard_normal((4, 6, 10))
    w, b = gen.standard_normal((7, 10)), gen.standard_normal(7)
    np.testing.assert_allclose(OPS.linear(x, w, b), F.linear(t(x), t(w), t(b)).numpy(), rtol=1e-12)
    g, beta = gen.standard_normal(10), gen.standard_normal(10)
    np.testing.assert_allclose(OPS.layer_norm(x, g, beta), F.layer_norm(t(x), (10,), t(g), t(beta)).numpy(),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(OPS.gelu(x), F.gelu(t(x)).numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(AOPS.gelu(x), F.gelu(t(x)).numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(OPS.relu(x), F.relu(t(x)).numpy())
    np.testing.assert_allclose(OPS.softmax(x, axis=1), F.softmax(t(x), dim=1).numpy(), rtol=1e-12)
    # gradients of layer_norm + gelu
    xt, gt, bt = t(x, True), t(g, True), t(beta, True)
    up = gen.standard_normal(x.shape)
    (F.gelu(F.layer_norm(xt, (10,), gt, bt)) * t(up)).sum().backward()
    _, grads = AOPS.value_and_grad(lambda p: anp.sum(AOPS.gelu(AOPS.layer_norm(p["x"], p["g"], p["b"])) * up))(
        {"x": x, "g": g, "b": beta})
    for name, ref in (("x", xt), ("g", gt), ("b", bt)):
        np.testing.assert_allclose(grads[name], ref.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_batch_norm_train_and_eval_match_torch(gen):
    x = gen.standard_normal((4, 3, 5, 5)) * 2 + 1
    gamma, beta = gen.standard_normal(3), gen.standard_normal(3)
    state = {"mean": np.zeros(3), "var": np.ones(3)}
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y, new_state = OPS.batch_norm(x, gamma, beta, state, train=True)
    yt = F.batch_norm(t(x), rm, rv, t(gamma), t(beta), training=True, momentum=0.1, eps=1e-5)
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new_state["mean"], rm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(new_state["var"], rv.numpy(), rtol=1e-12)
    y_eval, same = OPS.batch_norm(x, gamma, beta, new_state, train=False)
    yt_eval = F.batch_norm(t(x), rm, rv, t(gamma), t(beta), training=False, eps=1e-5)
    np.testing.assert_allclose(y_eval, yt_eval.numpy(), rtol=1e-10, atol=1e-12)
    # gradient through the batch statistics
    xt, gt = t(x, True), t(gamma, True)
    up = gen.standard_normal(x.shape)
    (F.batch_norm(xt, None, None, gt, t(beta), training=True) * t(up)).sum().backward()
    (_, aux), grads = AOPS.value_and_grad(
        lambda p: (lambda out: (anp.sum(out[0] * up), out[1]))(AOPS.batch_norm(p["x"], p["g"], beta, state,
                                                                              train=True)),
        has_aux=True)({"x": x, "g": gamma})
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(grads["g"], gt.grad.numpy(), rtol=1e-9, atol=1e-11)
    assert type(aux["mean"]) is np.ndarray


@pytest.mark.parametrize("hw,out", [((8, 8), (2, 2)), ((1, 1), (7, 7)), ((5, 7), (3, 2)), ((6, 6), (4, 4))])
def test_pools(gen, hw, out):
    x = gen.standard_normal((2, 3) + hw)
    np.testing.assert_allclose(OPS.adaptive_avg_pool2d(x, out), F.adaptive_avg_pool2d(t(x), out).numpy(),
                               rtol=1e-12)
    if min(hw) >= 2:
        np.testing.assert_allclose(OPS.max_pool2d(x, 2), F.max_pool2d(t(x), 2).numpy())
        xt = t(x, True)
        F.max_pool2d(xt, 2).sum().backward()
        _, grads = AOPS.value_and_grad(lambda a: anp.sum(AOPS.max_pool2d(a, 2)))(x)
        np.testing.assert_allclose(grads, xt.grad.numpy())


def test_cross_entropy_and_grad(gen):
    logits = gen.standard_normal((6, 10)) * 3
    labels = gen.integers(0, 10, 6)
    ref = F.cross_entropy(t(logits), torch.tensor(labels))
    np.testing.assert_allclose(OPS.cross_entropy(logits, labels), ref.item(), rtol=1e-12)
    lt = t(logits, True)
    F.cross_entropy(lt, torch.tensor(labels)).backward()
    value, grads = AOPS.value_and_grad(lambda z: AOPS.cross_entropy(z, labels))(logits)
    np.testing.assert_allclose(grads, lt.grad.numpy(), rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="labels"):
        OPS.cross_entropy(logits, labels[:3])


def test_dropout_is_inverted_and_seeded(gen):
    x = np.ones((200, 50))
    y = OPS.dropout(x, 0.25, np.random.default_rng(3), train=True)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    np.testing.assert_array_equal(y, OPS.dropout(x, 0.25, 3, train=True))
    assert OPS.dropout(x, 0.25, None, train=False) is x
    with pytest.raises(ValueError, match="rng"):
        OPS.dropout(x, 0.5, None, train=True)


def _attn_params(gen, d):
    return {k: gen.standard_normal((d, d)) / np.sqrt(d) for k in ("wq", "wk", "wv", "wo")}


@pytest.mark.parametrize("kind", ["mha", "kvt", "local", "sparse-local", "sparse-strided"])
def test_attentions_match_spec_and_differentiate(gen, kind):
    x = gen.standard_normal((2, 9, 8))
    params = _attn_params(gen, 8)
    calls = {
        "mha": (lambda ops, *a, **k: ops.multihead_attention(*a, heads=2, **k),
                lambda *a, **k: spec_attention.multihead_attention(*a, heads=2, **k)),
        "kvt": (lambda ops, *a, **k: ops.kvt_attention(*a, 3, **k),
                lambda *a, **k: spec_attention.kvt_attention(*a, 3, **k)),
        "local": (lambda ops, *a, **k: ops.local_attention(*a, 2, **k),
                  lambda *a, **k: spec_attention.local_attention(*a, 2, **k)),
        "sparse-local": (lambda ops, *a, **k: ops.sparse_attention(*a, "local", 4, **k),
                         lambda *a, **k: spec_attention.sparse_attention(*a, "local", 4, **k)),
        "sparse-strided": (lambda ops, *a, **k: ops.sparse_attention(*a, "strided", 3, **k),
                           lambda *a, **k: spec_attention.sparse_attention(*a, "strided", 3, **k)),
    }
    mine, spec = calls[kind]
    np.testing.assert_allclose(mine(OPS, x, params), spec(x, params), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mine(OPS, x, params, dropout=0.3, rng=5, train=True),
                               spec(x, params, dropout=0.3, rng=5, train=True), rtol=1e-10, atol=1e-12)
    # gradients against torch autograd on the same formula (dense attention via the spec on torch)
    pt = {k: t(v, True) for k, v in params.items()}
    xt = t(x, True)
    up = gen.standard_normal(x.shape)
    (spec(xt, pt) * t(up)).sum().backward()
    _, grads = AOPS.value_and_grad(lambda p: anp.sum(mine(AOPS, p["x"], p) * up))({"x": x, **params})
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    for k in ("wq", "wk", "wv", "wo"):
        np.testing.assert_allclose(grads[k], pt[k].grad.numpy(), rtol=1e-9, atol=1e-11)


def test_kvt_ties_go_to_lower_index():
    # identical keys: every score in a row ties, so the k=2 kept keys must be tokens 0 and 1
    x = np.ones((1, 5, 4))
    params = {k: np.eye(4) for k in ("wq", "wk", "wv", "wo")}
    x[0, :, 0] = np.arange(5.0)  # values differ, keys differ only through channel 0 ...
    params["wk"] = np.diag([0.0, 1.0, 1.0, 1.0])  # ... which wk removes, so all q.k tie
    out = OPS.kvt_attention(x, params, 2)
    np.testing.assert_allclose(out[0, :, 0], 0.5)  # mean of values 0 and 1


def test_adamw_matches_torch(gen):
    params = {"a": gen.standard_normal((3, 4)), "b": {"c": gen.standard_normal(5)}}
    tp = [t(params["a"], True), t(params["b"]["c"], True)]
    opt_t = torch.optim.AdamW(tp, lr=1e-2, weight_decay=0.1, betas=(0.8, 0.9), eps=1e-6)
    opt = OPS.adamw(1e-2, weight_decay=0.1, betas=(0.8, 0.9), eps=1e-6)
    state = opt.init(params)
    for _ in range(4):
        grads = {"a": gen.standard_normal((3, 4)), "b": {"c": gen.standard_normal(5)}}
        opt_t.zero_grad()
        tp[0].grad, tp[1].grad = t(grads["a"]), t(grads["b"]["c"])
        opt_t.step()
        params, state = opt.update(grads, state, params)
    np.testing.assert_allclose(params["a"], tp[0].detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(params["b"]["c"], tp[1].detach().numpy(), rtol=1e-12)
    assert int(state["step"]) == 4


def test_clip_grad_norm_matches_torch(gen):
    grads = {"a": gen.standard_normal((3, 4)) * 5, "b": gen.standard_normal(5)}
    tp = [t(np.zeros((3, 4)), True), t(np.zeros(5), True)]
    tp[0].grad, tp[1].grad = t(grads["a"]), t(grads["b"])
    ref_norm = torch.nn.utils.clip_grad_norm_(tp, 1.0)
    clipped, norm = OPS.clip_grad_norm(grads, 1.0)
    np.testing.assert_allclose(norm, ref_norm.item(), rtol=1e-12)
    np.testing.assert_allclose(clipped["a"], tp[0].grad.numpy(), rtol=1e-12)
    small, _ = OPS.clip_grad_norm({"a": np.full(2, 1e-3)}, 1.0)
    np.testing.assert_array_equal(small["a"], np.full(2, 1e-3))


def test_arrays_and_rng():
    a = OPS.asarray([1, 2], "float32")
    assert a.dtype == np.float32
    with pytest.raises(ValueError, match="dtype"):
        OPS.asarray([1], "complex7")
    k1, k2 = OPS.split_rng(OPS.make_rng(0), 2)
    again = OPS.split_rng(OPS.make_rng(0), 2)
    assert k1.random() == again[0].random() and k2.random() == again[1].random()
    assert OPS.compile(len) is len


def test_numpy_backend_has_every_op():
    from convnn import get_backend
    from convnn.vocabulary import missing_ops

    assert missing_ops(get_backend("numpy")) == []
