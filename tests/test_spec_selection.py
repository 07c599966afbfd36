"""Selection semantics of the spec: the lower-index tie rule, self_first, order, candidates, weights, blend."""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc
from convnn.candidates import spatial_grid_2d, spatial_line


def _tokens(values: list[float]) -> np.ndarray:
    """One query scoring [values] against candidates with dot metric: feats [1, N, 1]."""
    return np.asarray(values, dtype=np.float64)[None, :, None]


def test_ties_go_to_lower_index(ns):
    # Query 0 has feature 1; scores against the tokens are their features: [1, 3, 3, 2, 3].
    feats = _tokens([1.0, 3.0, 3.0, 2.0, 3.0])
    cfg = cc.ConvNNConfig(k=3, metric="dot", self_first=False, padding=0)
    idx, aff = cc.select_neighbors(ns.asarray(feats), cfg)
    idx = ns.to_numpy(idx)
    assert idx[0, 0].tolist() == [1, 2, 4]
    np.testing.assert_allclose(ns.to_numpy(aff)[0, 0], [3.0, 3.0, 3.0])


def test_all_equal_scores_pick_the_first_tokens(ns):
    feats = np.zeros((1, 6, 2))
    cfg = cc.ConvNNConfig(k=4, metric="cosine", self_first=False, padding=0)
    idx, _ = cc.select_neighbors(ns.asarray(feats), cfg)
    assert (ns.to_numpy(idx)[0] == np.arange(4)).all()


def test_self_first_excludes_self_from_other_slots(ns):
    feats = np.zeros((1, 5, 3))  # everything ties: self must appear once, then the lowest others
    cfg = cc.ConvNNConfig(k=3, metric="euclidean", self_first=True, padding=0)
    idx = ns.to_numpy(cc.select_neighbors(ns.asarray(feats), cfg)[0])[0]
    for i in range(5):
        others = [j for j in range(5) if j != i][:2]
        assert idx[i].tolist() == [i] + others


def test_explicit_candidate_order_does_not_matter(ns, rng):
    feats = rng.standard_normal((2, 10, 3))
    cfg = cc.ConvNNConfig(k=3, metric="cosine", sampling="random", num_samples=5, padding=0)
    a = cc.select_neighbors(ns.asarray(feats), cfg, candidates=np.array([7, 1, 4, 9, 2]))
    b = cc.select_neighbors(ns.asarray(feats), cfg, candidates=np.array([1, 2, 4, 7, 9]))
    np.testing.assert_array_equal(ns.to_numpy(a[0]), ns.to_numpy(b[0]))
    chosen = ns.to_numpy(a[0])
    for i in range(10):
        assert chosen[0, i, 0] == i
        assert set(chosen[0, i, 1:]) <= {1, 2, 4, 7, 9} - {i}


def test_order_position_sorts_slots_by_token_index(rng):
    feats = rng.standard_normal((1, 8, 4))
    base = cc.ConvNNConfig(k=4, metric="cosine", padding=0)
    ranked, aff_r = cc.select_neighbors(feats, base)
    pos, aff_p = cc.select_neighbors(feats, base.replace(order="position"))
    np.testing.assert_array_equal(np.sort(ranked, axis=-1), pos)
    perm = np.argsort(ranked, axis=-1)
    np.testing.assert_allclose(np.take_along_axis(aff_r, perm, -1), aff_p)


def test_rank_order_is_decreasing_affinity(rng):
    feats = rng.standard_normal((2, 12, 3))
    _, aff = cc.select_neighbors(feats, cc.ConvNNConfig(k=5, metric="euclidean", self_first=False, padding=0))
    assert (np.diff(aff, axis=-1) <= 0).all()


def test_softmax_weights_and_self_logit():
    from convnn.selection import neighbor_weights

    aff = np.array([[[0.5, 0.2, -0.1]]])
    w = neighbor_weights(np, cc.ConvNNConfig(k=3, weighting="softmax"), aff)
    np.testing.assert_allclose(w, np.exp(aff) / np.exp(aff).sum())
    w1 = neighbor_weights(np, cc.ConvNNConfig(k=3, weighting="softmax", self_logit=1.0), aff)
    logits = np.array([1.0, 0.2, -0.1])
    np.testing.assert_allclose(w1[0, 0], np.exp(logits) / np.exp(logits).sum())
    assert neighbor_weights(np, cc.ConvNNConfig(k=3), aff) is None


def test_spatial_grid_is_interior_and_correct():
    grid = spatial_grid_2d(8, 6, 1, 9)
    rows, cols = np.divmod(grid, 8)  # padded width 6 + 2
    assert set(rows.tolist()) == {1, 4, 8} and set(cols.tolist()) == {1, 3, 6}
    assert len(grid) == 9
    with pytest.raises(ValueError, match="perfect square"):
        spatial_grid_2d(8, 6, 1, 8)
    np.testing.assert_array_equal(spatial_line(10, 2, 4), [2, 5, 8, 11])


