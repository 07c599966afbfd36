"""The nn.Module drop-ins: parameter counts, state_dict, eval-mode candidate draws, identities, gradients."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from convnn import ConvNNConfig, attention_config, get_backend  # noqa: E402

from convnn.backends.torch.modules import (  # noqa: E402
    Branching2d,
    ConvNN1d,
    ConvNN2d,
    ConvNNAttention,
    KVTAttention,
    LocalAttention,
    MultiHeadSelfAttention,
    SparseAttention,
)


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_convnn2d_k9_has_the_parameters_of_a_3x3_conv():
    assert count(ConvNN2d(64, 128)) == count(torch.nn.Conv2d(64, 128, 3, padding=1))
    assert count(ConvNN2d(3, 8, aggregate_coords=True)) == 8 * 5 * 9 + 8
    assert count(ConvNN1d(4, 6, 3)) == count(torch.nn.Conv1d(4, 6, 3))


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_branching_adds_exactly_the_1x1(ratio):
    m = Branching2d(64, 128, ratio)
    conv = torch.nn.Conv2d(64, 128, 3, padding=1)
    assert count(m) == count(conv) + count(torch.nn.Conv2d(128, 128, 1))
    assert m(torch.randn(2, 64, 6, 5)).shape == (2, 128, 6, 5)


def test_vgg11_branching_parameter_count_from_the_spec():
    layers, c = [], 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v != "M":
            layers.append(Branching2d(c, v, 0.5))
            layers.append(torch.nn.BatchNorm2d(v))
            c = v
    head = [torch.nn.Linear(25088, 4096), torch.nn.Linear(4096, 4096), torch.nn.Linear(4096, 10)]
    with torch.device("meta"):
        total = sum(count(m) for m in layers) + sum(count(m) for m in head)
    assert total == 130_015_690


def test_attention_parameter_counts():
    d, k = 192, 9
    assert count(ConvNNAttention(d, 1, k)) == 4 * d * d + d * k
    assert count(MultiHeadSelfAttention(d, 3)) == 4 * d * d
    assert count(KVTAttention(d, 3, k=9)) == 4 * d * d


def test_position_convnn2d_is_conv2d_3x3():
    torch.manual_seed(0)
    m = ConvNN2d(3, 5, select="position", metric="euclidean", order="position").double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    conv = torch.nn.functional.conv2d(x, m.weight.reshape(5, 3, 3, 3), m.bias, padding=1)
    torch.testing.assert_close(m(x), conv)


def test_state_dict_round_trip_and_repr():
    torch.manual_seed(1)
    a = ConvNN2d(4, 6, sampling="random", num_samples=20)
    b = ConvNN2d(4, 6, sampling="random", num_samples=20)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(a(x), b(x))
    text = repr(a)
    assert "sampling='random'" in text and "num_samples=20" in text and "k=9" in text


def test_eval_draw_is_fixed_train_draw_is_fresh():
    torch.manual_seed(2)
    m = ConvNNAttention(16, 2, 3, sampling="random", num_samples=6)
    x = torch.randn(2, 20, 16)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    assert not torch.allclose(m(x), m(x))
    m.eval()
    m.resample = True
    assert not torch.allclose(m(x), m(x))


def test_attention_module_matches_the_functional_op():
    torch.manual_seed(3)
    m = ConvNNAttention(12, 3, 4).double().eval()
    x = torch.randn(2, 10, 12, dtype=torch.float64)
    params = {"wq": m.q_proj.weight, "wk": m.k_proj.weight, "wv": m.v_proj.weight, "wo": m.out_proj.weight,
              "taps": m.taps}
    want = get_backend("torch").convnn_attention(x, params, attention_config(4), heads=3)
    torch.testing.assert_close(m(x), want)


def test_dense_convnn_attention_with_k_n_equals_mhsa():
    torch.manual_seed(4)
    n = 7
    a = ConvNNAttention(8, 2, n).double()
    b = MultiHeadSelfAttention(8, 2).double()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if k.endswith("proj.weight")})
    x = torch.randn(3, n, 8, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("cls,kw", [(KVTAttention, {"k": 3}), (LocalAttention, {"window": 2}),
                                    (SparseAttention, {"mode": "strided", "width": 3})])
def test_baseline_modules_run_and_train(cls, kw):
    m = cls(8, 2, dropout=0.1, **kw)
    x = torch.randn(2, 9, 8, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and m.q_proj.weight.grad is not None
    assert "num_heads=2" in repr(m)


def test_gradients_reach_every_parameter():
    m = Branching2d(3, 8, 0.5, weighting="softmax")
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    m(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert x.grad is not None


def test_config_argument_and_bad_options():
    cfg = ConvNNConfig(k=4, metric="euclidean")
    assert ConvNN2d(3, 4, config=cfg).config is cfg
    with pytest.raises(TypeError, match="unknown argument"):
        ConvNN2d(3, 4, colour="red")
    with pytest.raises(ValueError, match="depthwise"):
        ConvNN2d(3, 4, taps="depthwise")
    with pytest.raises(ValueError, match="num_heads"):
        ConvNNAttention(10, 3)


@pytest.mark.parametrize("make,shape", [(lambda: ConvNN2d(3, 4), (1, 3, 5, 5)), (lambda: ConvNN1d(3, 4, 3), (1, 3, 7)),
                                        (lambda: ConvNNAttention(8, 2, 3), (1, 6, 8))],
                         ids=["ConvNN2d", "ConvNN1d", "ConvNNAttention"])
def test_modules_refuse_nan_like_the_functional_ops(make, shape):
    x = torch.randn(*shape)
    x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        make()(x)
