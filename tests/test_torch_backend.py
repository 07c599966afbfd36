"""The torch backend's vocabulary against the spec (float64 NumPy oracle and torch autograd of the spec)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convnn import ConvNNConfig, attention_config, get_backend  # noqa: E402
from convnn import attention as spec_attention  # noqa: E402
from convnn import layers as spec_layers  # noqa: E402
from convnn.vocabulary import missing_ops  # noqa: E402

from convnn.backends.torch import selection  # noqa: E402

T = get_backend("torch")
NP = get_backend("numpy")

MAP_CONFIGS = [
    {},
    {"metric": "euclidean"},
    {"metric": "dot", "weighting": "softmax", "self_logit": 1.0},
    {"select": "position", "metric": "euclidean", "order": "position"},
    {"select": "blend", "weighting": "softmax", "aggregate_coords": True},
    {"taps": "depthwise", "weighting": "softmax"},
    {"sampling": "random", "num_samples": 14},
    {"sampling": "spatial", "num_samples": 9, "self_first": False, "k": 4},
    {"shuffle_scale": 2, "padding": 0, "k": 3},
]


def _weights(rng, cfg: ConvNNConfig, c: int, out: int, dims: int = 2):
    s = cfg.shuffle_scale
    c_agg = c * (s ** dims) + ((dims if dims == 2 else 1) if cfg.aggregate_coords else 0)
    if cfg.taps == "full":
        return rng.standard_normal((out * s ** dims, c_agg, cfg.k)), rng.standard_normal(out * s ** dims)
    return rng.standard_normal((c_agg, cfg.k)), rng.standard_normal(c_agg)


def _t(a, grad=False):
    return torch.tensor(a, requires_grad=grad)


def test_vocabulary_is_complete():
    assert missing_ops(T) == []
    assert T.name == "torch" and "float64" in T.supported_dtypes


@pytest.mark.parametrize("kw", MAP_CONFIGS, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "default"
                                                 for c in MAP_CONFIGS])
def test_convnn2d_forward_and_grads_match_spec(kw, rng):
    cfg = ConvNNConfig(**kw)
    x = rng.standard_normal((2, 3, 4, 6))  # non-square map
    w, b = _weights(rng, cfg, 3, 4)
    want = NP.convnn2d(x, w, b, cfg, rng=5)
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    got = T.convnn2d(xt, wt, bt, cfg, rng=5)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-9, atol=1e-9)
    cot = rng.standard_normal(want.shape)
    (got * _t(cot)).sum().backward()
    xs, ws, bs = _t(x, True), _t(w, True), _t(b, True)
    (spec_layers.convnn2d(xs, ws, bs, cfg, rng=5) * _t(cot)).sum().backward()
    for mine, ref in ((xt, xs), (wt, ws), (bt, bs)):
        np.testing.assert_allclose(mine.grad.numpy(), ref.grad.numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kw", [{}, {"metric": "euclidean", "weighting": "softmax", "taps": "depthwise"},
                                {"select": "position", "metric": "euclidean", "aggregate_coords": True}])
def test_convnn1d_matches_spec(kw, rng):
    cfg = ConvNNConfig(k=3, **kw)
    x = rng.standard_normal((2, 3, 9))
    w, b = _weights(rng, cfg, 3, 5, dims=1)
    np.testing.assert_allclose(T.convnn1d(_t(x), _t(w), _t(b), cfg).numpy(), NP.convnn1d(x, w, b, cfg),
                               rtol=1e-9, atol=1e-9)


def test_float32_within_design_tolerance(rng):
    cfg = ConvNNConfig(weighting="softmax")
    x = rng.standard_normal((2, 8, 7, 7))
    w, b = _weights(rng, cfg, 8, 6)
    want = NP.convnn2d(x, w, b, cfg)
    got = T.convnn2d(_t(x).float(), _t(w).float(), _t(b).float(), cfg).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("cfg", [attention_config(3), attention_config(3, sampling="random", num_samples=5),
                                 attention_config(2, taps="full"), attention_config(7)],
                         ids=["dense", "random", "full-taps", "k-equals-n"])
def test_convnn_attention_forward_and_grads(cfg, heads, rng):
    x = rng.standard_normal((2, 7, 8))
    params = {k: rng.standard_normal((8, 8)) * 0.5 for k in ("wq", "wk", "wv", "wo")}
    params["taps"] = rng.standard_normal((8, cfg.k) if cfg.taps == "depthwise" else (8, 8, cfg.k))
    want = NP.convnn_attention(x, params, cfg, heads=heads, rng=3)
    mine = {k: _t(v, True) for k, v in params.items()}
    ref = {k: _t(v, True) for k, v in params.items()}
    xt, xs = _t(x, True), _t(x, True)
    got = T.convnn_attention(xt, mine, cfg, heads=heads, rng=3)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-9, atol=1e-9)
    cot = _t(rng.standard_normal(want.shape))
    (got * cot).sum().backward()
    (spec_attention.convnn_attention(xs, ref, cfg, heads=heads, rng=3) * cot).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), xs.grad.numpy(), rtol=1e-9, atol=1e-9)
    for k in params:
        np.testing.assert_allclose(mine[k].grad.numpy(), ref[k].grad.numpy(), rtol=1e-9, atol=1e-9)


def test_dense_attention_with_k_equal_n_is_softmax_attention(rng):
    x = _t(rng.standard_normal((2, 6, 8)))
    params = {k: _t(rng.standard_normal((8, 8))) for k in ("wq", "wk", "wv", "wo")}
    got = T.convnn_attention(x, dict(params, taps=torch.ones(8, 6, dtype=torch.float64)), attention_config(6), heads=2)
    torch.testing.assert_close(got, T.multihead_attention(x, params, heads=2), rtol=1e-10, atol=1e-10)


def test_dropout_in_attention_matches_spec_with_int_seed(rng):
    x = rng.standard_normal((1, 5, 4))
    params = {k: rng.standard_normal((4, 4)) for k in ("wq", "wk", "wv", "wo")}
    params["taps"] = np.ones((4, 2))
    cfg = attention_config(2)
    want = NP.convnn_attention(x, params, cfg, dropout=0.5, rng=11, train=True)
    got = T.convnn_attention(_t(x), {k: _t(v) for k, v in params.items()}, cfg, dropout=0.5, rng=11, train=True)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- selection: ties, edges, errors
def test_ties_go_to_the_lower_index():
    # DESIGN.md: torch.topk returned [2, 4, 1] for these scores; the rule asks for [1, 2, 4]
    scores = torch.tensor([[[1.0, 3.0, 3.0, 2.0, 3.0, 0.0, 3.0, 1.0]]])
    assert selection.exact_topk(scores, 3).tolist() == [[[1, 2, 4]]]
    many = torch.zeros(4, 3, 50)
    many[..., ::7] = 1.0
    assert selection.exact_topk(many, 5).tolist() == [[[0, 7, 14, 21, 28]] * 3] * 4


def test_tie_rule_through_select_neighbors():
    feats = torch.zeros(1, 6, 2, dtype=torch.float64)
    feats[0, :, 0] = torch.tensor([1.0, 1.0, 1.0, 2.0, 1.0, 1.0])
    idx, _ = T.select_neighbors(feats, ConvNNConfig(k=3, metric="dot", self_first=False, padding=0))
    assert idx[0].tolist() == [[3, 0, 1]] * 6


def test_tied_random_inputs_match_the_oracle(rng):
    feats = rng.integers(0, 3, size=(2, 30, 2)).astype(np.float64)  # many exact ties
    for kw in ({"metric": "dot", "self_first": False}, {"metric": "euclidean"}, {"metric": "cosine", "k": 5}):
        cfg = ConvNNConfig(padding=0, **{"k": 4, **kw})
        want_idx, want_aff = NP.select_neighbors(feats, cfg)
        got_idx, got_aff = T.select_neighbors(_t(feats), cfg)
        np.testing.assert_array_equal(got_idx.numpy(), want_idx)
        np.testing.assert_allclose(got_aff.numpy(), want_aff, rtol=1e-12, atol=1e-12)
        got32, _ = T.select_neighbors(_t(feats).float(), cfg)
        np.testing.assert_array_equal(got32.numpy(), want_idx)


@pytest.mark.parametrize("self_first", [True, False])
def test_k_equals_candidate_count_and_k_one(self_first, rng):
    x = rng.standard_normal((1, 2, 3, 3))
    n_tokens = 25  # padded 5 x 5
    k = n_tokens if self_first else n_tokens
    for kk in (1, k):
        cfg = ConvNNConfig(k=kk, self_first=self_first)
        w, b = _weights(rng, cfg, 2, 3)
        np.testing.assert_allclose(T.convnn2d(_t(x), _t(w), _t(b), cfg).numpy(), NP.convnn2d(x, w, b, cfg),
                                   rtol=1e-9, atol=1e-9)


def test_k_one_with_self_first_is_a_1x1_conv(rng):
    x = _t(rng.standard_normal((2, 3, 5, 4)))
    w = _t(rng.standard_normal((6, 3, 1)))
    got = T.convnn2d(x, w, None, ConvNNConfig(k=1))
    torch.testing.assert_close(got, torch.nn.functional.conv2d(x, w[..., None]))


@pytest.mark.parametrize("call", ["too_many_k", "bad_weight", "bad_dtype", "nan", "bad_candidates"])
def test_errors_match_the_spec(call, rng):
    x = rng.standard_normal((1, 2, 3, 3))
    w = rng.standard_normal((4, 2, 9))
    cases = {
        "too_many_k": (x, w, ConvNNConfig(k=9, sampling="random", num_samples=5), {"rng": 0}),
        "bad_weight": (x, w[:, :, :4], ConvNNConfig(), {}),
        "bad_dtype": (x, w.astype(np.float32), ConvNNConfig(), {}),
        "nan": (np.where(x > 0, np.nan, x), w, ConvNNConfig(), {}),
        "bad_candidates": (x, w, ConvNNConfig(), {"candidates": [0, 0, 3]}),
    }
    xx, ww, cfg, kw = cases[call]
    with pytest.raises((ValueError, TypeError)) as spec_err:
        NP.convnn2d(xx, ww, None, cfg, **kw)
    with pytest.raises(type(spec_err.value)) as torch_err:
        T.convnn2d(_t(xx), _t(ww), None, cfg, **kw)
    # same message; dtypes print in each library's own spelling (float32 / torch.float32)
    assert str(torch_err.value).replace("torch.", "") == str(spec_err.value)


def test_explicit_candidates_per_sample(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    w, b = _weights(rng, ConvNNConfig(k=4), 3, 2)
    cand = np.sort(np.stack([rng.choice(36, 12, replace=False) for _ in range(2)]), axis=1)
    cfg = ConvNNConfig(k=4)
    np.testing.assert_allclose(T.convnn2d(_t(x), _t(w), _t(b), cfg, candidates=torch.as_tensor(cand)).numpy(),
                               NP.convnn2d(x, w, b, cfg, candidates=cand), rtol=1e-9, atol=1e-9)


def test_chunked_selection_equals_one_block(rng, monkeypatch):
    feats = _t(rng.standard_normal((3, 40, 5)))
    cfg = ConvNNConfig(k=6, padding=0)
    whole = T.select_neighbors(feats, cfg)
    monkeypatch.setattr(selection, "BLOCK_ELEMENTS", 37)  # forces one image and one row per block
    monkeypatch.setattr(selection, "BLOCK_ELEMENTS_THREADED", 37)
    blocked = T.select_neighbors(feats, cfg)
    assert torch.equal(whole[0], blocked[0])
    torch.testing.assert_close(whole[1], blocked[1], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- baselines
@pytest.mark.parametrize("name,args", [("multihead_attention", ()), ("kvt_attention", (3,)),
                                       ("local_attention", (2,)), ("sparse_attention", ("local", 3)),
                                       ("sparse_attention", ("strided", 2))])
def test_baseline_attentions_match_spec(name, args, rng):
    x = rng.standard_normal((2, 7, 6))
    params = {k: rng.standard_normal((6, 6)) for k in ("wq", "wk", "wv", "wo")}
    want = getattr(NP, name)(x, params, *args, heads=2)
    got = getattr(T, name)(_t(x), {k: _t(v) for k, v in params.items()}, *args, heads=2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- nn ops, arrays, training
def test_batch_norm_follows_torch_running_stats(rng):
    x = _t(rng.standard_normal((4, 3, 5, 5)))
    ref = torch.nn.BatchNorm2d(3).double()
    state = {"mean": torch.zeros(3, dtype=torch.float64), "var": torch.ones(3, dtype=torch.float64)}
    y, new = T.batch_norm(x, ref.weight.detach(), ref.bias.detach(), state, train=True)
    torch.testing.assert_close(y, ref(x).detach())
    torch.testing.assert_close(new["mean"], ref.running_mean)
    torch.testing.assert_close(new["var"], ref.running_var)
    assert float(state["var"][0]) == 1.0  # the input state is left unchanged
    ref.eval()
    y_eval, _ = T.batch_norm(x, ref.weight.detach(), ref.bias.detach(), new, train=False)
    torch.testing.assert_close(y_eval, ref(x).detach())


def test_nn_ops_shapes_and_semantics(rng):
    x = _t(rng.standard_normal((2, 3, 7, 7)))
    assert T.max_pool2d(x).shape == (2, 3, 3, 3)
    assert T.adaptive_avg_pool2d(x, (7, 7)).shape == (2, 3, 7, 7)
    assert T.conv2d(x, _t(rng.standard_normal((4, 3, 3, 3))), None, padding="same").shape == (2, 4, 7, 7)
    torch.testing.assert_close(T.gelu(x), 0.5 * x * (1 + torch.erf(x / 2 ** 0.5)))
    assert torch.equal(T.dropout(x, 0.5, T.make_rng(0), train=False), x)
    d1, d2 = (T.dropout(x, 0.5, T.make_rng(3), train=True) for _ in range(2))
    assert torch.equal(d1, d2) and set(torch.unique(d1 / x).round().tolist()) <= {0.0, 2.0}
    logits, labels = _t(rng.standard_normal((5, 4))), torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(T.cross_entropy(logits, labels),
                               -torch.log_softmax(logits, -1)[torch.arange(5), labels].mean())


def test_rng_split_is_deterministic():
    key = T.make_rng(42)
    a, b = T.split_rng(key, 2)
    assert (a, b) == T.split_rng(T.make_rng(42), 2) and a != b
    assert T.split_rng(a, 3) != T.split_rng(b, 3)


def test_arrays_round_trip():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = T.asarray(a, dtype="float32")
    assert t.dtype == torch.float32 and np.array_equal(T.to_numpy(t), a.astype(np.float32))
    assert T.asarray(a).dtype == torch.float64


def test_value_and_grad_with_aux_and_adamw_match_torch(rng):
    params = {"w": _t(rng.standard_normal((3, 2))), "b": {"v": _t(rng.standard_normal(2))}}
    x = _t(rng.standard_normal((4, 3)))

    def loss(p, inputs):
        out = inputs @ p["w"] + p["b"]["v"]
        return (out ** 2).mean(), {"out": out}

    (value, aux), grads = T.value_and_grad(loss, has_aux=True)(params, x)
    assert aux["out"].shape == (4, 2) and not aux["out"].requires_grad
    w_ref = params["w"].clone().requires_grad_(True)
    b_ref = params["b"]["v"].clone().requires_grad_(True)
    ((x @ w_ref + b_ref) ** 2).mean().backward()
    torch.testing.assert_close(grads["w"], w_ref.grad)
    torch.testing.assert_close(grads["b"]["v"], b_ref.grad)
    opt = T.adamw(1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW([w_ref, b_ref], lr=1e-2, weight_decay=0.1)
    state = opt.init(params)
    for _ in range(3):
        params, state = opt.update(grads, state, params)
        w_ref.grad, b_ref.grad = grads["w"].clone(), grads["b"]["v"].clone()
        ref_opt.step()
    torch.testing.assert_close(params["w"], w_ref.detach())
    torch.testing.assert_close(params["b"]["v"], b_ref.detach())


def test_clip_grad_norm(rng):
    grads = {"a": _t(rng.standard_normal(5) * 10), "b": _t(rng.standard_normal((2, 2)))}
    clipped, norm = T.clip_grad_norm(grads, 1.0)
    total = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
    torch.testing.assert_close(norm, total)
    torch.testing.assert_close(torch.sqrt(sum((g ** 2).sum() for g in clipped.values())),
                               total * (1.0 / (total + 1e-6)))


def test_load_refuses_unknown_options():
    from convnn.backends.torch import load

    with pytest.raises(ValueError, match="unknown option"):
        load(colour="red")


@pytest.mark.parametrize("kind", ["gaussian", "integers", "rounded"])
def test_exact_topk_equals_a_stable_sort(kind):
    gen = torch.Generator().manual_seed(5)
    for _ in range(40):
        n, slots = int(torch.randint(30, 400, (), generator=gen)), int(torch.randint(1, 12, (), generator=gen))
        key = {"gaussian": lambda: torch.randn(5, n, generator=gen),
               "integers": lambda: torch.randint(0, 4, (5, n), generator=gen).float(),
               "rounded": lambda: torch.randn(5, n, generator=gen).round(decimals=1)}[kind]()
        key[0, ::3] = -float("inf")
        want = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :slots]
        assert torch.equal(selection.exact_topk(key, slots), want)


# ----------------------------------------------------------------------------- kernels and capabilities
def test_capabilities_and_kernel_contract():
    from convnn.kernels import ConvNNKernels, check_kernels

    caps = T.capabilities
    assert caps.dtypes == ("float64", "float32") and caps.device == "cpu" and caps.memory == "host"
    assert "convnn2d" in caps.differentiable and "kvt_attention" in caps.differentiable
    assert caps.compiles and not caps.compile_by_default and caps.int64_labels and caps.can_train(True)[0]
    assert check_kernels(T.kernels) == [] and isinstance(T.kernels, ConvNNKernels)
    x = torch.ones(2)
    assert T.synchronize(x) is x and T.place({"a": x})["a"] is x


def test_path_choice_names_the_fused_kernel_only_on_cuda():
    from convnn.kernels import PathRequest

    cpu = T.kernels.choose_path(PathRequest("convnn2d", ConvNNConfig(), "float32", "cpu"))
    assert cpu.path.startswith("eager") and "not CUDA" in cpu.passed_over[0][1]
    soft = T.kernels.choose_path(PathRequest("convnn2d", ConvNNConfig(weighting="softmax"), "float32", "cuda"))
    assert soft.path.startswith("eager") and "weighting" in soft.passed_over[0][1]
    off = get_backend("torch", fused=False).kernels.choose_path(PathRequest("convnn2d", ConvNNConfig(), "float32",
                                                                            "cuda"))
    assert off.path.startswith("eager") and "fused=False" in off.passed_over[0][1]


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dot"])
@pytest.mark.parametrize("cand_kind", ["all", "shared", "per-sample"])
def test_kernels_match_the_spec_kernels_with_heads(metric, cand_kind, rng):
    import array_api_compat.torch as txp

    from convnn.spec_kernels import SpecKernels

    spec = SpecKernels(txp)
    b, n, f, heads, k = 2, 11, 6, 3, 4
    keys, qf = _t(rng.standard_normal((b, n, f))), _t(rng.standard_normal((b, n, f)))
    queries = np.arange(n, dtype=np.int64)
    cand = {"all": None, "shared": torch.as_tensor(np.sort(rng.choice(n, 8, replace=False))),
            "per-sample": torch.as_tensor(np.sort(np.stack([rng.choice(n, 8, replace=False) for _ in range(b)])))}
    kw = dict(k=k, metric=metric, self_first=True, heads=heads, query_feats=qf)
    idx = T.kernels.select(keys, queries, cand[cand_kind], **kw)
    assert idx.shape == (b, heads, n, k) and idx.dtype == torch.int64
    assert torch.equal(idx, spec.select(keys, queries, cand[cand_kind], **kw))
    aff = T.kernels.slot_affinity(keys, queries, idx, metric=metric, heads=heads, query_feats=qf)
    torch.testing.assert_close(aff, spec.slot_affinity(keys, queries, idx, metric=metric, heads=heads,
                                                       query_feats=qf), rtol=1e-12, atol=1e-12)
    values = _t(rng.standard_normal((b, n, f)))
    rho = torch.softmax(aff, dim=-1)
    for taps, w in (("full", _t(rng.standard_normal((5, f, k)))), ("depthwise", _t(rng.standard_normal((f, k))))):
        torch.testing.assert_close(T.kernels.gather_taps(values, idx, rho, w, taps=taps),
                                   spec.gather_taps(values, idx, rho, w, taps=taps), rtol=1e-12, atol=1e-12)


def test_affinities_without_gradient_equal_the_differentiable_ones(rng):
    feats = _t(rng.standard_normal((2, 30, 5)))
    for cfg in (ConvNNConfig(padding=0, k=5), ConvNNConfig(padding=0, k=5, metric="euclidean", order="position")):
        with torch.no_grad():
            idx0, aff0 = T.select_neighbors(feats, cfg)
        leaf = feats.clone().requires_grad_(True)
        idx1, aff1 = T.select_neighbors(leaf, cfg)
        assert aff1.requires_grad and torch.equal(idx0, idx1)
        torch.testing.assert_close(aff0, aff1.detach(), rtol=1e-12, atol=1e-12)


def test_dropout_with_a_torch_key_is_repeatable_and_differs_from_eval(rng):
    x = _t(rng.standard_normal((2, 9, 8)))
    params = {k: _t(rng.standard_normal((8, 8))) for k in ("wq", "wk", "wv", "wo")}
    params["taps"] = torch.ones(8, 3, dtype=torch.float64)
    cfg = attention_config(3, sampling="random", num_samples=6)
    key = T.make_rng(5)
    a = T.convnn_attention(x, params, cfg, heads=2, dropout=0.3, rng=key, train=True)
    b = T.convnn_attention(x, params, cfg, heads=2, dropout=0.3, rng=key, train=True)
    c = T.convnn_attention(x, params, cfg, heads=2, dropout=0.3, rng=key, train=False)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # the key's candidates are the spec's draw from a NumPy Generator seeded with the key's seed
    torch.testing.assert_close(c, T.convnn_attention(x, params, cfg, heads=2, rng=key.seed))
