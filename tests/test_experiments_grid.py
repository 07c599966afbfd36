"""Grid files, scales, cells, orderings, the cost model and the shipped reference numbers (no training here)."""
from __future__ import annotations

import pytest

from convnn.models.experiments.cells import check_cells, expand
from convnn.models.experiments.cost import model_gflops
from convnn.models.experiments.grid import load_grid, packaged_grids, parse_grid
from convnn.models.experiments.orderings import Value, check_orderings
from convnn.models.experiments.results import load_reference, reference_rows
from convnn.models.experiments.scales import get_scale

SHIPPED = ("vgg-branching", "vit-attention", "vit-taps", "vgg-k", "vgg-candidates")


def _grid(**changes):
    raw = {"name": "g", "model": "vgg11", "datasets": ["cifar10"], "seeds": [1, 2],
           "axes": [{"name": "ratio", "option": "model_options.ratio", "values": [0.0, 0.5]},
                    {"name": "pe", "levels": {"a": {"model_options": {"select": "feature"}},
                                              "b": {"model_options": {"select": "blend"},
                                                    "at_scale": {"cpu": {"model_options": {"blend": 0.25}}}}}}],
           "extra": [{"coords": {"ratio": "conv"}, "settings": {"model_options": {"layer": "conv"}}}]}
    raw.update(changes)
    return parse_grid(raw, "test")


def test_shipped_grids_cover_the_paper_studies_on_both_datasets():
    assert set(SHIPPED) <= set(packaged_grids())
    expected_rows = {"vgg-branching": 27, "vit-attention": 9, "vit-taps": 6, "vgg-k": 39, "vgg-candidates": 59}
    for name in SHIPPED:
        grid = load_grid(name)
        assert grid.datasets == ["cifar10", "cifar100"]
        assert len(grid.coords()) == expected_rows[name]
        for scale in ("smoke", "cpu", "paper"):
            cells = expand(grid, get_scale(scale))
            check_cells(cells)  # every cell builds a valid TrainConfig with known model options
            assert len({c.id for c in cells}) == len(cells)


def test_every_grid_row_has_the_papers_numbers_and_every_ordering_holds_on_them():
    for name in SHIPPED:
        grid = load_grid(name)
        ref = reference_rows(load_reference(grid.reference))
        for dataset in grid.datasets:
            for coords in grid.coords():
                assert (dataset, tuple(sorted(coords.items()))) in ref, (name, dataset, coords)
        paper = {k: Value(float(v["best"]), None, dict(v["coords"])) for k, v in ref.items()}
        results = check_orderings(grid, grid.datasets, grid.coords(), paper, paper, {})
        assert results and all(r["ours"]["verdict"] == "holds" for r in results), name


def test_reference_spot_values():
    rows = reference_rows(load_reference("vgg-branching"))
    row = rows[("cifar10", (("pe", "Col/Col"), ("ratio", "0.5")))]
    assert (row["best"], row["avg5"]) == (82.79, 81.68)
    rows = reference_rows(load_reference("vit-attention"))
    assert rows[("cifar100", (("attention", "convnn-random"),))]["best"] == 54.05


def test_expand_applies_scale_levels_at_scale_and_overrides_in_order():
    grid = _grid()
    cells = expand(grid, get_scale("cpu"), overrides={"epochs": 2})
    assert len(cells) == (2 * 2 + 1) * 2  # product + extra, times two seeds
    b = next(c for c in cells if c.coords == {"ratio": "0.5", "pe": "b"} and c.seed == 2)
    assert b.overrides["model_options.select"] == "blend"
    assert b.overrides["model_options.blend"] == 0.25  # at_scale.cpu
    assert b.overrides["model_options.width"] == 0.125  # the cpu scale's VGG width
    assert b.overrides["epochs"] == 2 and b.overrides["seed"] == 2
    assert b.id == "cifar10__ratio=0.5__pe=b__seed=2"
    smoke = expand(grid, get_scale("smoke"))
    assert {c.dataset for c in smoke} == {"sample"}
    assert all("model_options.blend" not in c.overrides for c in smoke)
    only = expand(grid, get_scale("cpu"), where={"ratio": {"0.0"}}, seeds=[7])
    assert [c.coords for c in only] == [{"ratio": "0.0", "pe": "a"}, {"ratio": "0.0", "pe": "b"}]


@pytest.mark.parametrize("changes, message", [
    ({"name": "bad name"}, "name="),
    ({"seeds": [-1]}, "seeds="),
    ({"axes": [{"name": "r", "values": [1]}]}, "option="),
    ({"axes": [{"name": "r", "option": "x", "values": [1, 1]}]}, "repeats a level"),
    ({"bogus": 1}, "unknown key"),
    ({"orderings": [{"claim": "c", "chain": ["ratio=0.0", "<", "ratio=0.5"]}]}, "chain="),
    ({"orderings": [{"claim": "c", "chain": ["nope=1", ">", "ratio=0.5"]}]}, "names axis 'nope'"),
    ({"plot_axis": "k"}, "plot_axis="),
])
def test_bad_grids_name_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        _grid(**changes)


