"""The onnx backend: exported ConvNN graphs on onnxruntime against the float64 oracle, the tie rule, forward-only
behaviour, auto exclusion, and a quick conformance run (levels 1-6, float32)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("torch")

from convnn import ConvNNConfig, get_backend  # noqa: E402
from convnn.backends import onnx as onnx_plugin  # noqa: E402
from convnn.registry import BackendUnavailable, resolve_auto  # noqa: E402


@pytest.fixture(scope="module")
def ob():
    return onnx_plugin.load()


@pytest.fixture(scope="module")
def oracle():
    return get_backend("numpy")


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_plugin_declares_forward_only_and_never_auto():
    plugin = onnx_plugin.PLUGIN
    assert plugin.auto is False and plugin.trains_convnn is False and plugin.devices == ("cpu",)


def test_auto_never_picks_onnx(monkeypatch):
    from convnn import registry

    for purpose in ("op", "train"):
        assert resolve_auto(purpose, probe=False).name != "onnx"
    # even when it is the only registered backend, auto refuses it and says why
    monkeypatch.setattr(registry.BACKENDS, "_cache", {"onnx": onnx_plugin.PLUGIN})
    with pytest.raises(BackendUnavailable, match="never chosen by auto"):
        resolve_auto("op", probe=False)


def test_capabilities_are_forward_only_float32(ob):
    caps = ob.capabilities
    assert caps.dtypes == ("float32",) and caps.differentiable == () and not caps.trainable
    with pytest.raises(NotImplementedError, match="forward only"):
        ob.value_and_grad(lambda p: p)
    with pytest.raises(NotImplementedError, match="forward only"):
        ob.batch_norm(np.zeros((1, 2, 2, 2), np.float32), np.ones(2, np.float32), np.zeros(2, np.float32),
                      {"mean": np.zeros(2, np.float32), "var": np.ones(2, np.float32)}, train=True)


def test_load_options_are_checked():
    with pytest.raises(ValueError, match="opset=9"):
        onnx_plugin.load(opset=9)
    with pytest.raises(ValueError, match="unknown option"):
        onnx_plugin.load(device="cuda")


def test_float64_is_refused_by_name(ob):
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(TypeError, match="float64 is not supported by backend 'onnx'"):
        ob.convnn2d(x, np.zeros((3, 2, 9)), None, ConvNNConfig(k=9))


@pytest.mark.parametrize("cfg", [
    ConvNNConfig(k=9, padding=1),
    ConvNNConfig(k=5, metric="euclidean", weighting="softmax", taps="depthwise", padding=1, aggregate_coords=True),
    ConvNNConfig(k=6, select="blend", metric="euclidean", order="position", padding=2),
    ConvNNConfig(k=4, sampling="random", num_samples=12, self_first=False, padding=0),
], ids=["cosine", "softmax-depthwise", "blend-position", "random"])
def test_convnn2d_matches_oracle(ob, oracle, cfg):
    rng = np.random.default_rng(0)
    c, o = 3, 4
    x = _f32(rng, 2, c, 6, 5)
    c_agg = c + (2 if cfg.aggregate_coords else 0)
    w = _f32(rng, c_agg, cfg.k) if cfg.taps == "depthwise" else _f32(rng, o, c_agg, cfg.k)
    b = _f32(rng, c_agg if cfg.taps == "depthwise" else o)
    got = ob.convnn2d(x, w, b, cfg, rng=7)
    want = oracle.convnn2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), cfg, rng=7)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_one_graph_serves_every_candidate_draw(ob, oracle):
    cfg = ConvNNConfig(k=3, sampling="random", num_samples=10, padding=0)
    rng = np.random.default_rng(1)
    x, w = _f32(rng, 1, 2, 5, 5), _f32(rng, 2, 2, 3)
    before = ob.graphs.exports
    for seed in (1, 2, 3):
        got = ob.convnn2d(x, w, None, cfg, rng=seed)
        np.testing.assert_allclose(got, oracle.convnn2d(x.astype(np.float64), w.astype(np.float64), None, cfg,
                                                        rng=seed), rtol=1e-4, atol=1e-4)
    assert ob.graphs.exports - before == 1  # the draw is a graph input, not a constant


def test_ties_keep_the_lower_index(ob):
    """Equal affinities everywhere: ONNX TopK in onnxruntime must keep lower token indices first."""
    feats = np.ones((1, 7, 2), np.float32)
    idx, _ = ob.select_neighbors(feats, ConvNNConfig(k=4, self_first=False, padding=0))
    np.testing.assert_array_equal(idx[0], np.tile(np.arange(4), (7, 1)))
    idx, _ = ob.select_neighbors(feats, ConvNNConfig(k=3, self_first=True, padding=0))
    want = np.array([[i] + [j for j in range(7) if j != i][:2] for i in range(7)])
    np.testing.assert_array_equal(idx[0], want)
    # scores 1, 3, 3, 2, 3 under dot: the three-way tie at 3 goes 1, 2, 4
    scores = np.array([[[1.0], [3.0], [3.0], [2.0], [3.0]]], np.float32)
    idx, _ = ob.select_neighbors(scores, ConvNNConfig(k=3, metric="dot", self_first=False, padding=0),
                                 query_feats=np.ones_like(scores))
    np.testing.assert_array_equal(idx[0], np.tile([1, 2, 4], (5, 1)))


def test_attention_and_baselines_match_oracle(ob, oracle):
    rng = np.random.default_rng(2)
    x = _f32(rng, 2, 10, 8)
    params = {k: _f32(rng, 8, 8) * 0.3 for k in ("wq", "wk", "wv", "wo")}
    params["taps"] = np.ones((8, 5), np.float32)
    cfg = ConvNNConfig(k=5, metric="dot", weighting="softmax", taps="depthwise", padding=0)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    got = ob.convnn_attention(x, params, cfg, heads=2)
    np.testing.assert_allclose(got, oracle.convnn_attention(x.astype(np.float64), p64, cfg, heads=2), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(ob.kvt_attention(x, params, 4, heads=2),
                               oracle.kvt_attention(x.astype(np.float64), p64, 4, heads=2), rtol=1e-4, atol=1e-5)
    with pytest.raises(NotImplementedError, match="forward only"):
        ob.convnn_attention(x, params, cfg, dropout=0.1, train=True, rng=0)


def test_conformance_quick_forward_levels_pass_and_training_is_na(ob):
    """A short conformance run: forward cells pass, gradient and training cells are n/a, never pass."""
    from conformance.results import NOT_AVAILABLE, PASS
    from conformance.runner import BackendEntry, run_suite

    entry = BackendEntry("onnx", ob, "available", ("float32",))
    keep = ("map-0", "att-0", "sel-0", "tie-", "stie-position-5x5", "id-conv", "id-attn-kvt-0", "grad-map-0",
            "fwd-vgg11-conv-", "step-vgg11-conv-", "curve-")
    report = run_suite([entry], levels=(1, 2, 3, 4, 5, 6), dtypes=("float32",), full=False,
                       case_filter=lambda c: c.id.startswith(keep))
    by_level: dict[int, set] = {}
    for r in report.results:
        by_level.setdefault(r.level, set()).add(r.status)
    assert not report.failures, [(r.case, r.detail) for r in report.failures]
    for level in (1, 3, 4):
        assert by_level[level] == {PASS}, (level, by_level[level])
    for level in (2, 5, 6):
        assert by_level[level] == {NOT_AVAILABLE}, (level, by_level[level])
    assert sum(r.status == PASS for r in report.results) >= 20


def test_model_forward_level_checks_the_whole_exported_graph(ob, monkeypatch):
    """Level 4 also compares the whole exported model; a wrong exported graph makes the cell fail."""
    from conformance.runner import BackendEntry, run_suite

    entry = BackendEntry("onnx", ob, "available", ("float32",))
    calls = []
    real = ob.exported_model_forward

    def broken(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs) + 0.5

    monkeypatch.setattr(ob, "exported_model_forward", broken)
    report = run_suite([entry], levels=(4,), dtypes=("float32",), full=False,
                       case_filter=lambda c: c.id == "fwd-vgg11-conv-float32")
    assert calls == ["vgg11"]
    assert [r.status for r in report.results] == ["FAIL"] and "exported model" in report.results[0].detail
