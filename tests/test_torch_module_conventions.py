"""The torch modules follow nn.Conv2d conventions: reset_parameters(), extra_repr, return_indices=True, and a
key_padding_mask on ConvNNAttention checked against the same sequences with the padded tokens removed."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from convnn.backends.torch.modules import (  # noqa: E402
    Branching2d, ConvNN1d, ConvNN2d, ConvNNAttention, MultiHeadSelfAttention, NotEnoughCandidates)
from convnn.selection import NotEnoughCandidates as CoreNotEnoughCandidates  # noqa: E402

MAKERS = {
    "ConvNN2d": lambda: ConvNN2d(3, 5, 4),
    "ConvNN2d-depthwise": lambda: ConvNN2d(3, 3, 4, taps="depthwise"),
    "ConvNN1d": lambda: ConvNN1d(3, 4, 3, aggregate_coords=True),
    "Branching2d": lambda: Branching2d(3, 6, 0.5, 4),
    "ConvNNAttention": lambda: ConvNNAttention(8, 2, 3),
    "ConvNNAttention-full": lambda: ConvNNAttention(8, 2, 3, taps="full"),
    "MultiHeadSelfAttention": lambda: MultiHeadSelfAttention(8, 2),
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_reset_parameters_redraws_as_construction_does(kind):
    torch.manual_seed(11)
    m = MAKERS[kind]()
    built = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    torch.manual_seed(11)
    m.reset_parameters()
    for name, value in m.state_dict().items():
        if kind == "Branching2d" and not name.startswith("convnn."):
            # construction draws the ConvNN branch's eval seed between the branches: the 3x3 and 1x1 convs
            # are re-drawn within their init bounds, not bit for bit
            fan_in = built[name].numel() // built[name].shape[0] if value.ndim > 1 else 6 * 9
            bound = 1.0 / fan_in ** 0.5 if value.ndim > 1 else 1.0
            assert float(value.abs().max()) <= bound and not torch.equal(value, built[name] + 1.0), name
            continue
        torch.testing.assert_close(value, built[name], rtol=0, atol=0, msg=name)


def test_extra_repr_names_shape_k_and_what_differs_from_the_defaults():
    assert repr(ConvNN2d(3, 5)) == "ConvNN2d(3, 5, k=9)"
    text = repr(ConvNN2d(3, 5, 4, metric="euclidean", padding=0, bias=False, return_indices=True))
    assert text == "ConvNN2d(3, 5, k=4, metric='euclidean', padding=0, bias=False, return_indices=True)"
    assert repr(ConvNN1d(2, 2, 3, order="position")) == "ConvNN1d(2, 2, k=3, order='position')"
    first = repr(ConvNNAttention(8, 2, 3)).splitlines()[1].strip()
    assert first == "embed_dim=8, num_heads=2, k=3, dropout=0.0"
    sampled = repr(ConvNNAttention(8, 2, 3, sampling="random", num_samples=6, metric="cosine")).splitlines()[1]
    assert "metric='cosine'" in sampled and "sampling='random', num_samples=6" in sampled
    assert "self_first" not in sampled  # the sampled default (self first) is not repeated


def _tokens_2d(x: torch.Tensor, p: int) -> torch.Tensor:
    xp = torch.nn.functional.pad(x, (p, p, p, p))
    return xp.flatten(2).transpose(1, 2)  # [B, (H+2p)(W+2p), C]


@pytest.mark.parametrize("options", [{}, {"order": "position", "metric": "euclidean"},
                                     {"sampling": "spatial", "num_samples": 16}])
def test_convnn2d_indices_reproduce_the_output(options):
    torch.manual_seed(0)
    m = ConvNN2d(3, 5, 4, return_indices=True, **options).double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    y, idx = m(x)
    assert idx.dtype == torch.int64 and idx.shape == (2, 6, 5, 4)
    plain = ConvNN2d(3, 5, 4, **options).double()
    plain.load_state_dict(m.state_dict())
    torch.testing.assert_close(y, plain(x), rtol=0, atol=0)
    tok = _tokens_2d(x, 1)
    gathered = torch.stack([tok[b, idx[b].reshape(-1)] for b in range(2)]).reshape(2, 6, 5, 4, 3)
    want = torch.einsum("bijkc,ock->boij", gathered, m.weight) + m.bias[None, :, None, None]
    torch.testing.assert_close(y, want)
    if options.get("order") != "position":
        rows = torch.arange(6)[:, None] + 1
        cols = torch.arange(5)[None, :] + 1
        assert torch.equal(idx[..., 0], (rows * 7 + cols).expand(2, 6, 5))  # self first: its own padded token


def test_convnn1d_indices_shape_and_self_slot():
    m = ConvNN1d(3, 4, 3, padding=2, return_indices=True)
    y, idx = m(torch.randn(2, 3, 9))
    assert y.shape == (2, 4, 9) and idx.shape == (2, 9, 3) and idx.dtype == torch.int64
    assert torch.equal(idx[..., 0], (torch.arange(9) + 2).expand(2, 9))
    assert int(idx.max()) < 13


def _scores(m: ConvNNAttention, x: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    h = m.num_heads
    q = m.q_proj(x).reshape(b, n, h, d // h).transpose(1, 2)
    k = m.k_proj(x).reshape(b, n, h, d // h).transpose(1, 2)
    return q @ k.transpose(-1, -2)  # [B, H, N, N]


def test_attention_indices_are_each_heads_top_k():
    torch.manual_seed(1)
    m = ConvNNAttention(8, 2, 3, return_indices=True).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    y, idx = m(x)
    assert idx.dtype == torch.int64 and idx.shape == (2, 2, 7, 3)
    want = torch.topk(_scores(m, x), 3, dim=-1).indices
    assert torch.equal(idx, want)
    m.return_indices = False
    torch.testing.assert_close(m(x), y, rtol=0, atol=0)


def _masked_case(n: int = 10):
    torch.manual_seed(2)
    x = torch.randn(3, n, 8, dtype=torch.float64)
    mask = torch.zeros(3, n, dtype=torch.bool)
    mask[1, 6:] = True                     # right padding
    mask[2, [0, 3, 4]] = True              # holes anywhere
    return x, mask


@pytest.mark.parametrize("heads,metric", [(1, "dot"), (2, "cosine")])
def test_key_padding_mask_equals_the_sequences_without_padding(heads, metric):
    m = ConvNNAttention(8, heads, 4, metric=metric, return_indices=True).double().eval()
    x, mask = _masked_case()
    y, idx = m(x, key_padding_mask=mask)
    for b in range(3):
        keep = (~mask[b]).nonzero().flatten()
        assert not torch.isin(idx[b], mask[b].nonzero().flatten()).any()  # no query ever picks a padded token
        y_short, idx_short = m(x[b:b + 1, keep])
        torch.testing.assert_close(y[b, keep], y_short[0])
        assert torch.equal(idx[b][:, keep], keep[idx_short[0]])  # the same neighbours, in the long indexing


def test_key_padding_mask_with_sampling_keeps_self_first_for_valid_queries_only():
    m = ConvNNAttention(8, 2, 3, sampling="random", num_samples=9, return_indices=True, seed=4).double().eval()
    x, mask = _masked_case(12)
    _, idx = m(x, key_padding_mask=mask)
    padded = mask[:, None, :, None].expand_as(idx[..., :1])
    tokens = torch.arange(12)[None, None, :, None].expand_as(idx[..., :1])
    assert torch.equal(idx[..., :1][~padded], tokens[~padded])          # a valid query is its own first slot
    for b in range(3):
        assert not torch.isin(idx[b], mask[b].nonzero().flatten()).any()


def test_no_padding_mask_is_the_plain_call_and_gradients_flow():
    m = ConvNNAttention(8, 2, 3).double()
    x, mask = _masked_case()
    none = torch.zeros_like(mask)
    torch.testing.assert_close(m(x, key_padding_mask=none), m(x), rtol=0, atol=0)
    x.requires_grad_(True)
    m(x, key_padding_mask=mask).sum().backward()
    assert torch.isfinite(x.grad).all() and all(p.grad is not None for p in m.parameters())


def test_too_few_valid_candidates_raise_a_named_error():
    m = ConvNNAttention(8, 1, 4)
    x = torch.randn(2, 6, 8)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 3:] = True  # 3 valid tokens, K = 4
    with pytest.raises(NotEnoughCandidates, match=r"k=4 needs 4 valid candidates .* batch item 1.* only 3"):
        m(x, key_padding_mask=mask)
    assert NotEnoughCandidates is CoreNotEnoughCandidates and issubclass(NotEnoughCandidates, ValueError)
    with pytest.raises(NotEnoughCandidates):  # the same error when K exceeds the tokens without a mask
        ConvNNAttention(8, 1, 7)(x)


def test_bad_padding_masks_are_named():
    m = ConvNNAttention(8, 1, 2)
    x = torch.randn(2, 6, 8)
    with pytest.raises(TypeError, match="key_padding_mask has dtype torch.float32"):
        m(x, key_padding_mask=torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"key_padding_mask has shape \[2, 5\]"):
        m(x, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="return_indices"):
        ConvNN2d(3, 4, return_indices=1)
