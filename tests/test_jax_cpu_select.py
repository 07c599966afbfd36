"""The jax backend's CPU selection on the numba kernel: queries that are the keys' own rows reach the symmetric
kernel, with the indices of the row-block kernel."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("numba")

from convnn import ConvNNConfig, attention_config, get_backend  # noqa: E402
from convnn.backends.numba import primitives, self_select_kernels  # noqa: E402


def _spy(monkeypatch) -> list:
    calls = []
    real = self_select_kernels.select_self
    monkeypatch.setattr(self_select_kernels, "select_self", lambda *a: calls.append(1) or real(*a))
    return calls


def _both_kernels(monkeypatch, fn) -> list:
    outs = []
    for items in (0, 10 ** 9):
        monkeypatch.setattr(primitives, "SELF_SELECT_ITEMS_PER_THREAD", items)
        outs.append(np.asarray(fn()))
    return outs


def test_layer_queries_take_the_symmetric_kernel(monkeypatch):
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((4, 8, 9, 10)), 0).astype(np.float32)
    w = rng.standard_normal((8, 8, 9)).astype(np.float32)
    be = get_backend("jax")
    sym, rows = _both_kernels(monkeypatch, lambda: be.convnn2d(x, w, None, ConvNNConfig()))
    assert calls == [1]
    np.testing.assert_array_equal(sym, rows)


def test_attention_queries_are_projections_so_the_row_kernel_runs(monkeypatch):
    """ConvNN attention scores projected queries against keys: not the keys' own rows, so no symmetric kernel."""
    calls = _spy(monkeypatch)
    rng = np.random.default_rng(1)
    d = 12
    x = rng.standard_normal((4, 17, d)).astype(np.float32)
    params = {n: (rng.standard_normal((d, d)) / d ** 0.5).astype(np.float32) for n in ("wq", "wk", "wv", "wo")}
    params["taps"] = rng.standard_normal((d, 5)).astype(np.float32)
    get_backend("jax").convnn_attention(x, params, attention_config(5), heads=3)
    assert calls == []