def test_bad_selection_and_unknown_options_are_refused():
    grid = _grid()
    with pytest.raises(ValueError, match="not among the levels"):
        expand(grid, get_scale("cpu"), where={"ratio": {"0.7"}})
    with pytest.raises(ValueError, match="runs on cifar10"):
        expand(grid, get_scale("cpu"), datasets=["cifar100"])
    with pytest.raises(ValueError, match="scale='huge' is unknown"):
        get_scale("huge")
    bad = _grid(model_options={"wdith": 0.5})
    with pytest.raises(ValueError, match="no option"):
        check_cells(expand(bad, get_scale("cpu")))


def test_orderings_flag_failures_missing_cells_and_seed_spread():
    grid = _grid(orderings=[{"claim": "half beats none", "chain": ["ratio=0.5", ">", "ratio=0.0"], "per": ["pe"]}])
    key = lambda r, p: ("cifar10", (("pe", p), ("ratio", r)))  # noqa: E731
    ours = {key("0.5", "a"): Value(60.0, 0.5, {}), key("0.0", "a"): Value(59.8, 0.4, {}),
            key("0.5", "b"): Value(50.0, None, {}), key("0.0", "b"): Value(55.0, None, {})}
    rows = [c for c in grid.coords() if "pe" in c]
    out = {r["context"]["pe"]: r["ours"] for r in check_orderings(grid, ["cifar10"], rows, ours, {}, {})}
    assert out["a"]["verdict"] == "holds" and "within the seed spread" in out["a"]["note"]
    assert out["b"]["verdict"] == "fails"
    del ours[key("0.0", "b")]
    out = {r["context"]["pe"]: r["ours"] for r in check_orderings(grid, ["cifar10"], rows, ours, {}, {})}
    assert out["b"]["verdict"] == "not evaluated" and "missing" in out["b"]["note"]


def test_vit_taps_parameter_counts_match_the_paper():
    from convnn.models.registry import create_model

    counts = {taps: create_model("vit_tiny", "numpy", 10, attention="convnn", taps=taps).num_params()
              for taps in ("depthwise", "full", "separable")}
    assert counts == {"depthwise": 5_500_042, "full": 9_460_618, "separable": 5_942_410}


def test_cost_model_gflops_order_like_the_paper():
    from convnn.models.registry import create_model

    def gflops(name, **options):
        return model_gflops(create_model(name, "numpy", 10, **options).config)

    conv, branching = gflops("vgg11", layer="branching", ratio=0.0), gflops("vgg11", layer="branching", ratio=0.5)
    assert conv < branching
    attention = gflops("vit_tiny", attention="attention")
    assert abs(attention - 2.508) < 0.01  # the paper's ViT figure counts 2 FLOPs per multiply-add as we do
    assert gflops("vit_tiny", attention="convnn", sampling="random") < gflops("vit_tiny", attention="convnn") \
        < attention


def test_separable_taps_with_an_identity_pointwise_equal_depthwise_taps():
    import numpy as np

    from convnn.models.registry import create_model

    opts = {"attention": "convnn", "dim": 8, "depth": 1, "mlp_dim": 16, "patch_size": 8, "dropout": 0.0,
            "attention_dropout": 0.0}
    depthwise = create_model("vit_tiny_cifar", "numpy", 10, **opts)
    separable = create_model("vit_tiny_cifar", "numpy", 10, taps="separable", **opts)
    params, state = depthwise.init(0)
    sep_params, _ = separable.init(0)
    sep_params["blocks"]["0"]["attn"] = {**params["blocks"]["0"]["attn"], "pointwise": np.eye(8, dtype=np.float32)}
    for key in params:
        if key != "blocks":
            sep_params[key] = params[key]
    sep_params["blocks"]["0"] = {**params["blocks"]["0"], "attn": sep_params["blocks"]["0"]["attn"]}
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = depthwise.apply(params, state, x, train=False)[0]
    np.testing.assert_allclose(separable.apply(sep_params, state, x, train=False)[0], want, rtol=1e-5, atol=1e-6)
    sep_params["blocks"]["0"]["attn"]["pointwise"] = 2 * np.eye(8, dtype=np.float32)
    assert not np.allclose(separable.apply(sep_params, state, x, train=False)[0], want)
    with pytest.raises(ValueError, match="taps='full' applies to attention='convnn' only"):
        create_model("vit_tiny_cifar", "numpy", 10, taps="full")
