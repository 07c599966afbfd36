"""The torch slot affinities without a gathered key copy: equal to the gathered formula, gradients included,
and no op of a ConvNN attention forward+backward produces a tensor the size of the [G, Nq, K, F] gather."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from convnn import attention_config, get_backend  # noqa: E402
from convnn.backends.torch import aggregation, paired, selection  # noqa: E402


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_paired_affinity_equals_the_gathered_formula_with_gradients(metric, monkeypatch):
    monkeypatch.setattr(aggregation, "ELEMENTWISE_BLOCK_ELEMENTS", 64)  # several row blocks
    gen = torch.Generator().manual_seed(3)
    g, n, f, nq, k = 3, 17, 5, 11, 4
    q = torch.randn(g, nq, f, dtype=torch.float64, generator=gen, requires_grad=True)
    keys = torch.randn(g, n, f, dtype=torch.float64, generator=gen, requires_grad=True)
    idx = torch.randint(0, n, (g, nq, k), generator=gen)
    idx[0, 0] = 2  # one key chosen in every slot of a row: its gradient accumulates
    got = paired.paired_affinity(metric, q, keys, idx)
    want = selection.paired_affinity(metric, q, selection.gather_rows(keys, idx))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn(g, nq, k, dtype=torch.float64, generator=gen)
    got_grads = torch.autograd.grad((got * weights).sum(), (q, keys))
    want_grads = torch.autograd.grad((want * weights).sum(), (q, keys))
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: paired.paired_affinity(metric, a, b, idx), (q, keys))


def test_paired_dots_pass_the_custom_op_checks():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 4, generator=gen, requires_grad=True)
    keys = torch.randn(2, 9, 4, generator=gen, requires_grad=True)
    idx = torch.randint(0, 9, (2, 6, 3), generator=gen)
    torch.library.opcheck(paired.paired_dots, (q, keys, idx))


class _LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_attention_training_never_builds_the_whole_gathered_copy(monkeypatch):
    monkeypatch.setattr(aggregation, "ELEMENTWISE_BLOCK_ELEMENTS", 1 << 14)
    b, n, d, k = 2, 64, 32, 9
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, n, d, generator=gen, requires_grad=True)
    params = {name: (torch.randn(d, d, generator=gen) * 0.2).requires_grad_() for name in ("wq", "wk", "wv", "wo")}
    params["taps"] = torch.randn(d, k, generator=gen).requires_grad_()
    be = get_backend("torch", check_inputs=False)
    with _LargestOutput() as meter:
        be.convnn_attention(x, params, attention_config(k), heads=2).sum().backward()
    gathered = b * n * k * d
    assert meter.largest < gathered // 2, (meter.largest, gathered)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
