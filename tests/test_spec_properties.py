"""Property tests of the spec (hypothesis): permutation equivariance and scale invariance of cosine selection."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import convnn as cc

SEEDS = st.integers(0, 2**31 - 1)


def _feats(seed: int, b: int, n: int, c: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, n, c))


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, n=st.integers(2, 12), c=st.integers(2, 4), k=st.integers(1, 12), metric=st.sampled_from(
    ["cosine", "euclidean", "dot"]))
def test_permuting_tokens_permutes_the_output(seed, n, c, k, metric):
    """Generic features (C >= 2, no ties): select=feature, sampling=all, padding 0 is permutation equivariant."""
    k = min(k, n)
    x = _feats(seed, 2, n, c)
    w = np.random.default_rng(seed + 1).standard_normal((3, c, k))
    cfg = cc.ConvNNConfig(k=k, metric=metric, padding=0, weighting="softmax")
    perm = np.random.default_rng(seed + 2).permutation(n)
    y = cc.convnn1d(np.swapaxes(x, 1, 2), w, None, cfg)
    yp = cc.convnn1d(np.swapaxes(x[:, perm], 1, 2), w, None, cfg)
    np.testing.assert_allclose(yp, y[:, :, perm], rtol=1e-9, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, n=st.integers(2, 12), c=st.integers(1, 4), k=st.integers(1, 12),
       scale=st.floats(1e-3, 1e3))
def test_cosine_selection_is_scale_invariant(seed, n, c, k, scale):
    k = min(k, n)
    feats = _feats(seed, 1, n, c)
    cfg = cc.ConvNNConfig(k=k, metric="cosine", padding=0, self_first=True)
    idx, aff = cc.select_neighbors(feats, cfg)
    idx_s, aff_s = cc.select_neighbors(feats * scale, cfg)
    # equal up to near-ties that rounding may reorder: compare the selected affinities
    np.testing.assert_allclose(aff_s, aff, atol=1e-9)
    assert (idx_s[..., 0] == np.arange(n)).all()


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, n=st.integers(3, 10), k=st.integers(1, 3))
def test_selected_set_is_the_top_k(seed, n, k):
    feats = _feats(seed, 1, n, 2)
    cfg = cc.ConvNNConfig(k=k, metric="dot", padding=0, self_first=False)
    idx, aff = cc.select_neighbors(feats, cfg)
    scores = feats[0] @ feats[0].T / np.sqrt(2)
    for i in range(n):
        best = np.sort(scores[i])[::-1][:k]
        np.testing.assert_allclose(aff[0, i], best, rtol=1e-12)
        np.testing.assert_allclose(scores[i, idx[0, i]], best, rtol=1e-12)
