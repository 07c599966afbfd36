"""Every invalid configuration or input raises ValueError/TypeError naming the field, the value and what is allowed."""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc


@pytest.mark.parametrize(
    "changes, exc, pattern",
    [
        ({"k": 0}, ValueError, r"k=0 .*>= 1"),
        ({"k": 2.5}, TypeError, r"k=2.5 .*int"),
        ({"metric": "manhattan"}, ValueError, r"metric='manhattan'.*cosine, euclidean, dot"),
        ({"select": "color"}, ValueError, r"select='color'.*feature, position, blend"),
        ({"sampling": "grid", "num_samples": 4}, ValueError, r"sampling='grid'.*all, random, spatial"),
        ({"sampling": "random"}, ValueError, r"num_samples=None.*sampling='random'"),
        ({"sampling": "spatial"}, ValueError, r"num_samples=None.*sampling='spatial'"),
        ({"sampling": "random", "num_samples": 0}, ValueError, r"num_samples=0"),
        ({"blend": 1.5}, ValueError, r"blend=1.5.*\[0, 1\]"),
        ({"blend": -0.1}, ValueError, r"blend=-0.1.*\[0, 1\]"),
        ({"order": "index"}, ValueError, r"order='index'.*rank, position"),
        ({"weighting": "sigmoid"}, ValueError, r"weighting='sigmoid'.*none, softmax"),
        ({"taps": "separable"}, ValueError, r"taps='separable'.*full, depthwise"),
        ({"padding": -1}, ValueError, r"padding=-1"),
        ({"self_first": 1}, TypeError, r"self_first=1"),
        ({"self_logit": float("nan")}, ValueError, r"self_logit=nan"),
        ({"shuffle_scale": 0}, ValueError, r"shuffle_scale=0"),
    ],
)
def test_config_errors(changes, exc, pattern):
    with pytest.raises(exc, match=pattern):
        cc.ConvNNConfig(**changes)


def test_unknown_config_field():
    with pytest.raises(ValueError, match=r"unknown ConvNNConfig field.*'kk'"):
        cc.ConvNNConfig().replace(kk=3)
    with pytest.raises(ValueError, match="unknown"):
        cc.ConvNNConfig.from_dict({"k": 3, "mtric": "dot"})
    assert cc.ConvNNConfig.from_dict(cc.ConvNNConfig(k=4).to_dict()) == cc.ConvNNConfig(k=4)


def test_k_above_candidates(rng):
    x = rng.standard_normal((1, 2, 2, 2))
    w = rng.standard_normal((2, 2, 20))
    with pytest.raises(ValueError, match=r"k=20 needs 19 .* only 15 are available .*candidate count 16"):
        cc.convnn2d(x, w, None, cc.ConvNNConfig(k=20))
    cfg = cc.ConvNNConfig(k=5, self_first=False, sampling="random", num_samples=4)
    with pytest.raises(ValueError, match=r"k=5 needs 5 candidates, but only 4"):
        cc.convnn2d(x, rng.standard_normal((2, 2, 5)), None, cfg, rng=0)


def test_exactly_enough_candidates_works(rng):
    x = rng.standard_normal((1, 2, 2, 2))
    y = cc.convnn2d(x, rng.standard_normal((2, 2, 16)), None, cc.ConvNNConfig(k=16))
    assert y.shape == (1, 2, 2, 2)


