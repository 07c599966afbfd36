"""The torch backend's CPU selection on the numba streaming top-K kernel agrees with its own torch code."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from convnn import ConvNNConfig, attention_config, explain, get_backend  # noqa: E402
from convnn.backends.torch import cpu_select, ops  # noqa: E402

CONFIGS = [
    {},
    {"metric": "euclidean", "self_first": False},
    {"metric": "dot", "k": 5},
    {"weighting": "softmax"},
    {"sampling": "random", "num_samples": 30},
    {"order": "position", "k": 4},
]


def _both(monkeypatch, fn):
    """fn() on the numba selection and on the torch selection (CONVNN_TORCH_NO_NUMBA=1)."""
    with_numba = fn()
    monkeypatch.setenv("CONVNN_TORCH_NO_NUMBA", "1")
    without = fn()
    monkeypatch.delenv("CONVNN_TORCH_NO_NUMBA")
    return with_numba, without


def test_the_numba_path_is_taken_on_the_cpu(monkeypatch):
    calls = []
    real = cpu_select.select_topk
    monkeypatch.setattr(cpu_select, "select_topk", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64)
    get_backend("torch").convnn2d(x, torch.randn(8, 8, 9, dtype=torch.float64), None, ConvNNConfig())
    assert calls, "the CPU selection did not run on the numba kernel"
    monkeypatch.setenv("CONVNN_TORCH_NO_NUMBA", "1")
    calls.clear()
    get_backend("torch").convnn2d(x, torch.randn(8, 8, 9, dtype=torch.float64), None, ConvNNConfig())
    assert not calls


@pytest.mark.parametrize("kw", CONFIGS, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "default" for c in CONFIGS])
def test_layer_outputs_and_gradients_agree(monkeypatch, kw):
    cfg = ConvNNConfig(**kw)
    be = get_backend("torch")
    rng = np.random.default_rng(0)
    x0 = torch.tensor(rng.standard_normal((3, 6, 9, 11)))
    w0 = torch.tensor(rng.standard_normal((5, 6, cfg.k)) * 0.3)

    def run():
        x, w = x0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        y = be.convnn2d(x, w, None, cfg, rng=3)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        return y.detach(), x.grad, w.grad

    a, b = _both(monkeypatch, run)
    for got, want in zip(a, b):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_select_indices_agree_with_shared_and_per_sample_candidates(monkeypatch):
    g = torch.Generator().manual_seed(1)
    q, kf = torch.randn(3, 20, 6, generator=g), torch.randn(3, 40, 6, generator=g)
    queries = torch.arange(5, 25)
    shared = torch.sort(torch.randperm(40, generator=g)[:17]).values
    per = torch.sort(torch.stack([torch.randperm(40, generator=g)[:17] for _ in range(3)]), 1).values
    for cand in (None, shared, per):
        for metric in ("cosine", "euclidean", "dot"):
            for self_first in (True, False):
                (ia, aa), (ib, ab) = _both(monkeypatch, lambda: ops.select_topk(q, kf, queries, cand, 6, metric,
                                                                                self_first))
                assert torch.equal(ia, ib), (metric, self_first, cand is None)
                torch.testing.assert_close(aa, ab, rtol=1e-5, atol=1e-6)


def test_ties_go_to_the_lower_index_on_the_numba_path():
    feats = torch.zeros(1, 8, 2)
    feats[0, :, 0] = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 1.0, 3.0, 0.0])
    query = torch.zeros(1, 1, 2)
    query[0, 0, 0] = 1.0
    assert cpu_select.usable(query, None)
    idx, _ = ops.select_topk(query, feats, None, None, 3, "dot", False)
    assert idx.tolist() == [[[1, 2, 4]]]


def test_attention_with_heads_agrees(monkeypatch):
    be = get_backend("torch")
    rng = np.random.default_rng(2)
    d, heads = 12, 3
    x = torch.tensor(rng.standard_normal((2, 17, d)))
    params = {n: torch.tensor(rng.standard_normal((d, d)) / d ** 0.5) for n in ("wq", "wk", "wv", "wo")}
    params["taps"] = torch.tensor(rng.standard_normal((d, 5)))
    cfg = attention_config(5)
    a, b = _both(monkeypatch, lambda: be.convnn_attention(x, params, cfg, heads=heads))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_explain_names_the_selection_path(monkeypatch):
    cfg = ConvNNConfig()
    path = [line for line in explain("convnn2d", cfg, backend="torch").splitlines() if "path:" in line]
    assert path and "numba streaming top-K" in path[0]
    monkeypatch.setenv("CONVNN_TORCH_NO_NUMBA", "1")
    text = explain("convnn2d", cfg, backend="torch")
    assert "passed over selection by the numba streaming top-K kernel: CONVNN_TORCH_NO_NUMBA=1" in text
    text = explain("convnn2d", ConvNNConfig(select="position", metric="euclidean"), backend="torch", dtype="float32")
    assert "grid distance" in text


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_queries_from_the_keys_take_the_symmetric_kernel(monkeypatch, dtype):
    """A layer whose queries are its own tokens selects through the numba symmetric kernel, with the indices
    (hence outputs) of the row-block kernel."""
    from convnn.backends.numba import primitives, self_select_kernels

    calls = []
    real = self_select_kernels.select_self
    monkeypatch.setattr(self_select_kernels, "select_self", lambda *a: calls.append(1) or real(*a))
    x = torch.relu(torch.randn(4, 8, 9, 10, dtype=dtype, generator=torch.Generator().manual_seed(4)))
    w = torch.randn(8, 8, 9, dtype=dtype, generator=torch.Generator().manual_seed(5))
    outs = []
    for items in (0, 10 ** 9):
        monkeypatch.setattr(primitives, "SELF_SELECT_ITEMS_PER_THREAD", items)
        outs.append(get_backend("torch").convnn2d(x, w, None, ConvNNConfig()))
    assert calls == [1]
    assert torch.equal(outs[0], outs[1])
