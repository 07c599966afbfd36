"""The numba backend's training fast paths give what the plain paths give: fused AdamW bit for bit, per-leaf
gradients equal to autograd's own, tiles that span images, and the OpenMP wait-policy default."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")
autograd = pytest.importorskip("autograd")

from convnn.backends.common.autograd_leaves import value_and_grad_leaves  # noqa: E402
from convnn.backends.common.numpy_ops import AdamW  # noqa: E402
from convnn.backends.numba.backend import NumbaBackend  # noqa: E402
from convnn.tree import tree_leaves, tree_with_leaves  # noqa: E402


def _tree(rng: np.random.Generator, dtype: type) -> dict:
    return {"conv": {"weight": rng.standard_normal((17, 33)).astype(dtype), "bias": rng.standard_normal(5).astype(dtype)},
            "blocks": [rng.standard_normal((3, 3)).astype(dtype), rng.standard_normal(70000).astype(dtype)]}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_adamw_equals_numpy_adamw_bit_for_bit(dtype: type) -> None:
    rng = np.random.default_rng(0)
    params = _tree(rng, dtype)
    fused, plain = NumbaBackend().adamw(3e-3, 0.05), AdamW(np, 3e-3, 0.05)
    s1, s2, p1, p2 = fused.init(params), plain.init(params), params, params
    for _ in range(4):
        grads = _tree(rng, dtype)
        p1, s1 = fused.update(grads, s1, p1)
        p2, s2 = plain.update(grads, s2, p2)
    assert type(fused).__name__ == "NumbaAdamW"
    for a, b in zip(tree_leaves((p1, s1)), tree_leaves((p2, s2))):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert list(p1) == list(params) and list(p1["conv"]) == list(params["conv"])  # key order kept


def test_fused_adamw_falls_back_on_mixed_dtypes() -> None:
    rng = np.random.default_rng(1)
    params = _tree(rng, np.float32)
    grads = tree_with_leaves(params, [g.astype(np.float64) for g in tree_leaves(_tree(rng, np.float32))])
    opt, plain = NumbaBackend().adamw(1e-3), AdamW(np, 1e-3)
    p1, _ = opt.update(grads, opt.init(params), params)
    p2, _ = plain.update(grads, plain.init(params), params)
    assert all(np.array_equal(a, b) for a, b in zip(tree_leaves(p1), tree_leaves(p2)))


def test_tree_with_leaves_round_trip_and_errors() -> None:
    tree = {"b": [np.zeros(1), (np.ones(2), None)], "a": np.full(3, 2.0)}
    rebuilt = tree_with_leaves(tree, tree_leaves(tree))
    assert list(rebuilt) == ["b", "a"] and rebuilt["b"][1][1] is None and isinstance(rebuilt["b"][1], tuple)
    assert all(x is y for x, y in zip(tree_leaves(rebuilt), tree_leaves(tree)))
    with pytest.raises(ValueError, match="more leaves"):
        tree_with_leaves(tree, tree_leaves(tree) + [np.zeros(1)])
    with pytest.raises(ValueError, match="fewer leaves"):
        tree_with_leaves(tree, tree_leaves(tree)[:-1])


def test_per_leaf_gradients_equal_autograds_and_never_alias() -> None:
    import autograd.numpy as anp

    rng = np.random.default_rng(2)
    leaves = [rng.standard_normal((4, 3)), rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(2)]

    def fun(ls: list) -> object:  # the two biases get the same upstream array; the last leaf is unused
        return anp.sum(anp.tanh(anp.dot(np.ones((5, 4)), ls[0]) + ls[1] + ls[2]) ** 2)

    value, grads = value_and_grad_leaves(fun, leaves)
    ref_value, ref_grads = autograd.value_and_grad(fun)(leaves)
    assert value == ref_value
    for g, r in zip(grads, ref_grads):
        assert np.array_equal(g, r)
    assert grads[1] is not grads[2] and not np.shares_memory(grads[1], grads[2])
    assert np.array_equal(grads[3], np.zeros(2))
    with pytest.raises(TypeError, match="scalar"):
        value_and_grad_leaves(lambda ls: ls[0] * 2.0, leaves)


def test_full_taps_tiles_span_images_on_small_maps() -> None:
    """2x2 maps: a forward tile holds several images' rows; the result equals the float64 oracle's."""
    from convnn import ConvNNConfig, get_backend

    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 40, 2, 2))
    w = rng.standard_normal((24, 40, 9))
    cfg = ConvNNConfig(k=9)
    got = get_backend("numba").convnn2d(x.astype(np.float32), w.astype(np.float32), None, cfg)
    want = get_backend("numpy").convnn2d(x, w, None, cfg)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_import_sets_sleeping_thread_pool_defaults_unless_the_user_chose(preset: object) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    if preset:
        env["OMP_WAIT_POLICY"] = str(preset)
    code = ("import os, convnn, convnn.thread_policy as t; "
            "print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'], t.LOADED_BEFORE)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [preset or "PASSIVE", "4", "()"]
    late = subprocess.run([sys.executable, "-c", "import numpy, convnn.thread_policy as t; print(t.describe())"],
                          env=env, capture_output=True, text=True, check=True).stdout
    assert "not affected: numpy" in late


def test_many_small_chunks_give_what_one_chunk_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunked full-taps forward and backward (rho included) do not depend on where the chunks split."""
    from convnn import ConvNNConfig
    import convnn.backends.numba.primitives as primitives

    be = NumbaBackend()
    rng = np.random.default_rng(4)
    params = {"x": rng.standard_normal((5, 16, 6, 6)), "w": rng.standard_normal((8, 16, 9))}
    cfg = ConvNNConfig(k=9, weighting="softmax")
    grad = be.value_and_grad(lambda p: be.np.sum(be.convnn2d(p["x"], p["w"], None, cfg) ** 2))
    value, grads = grad(params)
    monkeypatch.setattr(primitives, "GATHER_CHUNK_BYTES", 4096)  # 64-row chunks: 180 rows in 3
    value_small, grads_small = grad(params)
    np.testing.assert_allclose(value_small, value, rtol=1e-13)
    for name in params:
        np.testing.assert_allclose(grads_small[name], grads[name], rtol=1e-12, atol=1e-12)
