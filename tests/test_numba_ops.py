"""The numba backend against the spec: forward on NumPy float64, gradients against torch autograd of the spec."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("autograd")

import autograd  # noqa: E402

from convnn import ConvNNConfig, attention_config, get_backend  # noqa: E402
from convnn import attention as spec_attention  # noqa: E402
from convnn import layers as spec_layers  # noqa: E402
from convnn.vocabulary import missing_ops  # noqa: E402


@pytest.fixture(scope="module")
def nb():
    return get_backend("numba")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))) /
                 (np.max(np.abs(np.asarray(b, np.float64))) + 1e-30))


def _check_against_spec(f_numba, f_spec, arrays, *, dtype=np.float64, rtol=1e-9):
    """Forward vs the spec on NumPy, and the VJP of a random projection vs torch autograd of the spec."""
    torch = pytest.importorskip("torch")
    arrays = [a.astype(dtype) for a in arrays]
    y = f_numba(*arrays)
    y_spec = f_spec(*arrays)
    assert y.dtype == dtype
    assert _rel(y, y_spec) < rtol
    proj = _rng(99).standard_normal(y.shape).astype(dtype)
    grads = autograd.grad(lambda *a: np.sum(f_numba(*a) * proj), list(range(len(arrays))))(*arrays)
    leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
    (f_spec(*leaves) * torch.tensor(proj)).sum().backward()
    for g, leaf in zip(grads, leaves):
        assert g.dtype == dtype
        assert _rel(g, leaf.grad.numpy()) < rtol


def test_backend_is_complete(nb):
    assert nb.name == "numba"
    assert missing_ops(nb) == []


CONV_CONFIGS = {
    "paper-vgg": ConvNNConfig(),
    "softmax-cosine": ConvNNConfig(weighting="softmax"),
    "softmax-self-logit": ConvNNConfig(weighting="softmax", self_logit=1.0, order="position"),
    "euclidean-no-self": ConvNNConfig(weighting="softmax", metric="euclidean", self_first=False),
    "dot-blend": ConvNNConfig(weighting="softmax", metric="dot", select="blend", blend=0.3),
    "position-conv": ConvNNConfig(select="position", metric="euclidean", order="position", self_first=False),
    "spatial": ConvNNConfig(sampling="spatial", num_samples=9, weighting="softmax"),
    "random": ConvNNConfig(sampling="random", num_samples=12, weighting="softmax", k=4),
    "k1-pad0": ConvNNConfig(k=1, padding=0),
    "depthwise": ConvNNConfig(taps="depthwise", weighting="softmax", k=5),
    "aggregate-coords": ConvNNConfig(aggregate_coords=True, weighting="softmax", k=4),
}


@pytest.mark.parametrize("name", sorted(CONV_CONFIGS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_convnn2d_matches_spec(nb, name, dtype):
    cfg = CONV_CONFIGS[name]
    rng = _rng(1)
    x = rng.standard_normal((2, 3, 5, 6))  # a non-square map
    c_agg = 3 + (2 if cfg.aggregate_coords else 0)
    w = rng.standard_normal((c_agg, cfg.k) if cfg.taps == "depthwise" else (4, c_agg, cfg.k))
    b = rng.standard_normal(c_agg if cfg.taps == "depthwise" else 4)
    rtol = 1e-9 if dtype == np.float64 else 2e-5
    _check_against_spec(lambda x, w, b: nb.convnn2d(x, w, b, cfg, rng=3),
                        lambda x, w, b: spec_layers.convnn2d(x, w, b, cfg, rng=3), [x, w, b], dtype=dtype, rtol=rtol)


def test_convnn2d_explicit_candidates_and_k_equal_to_candidate_count(nb):
    rng = _rng(2)
    x, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal(4)
    cand = np.array([[0, 7, 8, 9, 15, 22], [3, 8, 9, 10, 16, 40]])
    cfg = ConvNNConfig(k=6, self_first=False, weighting="softmax")
    w = rng.standard_normal((4, 3, 6))
    _check_against_spec(lambda x, w, b: nb.convnn2d(x, w, b, cfg, candidates=cand),
                        lambda x, w, b: spec_layers.convnn2d(x, w, b, cfg, candidates=cand), [x, w, b])


def test_convnn2d_shuffle_scale(nb):
    rng = _rng(3)
    cfg = ConvNNConfig(shuffle_scale=2, k=5)
    _check_against_spec(lambda x, w, b: nb.convnn2d(x, w, b, cfg), lambda x, w, b: spec_layers.convnn2d(x, w, b, cfg),
                        [rng.standard_normal((2, 2, 4, 6)), rng.standard_normal((8, 8, 5)), rng.standard_normal(8)])


def test_convnn1d_matches_spec(nb):
    rng = _rng(4)
    cfg = ConvNNConfig(k=3, weighting="softmax", select="blend")
    _check_against_spec(lambda x, w, b: nb.convnn1d(x, w, b, cfg), lambda x, w, b: spec_layers.convnn1d(x, w, b, cfg),
                        [rng.standard_normal((2, 3, 7)), rng.standard_normal((4, 3, 3)), rng.standard_normal(4)])


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("variant", ["dense-depthwise", "sampled-depthwise", "dense-full"])
def test_convnn_attention_matches_spec(nb, heads, variant):
    cfg = {"dense-depthwise": attention_config(4),
           "sampled-depthwise": attention_config(3, sampling="random", num_samples=6),
           "dense-full": attention_config(4, taps="full")}[variant]
    rng = _rng(5)
    d = 8
    names = ("wq", "wk", "wv", "wo", "taps")
    arrays = [rng.standard_normal((2, 7, d))] + [rng.standard_normal((d, d)) * 0.3 for _ in range(4)]
    arrays.append(rng.standard_normal((d, cfg.k) if cfg.taps == "depthwise" else (d, d, cfg.k)))

    def run(op):
        return lambda x, *p: op(x, dict(zip(names, p)), cfg, heads=heads, dropout=0.2, rng=7, train=True)

    _check_against_spec(run(nb.convnn_attention), run(spec_attention.convnn_attention), arrays)


def test_attention_dense_k_equal_n_is_softmax_attention(nb):
    rng = _rng(6)
    d, n = 6, 5
    params = {k: rng.standard_normal((d, d)) for k in ("wq", "wk", "wv", "wo")}
    x = rng.standard_normal((2, n, d))
    y = nb.convnn_attention(x, dict(params, taps=np.ones((d, n))), attention_config(n))
    assert _rel(y, nb.multihead_attention(x, params)) < 1e-9


@pytest.mark.parametrize("cfg", [ConvNNConfig(k=3, padding=0),
                                 ConvNNConfig(k=9, self_first=False, order="position", metric="euclidean"),
                                 ConvNNConfig(k=2, sampling="random", num_samples=5, metric="dot")])
def test_select_neighbors_matches_spec(nb, cfg):
    feats = _rng(7).standard_normal((2, 9, 4))
    idx, aff = nb.select_neighbors(feats, cfg, rng=11)
    idx_s, aff_s = spec_layers.select_neighbors(feats, cfg, rng=11)
    assert idx.dtype == np.int64 and idx.shape == (2, 9, cfg.k)
    np.testing.assert_array_equal(idx, idx_s)
    assert _rel(aff, aff_s) < 1e-9


def test_select_neighbors_query_feats_and_gradient(nb):
    torch = pytest.importorskip("torch")
    rng = _rng(8)
    cfg = ConvNNConfig(k=3, padding=0, self_first=False, metric="cosine")
    q, f = rng.standard_normal((2, 6, 5)), rng.standard_normal((2, 6, 5))
    idx, aff = nb.select_neighbors(f, cfg, query_feats=q)
    idx_s, aff_s = spec_layers.select_neighbors(f, cfg, query_feats=q)
    np.testing.assert_array_equal(idx, idx_s)
    dq, df = autograd.grad(lambda q, f: np.sum(nb.select_neighbors(f, cfg, query_feats=q)[1] ** 2), (0, 1))(q, f)
    qt, ft = torch.tensor(q, requires_grad=True), torch.tensor(f, requires_grad=True)
    (spec_layers.select_neighbors(ft, cfg, query_feats=qt)[1] ** 2).sum().backward()
    assert _rel(dq, qt.grad.numpy()) < 1e-9 and _rel(df, ft.grad.numpy()) < 1e-9


def test_ties_go_to_the_lower_token_index(nb):
    # tokens 1, 3 and 4 are copies of one vector; with k=2 the two lowest copies must win
    base = np.array([1.0, 2.0, 0.5])
    feats = np.stack([np.array([-1.0, 0.2, 0.1]), base, np.array([0.3, -2.0, 1.0]), base, base])[None]
    cfg = ConvNNConfig(k=2, padding=0, self_first=False)
    query = np.tile(base, (1, 5, 1))
    idx, _ = nb.select_neighbors(feats, cfg, query_feats=query)
    np.testing.assert_array_equal(idx[0], np.tile([1, 3], (5, 1)))
    np.testing.assert_array_equal(idx, spec_layers.select_neighbors(feats, cfg, query_feats=query)[0])
    # zero-padded maps: every pad token scores cosine 0, the lower ones are chosen first
    x = np.zeros((1, 2, 3, 3))
    x[0, 0, 1, 1] = 1.0
    w = _rng(9).standard_normal((2, 2, 4))
    cfg2 = ConvNNConfig(k=4)
    assert _rel(nb.convnn2d(x, w, None, cfg2), spec_layers.convnn2d(x, w, None, cfg2)) < 1e-12


def test_position_selection_is_conv2d_3x3(nb):
    rng = _rng(10)
    x, w = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 9))
    cfg = ConvNNConfig(select="position", metric="euclidean", order="position", self_first=False)
    y = nb.convnn2d(x, w, None, cfg)
    ref = nb.conv2d(x, w.reshape(4, 3, 3, 3), None, padding=1)
    assert _rel(y, ref) < 1e-9


def test_errors_follow_the_spec(nb):
    x = np.zeros((1, 2, 2, 2))
    with pytest.raises(ValueError, match="k=9"):
        nb.convnn2d(x, np.zeros((3, 2, 9)), None, ConvNNConfig(padding=0))
    with pytest.raises(ValueError, match="taps='full' needs"):
        nb.convnn2d(x, np.zeros((3, 2, 4)), None, ConvNNConfig(k=3))
    with pytest.raises(ValueError, match="rng="):
        nb.convnn2d(x, np.zeros((3, 2, 3)), None, ConvNNConfig(k=3, sampling="random", num_samples=4))
    with pytest.raises(TypeError, match="dtype"):
        nb.convnn2d(x.astype(np.float32), np.zeros((3, 2, 3)), None, ConvNNConfig(k=3))
    with pytest.raises(ValueError, match="NaN"):
        nb.convnn2d(np.full((1, 2, 2, 2), np.nan), np.zeros((3, 2, 3)), None, ConvNNConfig(k=3))
    with pytest.raises(ValueError, match="repeated"):
        nb.convnn2d(x, np.zeros((3, 2, 3)), None, ConvNNConfig(k=3), candidates=[1, 1, 2, 3])
    with pytest.raises(ValueError, match="threads"):
        get_backend("numba", threads=0)
    with pytest.raises(ValueError, match="option"):
        get_backend("numba", blas=1)


def test_backward_is_deterministic_and_thread_count_independent_per_image(nb):
    rng = _rng(12)
    x, w = rng.standard_normal((3, 4, 5, 5)).astype(np.float32), rng.standard_normal((4, 4, 9)).astype(np.float32)
    cfg = ConvNNConfig(weighting="softmax")
    grad = autograd.grad(lambda x, w: np.sum(nb.convnn2d(x, w, None, cfg) ** 2), (0, 1))
    first = grad(x, w)
    for _ in range(3):
        again = grad(x, w)
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)
    one = get_backend("numba", threads=1)
    dx1, _ = autograd.grad(lambda x, w: np.sum(one.convnn2d(x, w, None, cfg) ** 2), (0, 1))(x, w)
    np.testing.assert_array_equal(dx1, first[0])  # dx is owned per image: same bits on any thread count


@pytest.mark.slow
@pytest.mark.parametrize("hw,channels", [(32, 16), (16, 64)])
def test_vgg_sized_layer_matches_spec(nb, hw, channels):
    """A VGG-shaped layer (many row blocks, several tiles per image) forward and gradients in float64."""
    rng = _rng(13)
    cfg = ConvNNConfig(weighting="softmax")
    x = rng.standard_normal((2, channels, hw, hw))
    w = rng.standard_normal((8, channels, 9)) / np.sqrt(9 * channels)
    b = rng.standard_normal(8)
    _check_against_spec(lambda x, w, b: nb.convnn2d(x, w, b, cfg), lambda x, w, b: spec_layers.convnn2d(x, w, b, cfg),
                        [x, w, b], rtol=1e-8)
