"""The benchmark package: its torch baseline reproduces the spec, its cost model and measurements are sound,
and each `convnn bench` command writes a well-formed report (tiny shapes, one repeat)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from convnn.bench import cost
from convnn.bench.sweep import fit_slope
from convnn.bench.timing import PeakMemory, time_call
from convnn import ConvNNConfig, attention_config, convnn2d, convnn_attention, multihead_attention
from convnn.cli import main as convnn_main

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _restore_threads():
    """The bench fixes thread counts process-wide; give the rest of the suite its settings back."""
    from convnn.bench.threads import restore_thread_state, snapshot_thread_state

    state = snapshot_thread_state()
    yield
    restore_thread_state(state)


# ----------------------------------------------------------------------------- the authors' algorithm baseline
@pytest.mark.parametrize("select,metric,order", [
    ("feature", "cosine", "rank"), ("feature", "euclidean", "rank"),
    ("position", "euclidean", "position"), ("blend", "cosine", "rank"),
])
def test_reference_convnn2d_matches_the_spec_dense(select, metric, order):
    from convnn.bench.reference import reference_convnn2d

    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((2, 5, 6, 7)), rng.standard_normal((4, 5, 9)), rng.standard_normal(4)
    expected = convnn2d(x, w, b, ConvNNConfig(select=select, metric=metric, order=order))
    got = reference_convnn2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), select=select, metric=metric)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_reference_convnn2d_matches_the_spec_with_fixed_candidates(metric):
    from convnn.bench.reference import reference_convnn2d

    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 5, 6, 7)), rng.standard_normal((4, 5, 9)), rng.standard_normal(4)
    cand = np.sort(rng.choice(8 * 9, 20, replace=False))
    cfg = ConvNNConfig(metric=metric, sampling="random", num_samples=20)
    expected = convnn2d(x, w, b, cfg, candidates=cand)
    got = reference_convnn2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), metric=metric, sampling="random",
                             num_samples=20, candidates=torch.tensor(cand))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_reference_attention_and_sdpa_match_the_spec():
    from convnn.bench.reference import reference_convnn_attention, sdpa_attention

    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 11, 8))
    params = {k: rng.standard_normal((8, 8)) / 3 for k in ("wq", "wk", "wv", "wo")}
    params["taps"] = rng.standard_normal((8, 9))
    t = {k: torch.tensor(v) for k, v in params.items()}
    # the authors score keys against queries: their wq is the spec's wk and vice versa
    swapped = dict(t, wq=t["wk"], wk=t["wq"])
    np.testing.assert_allclose(reference_convnn_attention(torch.tensor(x), swapped).numpy(),
                               convnn_attention(x, params, attention_config(9)), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sdpa_attention(torch.tensor(x), t, heads=2).numpy(),
                               multihead_attention(x, params, heads=2), rtol=1e-10, atol=1e-12)


def test_reference_sampled_paths_run_and_differentiate():
    from convnn.bench.reference import reference_convnn2d, reference_convnn_attention

    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(3, 4, 9, requires_grad=True)
    for sampling in ("random", "spatial"):
        y = reference_convnn2d(x, w, None, sampling=sampling, num_samples=16)
        assert y.shape == (2, 3, 8, 8)
        gx, gw = torch.autograd.grad(y.sum(), [x, w])
        assert torch.isfinite(gx).all() and gw.abs().sum() > 0
    xt = torch.randn(2, 17, 8)
    params = {k: torch.randn(8, 8) for k in ("wq", "wk", "wv", "wo")}
    params["taps"] = torch.ones(8, 9)
    for sampling in ("random", "spatial"):
        assert reference_convnn_attention(xt, params, sampling=sampling, num_samples=12).shape == (2, 17, 8)


# ----------------------------------------------------------------------------- cost model and measurement
def test_cost_model_matches_the_hand_counts():
    c = cost.convnn2d_cost(128, 64, 64, 32, 32, k=9, padding=1, select="feature", sampling="all", num_samples=None)
    agg = 2 * 128 * 1024 * 9 * 64 * 64  # 9.66 GFLOP: exactly a 3x3 conv
    assert c.forward_flops == pytest.approx(agg + 2 * 128 * 1024 * 34 * 34 * 64)
    assert c.backward_flops == pytest.approx(2 * agg)
    assert cost.conv2d_cost(128, 64, 64, 32, 32).forward_flops == pytest.approx(agg)
    sampled = cost.convnn2d_cost(1, 8, 8, 32, 32, k=9, padding=1, select="feature", sampling="random", num_samples=64)
    assert sampled.forward_flops == pytest.approx(2 * 1024 * 64 * 8 + 2 * 1024 * 9 * 64)
    assert cost.floor_ms(1e9, 0.0, 100.0, 10.0) == pytest.approx(10.0)


def test_fit_slope_recovers_powers():
    assert fit_slope([(n, 3.0 * n**2) for n in (8, 16, 32, 64)]) == pytest.approx(2.0)
    assert fit_slope([(n, 0.5 * n) for n in (8, 16, 32)]) == pytest.approx(1.0)
    assert fit_slope([(8, 1.0)]) is None


def test_time_call_counts_first_warmup_and_repeats():
    calls = []
    timing = time_call(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 1 + 1 + 3 and len(timing.times_ms) == 3
    assert timing.median_ms >= 0 and timing.first_ms >= 0
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0, warmup=0)


def test_peak_memory_sees_a_large_temporary():
    meter = PeakMemory("cpu")
    peak = meter.measure(lambda: float(np.ones(16 * 2**20, dtype=np.float32).sum()))  # 64 MiB
    assert peak is not None and 56 * 2**20 <= peak <= 512 * 2**20, (peak, meter.method)


def test_oracle_is_skipped_unless_asked_for():
    from convnn.bench.context import CommonOptions, BenchContext, choose_backends

    ctx = BenchContext(CommonOptions())
    chosen = choose_backends(CommonOptions(), ctx)
    assert "numpy" not in chosen
    assert any(s["backend"] == "numpy" and "--oracle" in s["reason"] for s in ctx.skipped)
    assert "numpy" in choose_backends(CommonOptions(oracle=True), BenchContext(CommonOptions()))
    with pytest.raises(ValueError, match="unknown"):
        choose_backends(CommonOptions(backends=["cupy"]), BenchContext(CommonOptions()))


def test_an_interrupted_layer_run_keeps_the_rows_measured(monkeypatch):
    from convnn.bench import layer as bench_layer
    from convnn.bench.context import CommonOptions

    real = bench_layer.measure_contender
    calls = []

    def stop_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_layer, "measure_contender", stop_on_third)
    options = CommonOptions(backends=["numpy"], repeats=1, threads=1, memory=False, quick=True)
    report = bench_layer.run_layer_bench(options, shapes="quick", progress=False)
    assert report["interrupted"] is True and len(report["rows"]) == 2
    assert all(r["fwd_ms"] > 0 for r in report["rows"])


# ----------------------------------------------------------------------------- the commands end to end
def _check_header(report: dict, kind: str) -> None:
    assert report["kind"] == kind
    machine = report["machine"]
    for key in ("device", "device_name", "cpu", "logical_cores", "python", "packages", "sgemm_gflops", "copy_gbs",
                "threads"):
        assert key in machine, key
    assert machine["sgemm_gflops"] > 0 and machine["copy_gbs"] > 0
    assert machine["packages"]["numpy"] and machine["threads"]["threads"] == 1
    assert report["settings"]["repeats"] == 1
    assert isinstance(report["skipped"], list)


def _table_header(markdown: str, first_columns: str) -> list[str]:
    line = next(ln for ln in markdown.splitlines() if ln.startswith(f"| {first_columns} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_bench_layer_quick_writes_json_markdown_and_plot(tmp_path, capsys):
    from convnn.bench.report import LAYER_COLUMNS

    rc = convnn_main(["bench", "layer", "--quick", "--backends", "numpy", "--threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "layer.json").read_text())
    _check_header(report, "layer")
    assert report["backends"] == ["numpy"] and report["memory_method"]
    impls = {r["impl"] for r in report["rows"]}
    assert {"numpy", "authors' algorithm (torch eager)", "torch conv2d 3x3", "torch SDPA attention"} <= impls
    variants = {r["variant"] for r in report["rows"]}
    assert {"convnn feature/all", "convnn feature/random", "convnn feature/spatial", "convnn position/all",
            "convnn blend/all", "conv2d 3x3", "convnn attention/all", "convnn attention/random",
            "attention (dense)"} <= variants
    for row in report["rows"]:
        for key in ("shape", "variant", "impl", "status", "fwd_ms", "fwdbwd_ms", "fwd_peak_mib", "fwd_gflops",
                    "fwd_pct_sgemm", "speedup_vs_reference_fwd", "time_vs_dense_baseline_fwd", "gflop_fwd"):
            assert key in row, key
    baselines = [r for r in report["rows"] if r["role"] == "baseline"]
    assert baselines and all(r["status"] == "ok" and r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 for r in baselines)
    numpy_rows = [r for r in report["rows"] if r["impl"] == "numpy" and r["fwd_ms"]]
    assert numpy_rows and all(r["speedup_vs_reference_fwd"] for r in numpy_rows if r["variant"].startswith("convnn"))
    markdown = (tmp_path / "layer.md").read_text()
    assert _table_header(markdown, "layer") == list(LAYER_COLUMNS)
    assert "sgemm" in markdown and "authors' algorithm (torch eager)" in markdown
    assert (tmp_path / "layer.png").stat().st_size > 1000
    assert "wrote json" in capsys.readouterr().out


def test_bench_sweep_quick_fits_slopes_and_plots(tmp_path):
    from convnn.bench.report import SWEEP_COLUMNS

    rc = convnn_main(["bench", "sweep", "--quick", "--axes", "N,candidates", "--backends", "numpy",
                      "--threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "sweep.json").read_text())
    _check_header(report, "sweep")
    assert set(report["axes"]) == {"N", "candidates"}
    assert {r["sampling"] for r in report["rows"] if r["axis"] == "N"} == {"all", "random"}
    assert report["slopes"] and all(math.isfinite(s["slope"]) for s in report["slopes"])
    assert _table_header((tmp_path / "sweep.md").read_text(), "axis | value") == list(SWEEP_COLUMNS)
    assert (tmp_path / "sweep_N.png").stat().st_size > 1000


def test_bench_model_quick_reports_each_model_and_backend(tmp_path):
    from convnn.bench.report import MODEL_COLUMNS

    rc_args = ["bench", "model", "--quick", "--backends", "numpy", "--models", "vgg11 conv,vit-tiny/4 attention",
               "--threads", "1", "--out", str(tmp_path)]
    convnn_main(rc_args)  # the exit code depends on whether the oracle trains; the report is what is checked
    report = json.loads((tmp_path / "model.json").read_text())
    _check_header(report, "model")
    assert [(r["model"], r["backend"].split()[0]) for r in report["rows"]] == [
        ("vgg11 conv (light head)", "numpy"), ("vit-tiny/4 attention", "numpy")]
    for row in report["rows"]:
        assert row["status"] in ("ok", "error", "not available")
        if row["status"] == "ok":
            assert row["train_images_per_s"] > 0 and row["infer_images_per_s"] > 0
        else:
            assert row["notes"]
    assert _table_header((tmp_path / "model.md").read_text(), "model") == list(MODEL_COLUMNS)


@pytest.mark.gpu
def test_bench_layer_runs_on_cuda(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    rc = convnn_main(["bench", "layer", "--quick", "--device", "cuda", "--backends", "torch", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "layer.json").read_text())
    assert report["machine"]["device"] == "cuda" and report["machine"]["sgemm_gflops"] > 0
    rows = [r for r in report["rows"] if r["impl"] == "torch"]
    assert rows and all(r["device"] == "cuda" for r in rows)
    assert any(r["status"] == "ok" and r["fwd_peak_mib"] is not None for r in rows)
