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


# ----------------------------------------------------------------------------- sampled layers under fullgraph
def _sampled(kind, sampling):
    from convnn.backends.torch.modules import Branching2d, ConvNN1d

    if kind == "ConvNN2d":
        return ConvNN2d(4, 6, sampling=sampling, num_samples=16), (2, 4, 6, 5)
    if kind == "ConvNN1d":
        return ConvNN1d(4, 6, 3, sampling=sampling, num_samples=5), (2, 4, 9)
    if kind == "Branching2d":
        return Branching2d(4, 6, 0.5, sampling=sampling, num_samples=16), (2, 4, 6, 5)
    return ConvNNAttention(8, 2, 3, sampling=sampling, num_samples=5, dropout=0.1), (2, 7, 8)


@pytest.mark.parametrize("sampling", ["random", "spatial"])
@pytest.mark.parametrize("kind", ["ConvNN2d", "ConvNN1d", "Branching2d", "ConvNNAttention"])
def test_fullgraph_traces_sampled_layers_in_training_and_eval(kind, sampling):
    # Dynamo cannot trace np.random.default_rng: training draws come from torch's global RNG on the device,
    # eval's fixed draw from the custom op convnn::seeded_candidates
    torch.manual_seed(0)
    m, shape = _sampled(kind, sampling)
    x = torch.randn(*shape, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    m.train()
    torch.manual_seed(5)
    y = compiled(x)
    torch.manual_seed(5)
    torch.testing.assert_close(y, m(x))  # the same global-RNG draws, compiled or eager
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x))
    torch._dynamo.reset()


def test_eval_draw_is_the_specs_draw_for_the_layer_seed_compiled_or_not():
    import numpy as np

    from convnn import convnn2d

    torch.manual_seed(1)
    m = ConvNN2d(3, 5, 4, sampling="random", num_samples=10).double().eval()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    want = convnn2d(x.numpy(), m.weight.detach().numpy(), m.bias.detach().numpy(), m.config,
                    rng=int(m.sample_seed))
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        np.testing.assert_allclose(m(x).numpy(), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(compiled(x).numpy(), want, rtol=1e-12, atol=1e-12)
        # the seed is read when the graph runs: a loaded state_dict changes the draw of the compiled module too
        other = ConvNN2d(3, 5, 4, sampling="random", num_samples=10).double().eval()
        m.load_state_dict(other.state_dict())
        torch.testing.assert_close(compiled(x), other(x))


def test_training_draws_follow_torch_manual_seed():
    m = ConvNN2d(4, 6, sampling="random", num_samples=12).train()
    x = torch.randn(2, 4, 6, 6)
    torch.manual_seed(3)
    a = m(x)
    torch.manual_seed(3)
    torch.testing.assert_close(m(x), a)
    assert not torch.allclose(m(x), a)


def test_functional_key_draw_traces_and_equals_the_spec():
    import numpy as np

    from convnn import ConvNNConfig, convnn2d, get_backend

    be = get_backend("torch")
    cfg = ConvNNConfig(k=4, sampling="random", num_samples=10)
    x, w = torch.randn(2, 3, 5, 5, dtype=torch.float64), torch.randn(6, 3, 4, dtype=torch.float64)
    fn = torch.compile(lambda a, b: be.convnn2d(a, b, None, cfg, rng=be.make_rng(7)), fullgraph=True,
                       backend="aot_eager")
    np.testing.assert_allclose(fn(x, w).numpy(), convnn2d(x.numpy(), w.numpy(), None, cfg, rng=7), rtol=1e-12,
                               atol=1e-12)