def test_non_square_spatial_samples(rng):
    x = rng.standard_normal((1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"num_samples=10 must be a perfect square"):
        cc.convnn2d(x, rng.standard_normal((2, 2, 9)), None, cc.ConvNNConfig(sampling="spatial", num_samples=10))


def test_random_without_rng_or_candidates(rng):
    x = rng.standard_normal((1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"candidates= or an rng="):
        cc.convnn2d(x, rng.standard_normal((2, 2, 9)), None, cc.ConvNNConfig(sampling="random", num_samples=10))


@pytest.mark.parametrize(
    "weight_shape, cfg, pattern",
    [
        ((4, 3, 9), cc.ConvNNConfig(), r"weight has shape \(4, 3, 9\); taps='full' needs \[O, 2, 9\]"),
        ((4, 2, 8), cc.ConvNNConfig(), r"needs \[O, 2, 9\]"),
        ((4, 2, 9), cc.ConvNNConfig(aggregate_coords=True), r"C_agg=4"),
        ((2, 9, 1), cc.ConvNNConfig(taps="depthwise"), r"taps='depthwise' needs \[2, 9\]"),
    ],
)
def test_weight_shape_errors(rng, weight_shape, cfg, pattern):
    x = rng.standard_normal((1, 2, 4, 4))
    with pytest.raises(ValueError, match=pattern):
        cc.convnn2d(x, rng.standard_normal(weight_shape), None, cfg)


def test_bias_shape(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"bias has shape \(3,\); expected \[4\]"):
        cc.convnn2d(x, rng.standard_normal((4, 2, 9)), rng.standard_normal(3))


def test_dtype_errors(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((4, 2, 9))
    with pytest.raises(TypeError, match=r"weight has dtype float32 but x has float64"):
        cc.convnn2d(x, w.astype(np.float32))
    with pytest.raises(TypeError, match=r"x has dtype int64; a real floating dtype"):
        cc.convnn2d(x.astype(np.int64), w)


def test_input_rank_and_nan(rng):
    w = rng.standard_normal((4, 2, 9))
    with pytest.raises(ValueError, match=r"x has shape \(2, 4, 4\); expected 4 dims \[B, C, H, W\]"):
        cc.convnn2d(rng.standard_normal((2, 4, 4)), w)
    x = rng.standard_normal((1, 2, 4, 4))
    x[0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        cc.convnn2d(x, w)


def test_candidate_index_errors(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((4, 2, 9))
    cfg = cc.ConvNNConfig(sampling="random", num_samples=10)
    with pytest.raises(ValueError, match=r"token index 36; allowed are 0..35"):
        cc.convnn2d(x, w, None, cfg, candidates=np.arange(27, 37))
    with pytest.raises(ValueError, match=r"token index -1"):
        cc.convnn2d(x, w, None, cfg, candidates=np.arange(-1, 9))
    with pytest.raises(ValueError, match="repeated"):
        cc.convnn2d(x, w, None, cfg, candidates=np.array([1, 2, 3, 3, 4, 5, 6, 7, 8, 9]))
    with pytest.raises(TypeError, match="integer token indices"):
        cc.convnn2d(x, w, None, cfg, candidates=np.linspace(0, 9, 10))
    with pytest.raises(ValueError, match=r"first dim must be the batch 1"):
        cc.convnn2d(x, w, None, cfg, candidates=np.zeros((2, 10), dtype=np.int64))


def test_attention_errors(rng):
    x = rng.standard_normal((2, 5, 4))
    params = {k: rng.standard_normal((4, 4)) for k in ("wq", "wk", "wv", "wo")}
    params["taps"] = np.ones((4, 3))
    cfg = cc.attention_config(3)
    with pytest.raises(ValueError, match=r"heads=3 must be a positive int that divides the width D=4"):
        cc.convnn_attention(x, params, cfg, heads=3)
    with pytest.raises(ValueError, match=r"missing \['wo'\]"):
        cc.convnn_attention(x, {k: v for k, v in params.items() if k != "wo"}, cfg)
    with pytest.raises(ValueError, match=r"params\['wq'\] has shape \(4, 3\)"):
        cc.convnn_attention(x, dict(params, wq=rng.standard_normal((4, 3))), cfg)
    with pytest.raises(ValueError, match=r"padding=1"):
        cc.convnn_attention(x, params, cc.ConvNNConfig(k=3, taps="depthwise"))
    with pytest.raises(ValueError, match=r"params\['taps'\] has shape \(4, 3\); taps='depthwise' needs \[4, 5\]"):
        cc.convnn_attention(x, params, cc.attention_config(5))
    with pytest.raises(ValueError, match=r"k=6 needs 6 candidates, but only 5"):
        cc.convnn_attention(x, dict(params, taps=np.ones((4, 6))), cc.attention_config(6))
    with pytest.raises(ValueError, match="dropout > 0 with train=True needs an rng"):
        cc.convnn_attention(x, params, cfg, dropout=0.1, train=True)
    with pytest.raises(ValueError, match=r"k=9 is larger than the number of keys N=5"):
        cc.kvt_attention(x, params, 9)
    with pytest.raises(ValueError, match=r"mode='dilated'"):
        cc.sparse_attention(x, params, "dilated", 2)
