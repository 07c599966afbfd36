"""The model zoo: parameter counts of SPEC.md section 7, initialisation, option errors, and forward passes
checked against independent torch compositions of the same layers (float64)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from convnn.tree import flatten
from convnn.models import create_model, list_models, model_defaults


# ----------------------------------------------------------------------------- counts (shapes only)
@pytest.mark.parametrize("name,options,classes,expected", [
    ("vgg11", {"layer": "branching", "ratio": 0.5}, 10, 130_015_690),
    ("vgg11", {"layer": "branching", "ratio": 0.0}, 10, 130_015_690),
    ("vgg11", {"layer": "branching", "ratio": 1.0}, 10, 130_015_690),
    ("vgg11", {"layer": "branching", "ratio": 0.5}, 100, 130_384_420),
    ("vgg11", {"layer": "conv"}, 10, 128_812_810),
    ("vgg11", {"layer": "convnn"}, 10, 128_812_810),
    ("vit_tiny", {"attention": "attention"}, 10, 5_479_306),
    ("vit_tiny", {"attention": "kvt"}, 10, 5_479_306),
    ("vit_tiny", {"attention": "convnn", "k": 9}, 10, 5_500_042),
    ("vit_tiny", {"attention": "convnn", "sampling": "random", "num_samples": 32}, 10, 5_500_042),
])
def test_parameter_counts_of_the_paper(name, options, classes, expected):
    assert create_model(name, num_classes=classes, **options).num_params() == expected


def test_counted_shapes_match_materialised_params():
    model = create_model("vgg11", layer="branching", width=0.25, head="paper", hidden=32)
    params, state = model.init(0)
    assert sum(v.size for v in flatten(params).values()) == model.num_params()
    assert set(flatten(state)) == {p for p in model.state_specs()}


def test_registry_names_and_defaults():
    assert set(list_models()) >= {"vgg11", "vgg13", "vgg16", "vgg19", "vit_tiny", "vit_tiny_cifar"}
    assert model_defaults("vit_tiny_cifar")["patch_size"] == 4
    assert create_model("vgg19", layer="conv").num_params() > create_model("vgg16", layer="conv").num_params()


@pytest.mark.parametrize("name,options,expected", [
    ("vgg11", {}, False), ("vgg11", {"layer": "convnn"}, True), ("vgg16", {"layer": "branching"}, True),
    ("vit_tiny_cifar", {}, False), ("vit_tiny_cifar", {"attention": "kvt"}, False),
    ("vit_tiny_cifar", {"attention": "convnn"}, True), ("vit_tiny", {"attention": "branching"}, True),
])
def test_models_know_whether_they_use_convnn_before_and_after_building(name, options, expected):
    from convnn.models import model_uses_convnn

    assert model_uses_convnn(name, options) is expected
    assert create_model(name, **options).uses_convnn is expected


def test_unknown_model_or_layer_is_refused_before_building():
    from convnn.models import model_uses_convnn

    with pytest.raises(ValueError, match="model='resnet50' is unknown"):
        model_uses_convnn("resnet50", {})
    with pytest.raises(ValueError, match="layer='dense' is not allowed"):
        model_uses_convnn("vgg11", {"layer": "dense"})


def test_models_count_the_rng_keys_a_training_call_draws():
    assert create_model("vgg11", layer="conv", head="light").train_rng_draws == 0
    assert create_model("vgg11", layer="conv", head="paper").train_rng_draws == 2  # the two head dropouts
    assert create_model("vgg11", layer="convnn", sampling="random", head="light").train_rng_draws == 8
    assert create_model("vit_tiny_cifar", depth=2, dropout=0.0, attention_dropout=0.0).train_rng_draws == 0
    assert create_model("vit_tiny_cifar", depth=2).train_rng_draws == 8  # attention + three dropouts per block


# ----------------------------------------------------------------------------- initialisation
def test_init_is_seeded_and_follows_torch_defaults():
    model = create_model("vit_tiny_cifar", depth=1)
    p1, _ = model.init(3)
    p2, _ = model.init(3)
    p3, _ = model.init(4)
    for path, leaf in flatten(p1).items():
        np.testing.assert_array_equal(leaf, flatten(p2)[path])
    assert not np.array_equal(p1["head"]["weight"], p3["head"]["weight"])
    w = p1["blocks"]["0"]["mlp"]["fc2"]["weight"]  # Linear(768 -> 192): U(-1/sqrt(768), 1/sqrt(768))
    assert w.dtype == np.float32 and np.abs(w).max() <= 1 / math.sqrt(768)
    assert np.abs(w).max() > 0.9 / math.sqrt(768)
    np.testing.assert_array_equal(p1["blocks"]["0"]["ln1"]["gamma"], 1.0)
    assert abs(float(np.std(p1["cls"])) - 1.0) < 0.2  # N(0, 1)


# ----------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("name,options,match", [
    ("vgg12", {}, "unknown"),
    ("vgg11", {"layers": "conv"}, "no option"),
    ("vgg11", {"layer": "resnet"}, "layer="),
    ("vgg11", {"ratio": 1.5}, "ratio="),
    ("vgg11", {"layer": "convnn", "metric": "manhattan"}, "metric"),
    ("vit_tiny_cifar", {"attention": "flash"}, "attention="),
    ("vit_tiny_cifar", {"patch_size": 5}, "patch_size"),
    ("vit_tiny_cifar", {"attention": "convnn", "sampling": "random", "num_samples": 4}, "candidates"),
])
def test_bad_model_options_are_refused(name, options, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **options)


def test_wrong_input_shape_is_refused():
    model = create_model("vit_tiny_cifar", depth=1)
    params, state = model.init(0)
    with pytest.raises(ValueError, match="resize"):
        model.apply(params, state, np.zeros((1, 3, 28, 28), np.float32), train=False)


# ----------------------------------------------------------------------------- forward vs torch
torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(tree):
    return {k: _t(v) for k, v in tree.items()} if isinstance(tree, dict) else torch.as_tensor(np.asarray(tree))


def _torch_vgg(model, p, s, x):
    """An independent torch composition of the VGG forward in evaluation mode."""
    import convnn

    layer = model.options["layer"]
    for i, v in enumerate(model.plan):
        if v == "M":
            x = F.max_pool2d(x, 2)
            continue
        q, bn = p["features"][str(i)]["layer"], p["features"][str(i)]["bn"]
        if layer == "conv":
            x = F.conv2d(x, q["weight"], q["bias"], padding=1)
        else:
            c1 = math.floor(model.options["ratio"] * v)
            parts = []
            if c1:
                # the ConvNN op itself is the spec's (run on NumPy so near-ties resolve identically)
                y = convnn.convnn2d(x.numpy(), q["convnn"]["weight"].numpy(), q["convnn"]["bias"].numpy(),
                                         model.cfg)
                parts.append(torch.as_tensor(y))
            if v - c1:
                parts.append(F.conv2d(x, q["conv"]["weight"], q["conv"]["bias"], padding=1))
            x = F.conv2d(torch.cat(parts, 1), q["pointwise"]["weight"], q["pointwise"]["bias"])
        st = s["features"][str(i)]["bn"]
        x = F.relu(F.batch_norm(x, st["mean"], st["var"], bn["gamma"], bn["beta"], training=False))
    h = p["head"]
    if model.options["head"] == "paper":
        x = torch.flatten(F.adaptive_avg_pool2d(x, (7, 7)), 1)
        x = F.relu(F.linear(x, h["fc1"]["weight"], h["fc1"]["bias"]))
        x = F.relu(F.linear(x, h["fc2"]["weight"], h["fc2"]["bias"]))
        return F.linear(x, h["fc3"]["weight"], h["fc3"]["bias"])
    return F.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), h["fc"]["weight"], h["fc"]["bias"])


@pytest.mark.parametrize("options", [
    {"layer": "conv", "head": "paper", "hidden": 16},
    {"layer": "branching", "ratio": 0.5, "head": "light"},
])
def test_vgg_forward_matches_torch_composition(options):
    model = create_model("vgg11", width=0.0625, dtype="float64", **options)
    params, state = model.init(1)
    # non-trivial running statistics
    state = {"features": {k: {"bn": {"mean": v["bn"]["mean"] + 0.1, "var": v["bn"]["var"] * 1.5}}
                          for k, v in state["features"].items()}}
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    logits, new_state = model.apply(params, state, x, train=False)
    ref = _torch_vgg(model, _t(params), _t(state), torch.as_tensor(x))
    # conv rounding differs by ~1e-16 between NumPy and torch; a ConvNN layer's cosine selection can turn
    # such a difference into a different neighbour on near-ties, hence a looser bound with ConvNN layers
    rtol = 1e-9 if options["layer"] == "conv" else 1e-6
    np.testing.assert_allclose(logits, ref.numpy(), rtol=rtol, atol=rtol * 1e-1)
    # training mode updates the running statistics and is reproducible for a seed
    _, s1 = model.apply(params, state, x, train=True, rng=5)
    assert not np.allclose(s1["features"]["0"]["bn"]["mean"], state["features"]["0"]["bn"]["mean"])


def test_vit_forward_matches_torch_composition():
    model = create_model("vit_tiny_cifar", depth=2, dim=16, mlp_dim=32, heads=2, dtype="float64")
    params, state = model.init(2)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    logits, _ = model.apply(params, state, x, train=False)
    p = _t(params)
    t = F.conv2d(torch.as_tensor(x), p["patch"]["weight"], p["patch"]["bias"], stride=4)
    t = t.flatten(2).transpose(1, 2)
    t = F.layer_norm(t, (16,), p["patch_norm"]["gamma"], p["patch_norm"]["beta"])
    t = torch.cat([p["cls"].expand(2, 1, 16), t], 1)
    pos = torch.zeros(65, 16, dtype=torch.float64)
    position = torch.arange(65, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, 16, 2, dtype=torch.float64) * (-math.log(10000.0) / 16))
    pos[:, 0::2], pos[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
    t = t + pos
    for i in range(2):
        b = p["blocks"][str(i)]
        h = F.layer_norm(t, (16,), b["ln1"]["gamma"], b["ln1"]["beta"])
        a = b["attn"]
        q, k, v = (h @ a[w].T for w in ("wq", "wk", "wv"))
        q, k, v = (z.reshape(2, 65, 2, 8).transpose(1, 2) for z in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 65, 16)
        t = t + o @ a["wo"].T
        h = F.layer_norm(t, (16,), b["ln2"]["gamma"], b["ln2"]["beta"])
        h = F.linear(F.gelu(F.linear(h, b["mlp"]["fc1"]["weight"], b["mlp"]["fc1"]["bias"])),
                     b["mlp"]["fc2"]["weight"], b["mlp"]["fc2"]["bias"])
        t = t + h
    ref = F.linear(t[:, 0], p["head"]["weight"], p["head"]["bias"])
    np.testing.assert_allclose(logits, ref.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("attention", ["convnn", "kvt", "local", "sparse-local", "sparse-strided", "branching"])
def test_vit_attention_variants_run(attention):
    model = create_model("vit_tiny_cifar", depth=1, dim=16, mlp_dim=16, attention=attention, window=4,
                         sampling="random" if attention in ("convnn", "branching") else "all")
    params, state = model.init(0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y_eval_1, _ = model.apply(params, state, x, train=False)
    y_eval_2, _ = model.apply(params, state, x, train=False)
    np.testing.assert_array_equal(y_eval_1, y_eval_2)  # fixed evaluation draw, no dropout
    y_train_a, _ = model.apply(params, state, x, train=True, rng=1)
    y_train_b, _ = model.apply(params, state, x, train=True, rng=1)
    np.testing.assert_array_equal(y_train_a, y_train_b)
    assert y_eval_1.shape == (2, 10) and np.isfinite(y_eval_1).all()
    assert not np.allclose(y_train_a, y_eval_1)  # dropout (and sampling) are active in training


def test_sampled_vgg_eval_draw_is_fixed_per_layer():
    model = create_model("vgg11", layer="convnn", sampling="random", num_samples=25, width=0.0625, head="light")
    params, state = model.init(0)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    y1, _ = model.apply(params, state, x, train=False)
    y2, _ = create_model("vgg11", layer="convnn", sampling="random", num_samples=25, width=0.0625,
                         head="light").apply(params, state, x, train=False)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(model.eval_candidates("features.0.layer", 34 * 34, 25),
                              model.eval_candidates("features.2.layer", 18 * 18, 25))


@pytest.mark.parametrize("backend", ["torch", "jax", "numba"])
def test_same_seed_same_parameters_on_every_backend(backend):
    from convnn.registry import backend_status, get_backend

    if not backend_status(backend)[0]:
        pytest.skip(f"backend {backend} is not available")
    b = get_backend(backend)
    reference, _ = create_model("vit_tiny_cifar", depth=1, dim=16, mlp_dim=16).init(7)
    params, _ = create_model("vit_tiny_cifar", backend=b, depth=1, dim=16, mlp_dim=16).init(7)
    for path, leaf in flatten(reference).items():
        np.testing.assert_array_equal(b.to_numpy(flatten(params)[path]), leaf, err_msg=path)