def test_random_candidates_are_drawn_from_the_rng_reproducibly(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    w = rng.standard_normal((4, 3, 9))
    cfg = cc.ConvNNConfig(sampling="random", num_samples=20)
    a = cc.convnn2d(x, w, None, cfg, rng=5)
    b = cc.convnn2d(x, w, None, cfg, rng=5)
    cand = cc.draw_random(64, 20, 5)
    c = cc.convnn2d(x, w, None, cfg, candidates=cand)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_num_samples_at_least_token_count_means_all(rng):
    x = rng.standard_normal((1, 2, 3, 3))
    w = rng.standard_normal((2, 2, 9))
    dense = cc.convnn2d(x, w, None, cc.ConvNNConfig())
    for sampling in ("random", "spatial"):
        cfg = cc.ConvNNConfig(sampling=sampling, num_samples=25)
        np.testing.assert_array_equal(cc.convnn2d(x, w, None, cfg, rng=0), dense)


def test_per_sample_candidates(rng):
    x = rng.standard_normal((2, 2, 4, 4))
    w = rng.standard_normal((3, 2, 4))
    cfg = cc.ConvNNConfig(k=4, sampling="random", num_samples=6)
    cand = np.array([[0, 5, 6, 9, 10, 20], [1, 2, 7, 14, 21, 30]])
    both = cc.convnn2d(x, w, None, cfg, candidates=cand)
    for b in range(2):
        one = cc.convnn2d(x[b:b + 1], w, None, cfg, candidates=cand[b])
        np.testing.assert_allclose(both[b:b + 1], one, rtol=1e-12)


def test_zero_pads_are_candidates_and_self_is_slot0():
    x = np.ones((1, 1, 2, 2))
    idx, _ = cc.select_neighbors(np.ones((1, 16, 1)), cc.ConvNNConfig(k=2, padding=0))
    assert idx[0, 3, 0] == 3
    # one channel of ones: every real token has cosine 1 with the others, 0 with pads
    w = np.zeros((1, 1, 9))
    w[0, 0, :] = 1.0
    y = cc.convnn2d(x, w, None, cc.ConvNNConfig(k=9))
    np.testing.assert_allclose(y, np.full((1, 1, 2, 2), 4.0))  # 4 real ones, 5 zero pads


def test_blend_uses_per_sample_std_and_coordinates(rng):
    x = rng.standard_normal((2, 2, 4, 4))
    w = rng.standard_normal((3, 2, 9))
    pos = cc.convnn2d(x, w, None, cc.ConvNNConfig(select="position", metric="euclidean"))
    blend0 = cc.convnn2d(x, w, None, cc.ConvNNConfig(select="blend", blend=0.0, metric="euclidean"))
    np.testing.assert_allclose(blend0, pos)
    feat = cc.convnn2d(x, w, None, cc.ConvNNConfig(select="feature", metric="cosine"))
    blend1 = cc.convnn2d(x, w, None, cc.ConvNNConfig(select="blend", blend=1.0, metric="cosine"))
    np.testing.assert_allclose(blend1, feat)  # cosine ignores the per-sample scale 1/sigma


def test_aggregate_coords_adds_channels(rng):
    x = rng.standard_normal((1, 3, 4, 5))
    w = rng.standard_normal((2, 5, 9))
    y = cc.convnn2d(x, w, None, cc.ConvNNConfig(aggregate_coords=True))
    assert y.shape == (1, 2, 4, 5)
    w0 = w.copy()
    w0[:, 3:, :] = 0.0
    np.testing.assert_allclose(cc.convnn2d(x, w0, None, cc.ConvNNConfig(aggregate_coords=True)),
                               cc.convnn2d(x, w0[:, :3], None, cc.ConvNNConfig()))
    y1 = cc.convnn1d(x[:, :, 0], w[:, :4, :3], None, cc.ConvNNConfig(k=3, aggregate_coords=True))
    assert y1.shape == (1, 2, 5)


def test_depthwise_taps(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    w = rng.standard_normal((3, 9))
    full = np.zeros((3, 3, 9))
    for c in range(3):
        full[c, c] = w[c]
    cfg = cc.ConvNNConfig(taps="depthwise")
    np.testing.assert_allclose(cc.convnn2d(x, w, None, cfg), cc.convnn2d(x, full, None, cc.ConvNNConfig()))


def test_shuffle_scale_round_trip(rng):
    from convnn.layers import pixel_shuffle, pixel_unshuffle

    x = rng.standard_normal((2, 3, 4, 6))
    np.testing.assert_array_equal(pixel_shuffle(np, pixel_unshuffle(np, x, 2), 2), x)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(pixel_unshuffle(np, x, 2),
                                  torch.nn.functional.pixel_unshuffle(torch.as_tensor(x), 2).numpy())
    w = rng.standard_normal((8, 12, 9))
    y = cc.convnn2d(x, w, None, cc.ConvNNConfig(shuffle_scale=2))
    assert y.shape == (2, 2, 4, 6)
