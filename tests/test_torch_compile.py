"""torch.library registration of the ConvNN ops and torch.compile(fullgraph=True) tracing on the CPU."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from convnn.backends.torch import ops  # noqa: E402
from convnn.backends.torch.modules import ConvNN2d, ConvNNAttention  # noqa: E402


def _inputs():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(2, 12, 3, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 12, (2, 5, 4), generator=g)
    rho = torch.rand(2, 5, 4, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    return values, idx, rho, weight, bias


def test_opcheck_gather_taps():
    values, idx, rho, weight, bias = _inputs()
    args = (values.requires_grad_(), idx, rho.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(),
            "full", False)
    torch.library.opcheck(ops.gather_taps, args)


def test_opcheck_select_and_fused():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 9, 3, generator=g)
    queries = torch.arange(2, 7)
    torch.library.opcheck(ops.select_topk, (feats[:, 2:7].contiguous(), feats, queries, None, 3, "cosine", True))
    weight = torch.randn(4, 3, 3, generator=g, requires_grad=True)
    torch.library.opcheck(ops.fused_convnn, (feats[:, 2:7].contiguous(), feats, feats.clone().requires_grad_(),
                                             queries, weight, None, 3, "cosine", True, "full", False))


def test_gather_taps_gradcheck():
    values, idx, rho, weight, bias = _inputs()
    for taps, w in (("full", weight), ("depthwise", weight[0])):
        b = bias if taps == "full" else bias[:3]
        fn = lambda v, r, ww, bb: ops.gather_taps(v, idx, r, ww, bb, taps, False)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (values.clone().requires_grad_(), rho.clone().requires_grad_(),
                                             w.clone().requires_grad_(), b.clone().requires_grad_()))


@pytest.mark.parametrize("make", [lambda: ConvNN2d(4, 6, weighting="softmax"),
                                  lambda: ConvNN2d(4, 6, select="position", metric="euclidean", order="position"),
                                  lambda: ConvNNAttention(8, 2, 3)], ids=["feature-softmax", "position", "attention"])
def test_fullgraph_trace_without_breaks(make):
    torch.manual_seed(0)
    m = make()
    x = torch.randn(2, 4, 6, 5) if isinstance(m, ConvNN2d) else torch.randn(2, 7, 8)
    x.requires_grad_(True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, m(x))
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.slow
def test_inductor_compiles_the_eager_path():
    torch.manual_seed(0)
    m = ConvNN2d(4, 6, weighting="softmax")
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, m(x))
    y.sum().backward()


def test_fullgraph_recompiles_per_map_size():
    # the plan (queries, coordinates) is static in the map size: a new size is a new graph, not an error
    torch.manual_seed(0)
    m = ConvNN2d(4, 6, weighting="softmax")
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    for shape in ((2, 4, 6, 6), (2, 4, 6, 5), (3, 4, 7, 5)):
        x = torch.randn(*shape)
        torch.testing.assert_close(compiled(x), m(x))
