"""`convnn bench readme`: the spread over runs, the README rewrite and the figures the auto policy ranks by."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from convnn import registry, speed_figures
from convnn.bench import readme


def _layer_report(fwd: dict[str, float], ref: float) -> dict:
    rows = [{"shape": readme.OP_SHAPE, "variant": readme.OP_VARIANT, "impl": name, "role": "backend", "status": "ok",
             "fwd_ms": ms, "speedup_vs_reference_fwd": ref / ms} for name, ms in fwd.items()]
    rows.append({"shape": readme.OP_SHAPE, "variant": readme.OP_VARIANT, "impl": readme.REFERENCE, "role": "baseline",
                 "status": "ok", "fwd_ms": ref})
    rows.append({"shape": readme.OP_SHAPE, "variant": "conv2d 3x3", "impl": "torch conv2d", "role": "baseline",
                 "status": "ok", "fwd_ms": 1.0})
    rows.append({"shape": readme.OP_SHAPE, "variant": readme.OP_VARIANT, "impl": "jax", "role": "backend",
                 "status": "error", "fwd_ms": None})
    return {"rows": rows}


def _model_report(train: dict[tuple[str, str], float]) -> dict:
    return {"rows": [{"model": f"{m} (light head)" if m.startswith("vgg") else m, "backend": f"{b} (eager)",
                      "status": "ok", "train_images_per_s": v, "infer_images_per_s": 2 * v, "batch": 32}
                     for (m, b), v in train.items()]}


def test_spread_is_min_median_max_of_the_finite_values():
    assert readme.spread([3.0, None, 1.0, float("nan"), 2.0]) == (1.0, 2.0, 3.0)
    assert readme.spread([None]) is None
    assert readme.cell((1.0, 2.5, 40.0)) == "2.50 (1.00-40.0)"
    assert readme.cell(None) == "-"


def test_aggregate_keeps_ok_rows_and_spreads_over_runs():
    reports = [_layer_report({"numba": 100.0, "torch": 200.0}, 400.0),
               _layer_report({"numba": 120.0, "torch": 180.0}, 380.0),
               _layer_report({"numba": 90.0, "torch": 190.0}, 420.0)]
    agg = readme.aggregate(reports, readme._layer_key, readme.LAYER_FIELDS)
    assert agg[(readme.OP_SHAPE, readme.OP_VARIANT, "numba")]["fwd_ms"] == (90.0, 100.0, 120.0)
    assert agg[(readme.OP_SHAPE, readme.OP_VARIANT, "authors' algorithm")]["fwd_ms"] == (380.0, 400.0, 420.0)
    assert (readme.OP_SHAPE, readme.OP_VARIANT, "jax") not in agg  # the error row is not a measurement
    assert not any(k[1] == "conv2d 3x3" for k in agg)


def test_figures_rank_the_backends_and_feed_the_policy():
    values = {}
    for m in readme.CONVNN_MODELS + readme.PLAIN_MODELS:
        values[(m, "torch")] = 60.0
        values[(m, "numba")] = 80.0 if m in readme.CONVNN_MODELS else 30.0
        values[(m, "jax")] = 40.0
    models = readme.aggregate([_model_report(values)], readme._model_key, readme.MODEL_FIELDS)
    layers = readme.aggregate([_layer_report({"numba": 50.0, "torch": 90.0, "jax": 70.0}, 400.0)], readme._layer_key,
                              readme.LAYER_FIELDS)
    header = {"command": "convnn bench readme", "date": "2026-11-29", "machine": "test box", "runs": 1, "batch": 32}
    figs = readme.figures(layers, models, header)
    assert figs["op"]["values"] == {"numba": 50.0, "torch": 90.0, "jax": 70.0}
    assert figs["train"]["values"] == {"torch": 60.0, "numba": 80.0, "jax": 40.0}
    order, why = speed_figures.policy("op", (("torch",), "static"), figs)
    assert order == ("numba", "jax", "torch", "numpy")
    assert "numba 50" in why and "test box" in why and "convnn bench readme" in why
    assert speed_figures.policy("train", (("torch",), "static"), figs)[0][:3] == ("numba", "torch", "jax")
    assert speed_figures.policy("train_plain", (("torch",), "static"), figs)[0][:3] == ("torch", "jax", "numba")
    assert speed_figures.policy("train", (("torch", "numpy"), "static"), {}) == (("torch", "numpy"), "static")


def test_auto_follows_the_figures_and_explain_names_them(monkeypatch):
    installed = [n for n in ("numba", "torch", "jax") if registry.backend_status(n)[0]]
    if len(installed) < 2:
        pytest.skip("needs two installed CPU backends to rank")
    slow, fast = installed[0], installed[1]
    figs = {"command": "convnn bench readme", "date": "2026-11-29", "machine": "test box", "runs": 3,
            "train": {"figure": "training images/s", "better": "higher", "values": {slow: 1.0, fast: 9.0}}}
    monkeypatch.setitem(registry.CPU_POLICY, "train",
                        speed_figures.policy("train", registry.STATIC_CPU_POLICY["train"], figs))
    monkeypatch.setattr(registry, "PLAIN_TRAIN_POLICY", None)
    monkeypatch.setattr(registry, "cuda_visible", lambda: (False, "none here"))
    assert registry.resolve_auto("train", uses_convnn=True, probe=False).name == fast
    text = registry.explain("convnn2d", purpose="train")
    assert f"{fast} 9, {slow} 1" in text and "test box" in text


def test_readme_markers_are_replaced_and_required():
    text = f"head\n{readme.README_START}\nold table\n{readme.README_END}\ntail\n"
    out = readme.replace_between_markers(text, "new table")
    assert "new table" in out and "old table" not in out and out.startswith("head") and out.endswith("tail\n")
    with pytest.raises(ValueError, match="markers"):
        readme.replace_between_markers("no markers here", "x")


def test_the_shipped_figures_are_well_formed():
    figs = speed_figures.load()
    if figs is None:
        pytest.skip("no figures shipped in this checkout")
    for purpose in ("op", "train", "train_plain"):
        entry = figs[purpose]
        assert entry["better"] in ("lower", "higher") and entry["figure"]
        assert all(isinstance(v, (int, float)) and v > 0 for v in entry["values"].values())
    assert figs["runs"] >= 3, "the README's figures need a spread over at least 3 runs"


@pytest.mark.slow
def test_the_command_end_to_end_quick(tmp_path):
    page = tmp_path / "README.md"
    page.write_text(f"x\n{readme.README_START}\nold\n{readme.README_END}\n")
    figs = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "-m", "convnn", "bench", "readme", "--quick", "--runs", "2", "--out",
                           str(tmp_path / "out"), "--readme", str(page), "--figures", str(figs)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "old" not in page.read_text() and "| model |" in page.read_text()
    assert json.loads(figs.read_text())["runs"] == 2
    assert (tmp_path / "out" / "cpu-speed.md").exists()
