"""`convnn conformance`: arguments, the printed matrix, JSON and Markdown files, exit codes, n/a backends."""
from __future__ import annotations

import json

import pytest

from convnn.cli import main
from convnn.conformance import runner
from convnn.conformance.cli import parse_dtypes, parse_levels
from convnn.conformance.report import format_console, format_markdown


def test_cli_runs_writes_reports_and_exits_zero(tmp_path, capsys):
    out_json, out_md = tmp_path / "c.json", tmp_path / "c.md"
    code = main(["conformance", "--backends", "numpy", "--level", "1,3", "--quick", "--case", "tie-",
                 "--json", str(out_json), "--report", str(out_md), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "Level 1" in text and "tie-dot-rank-float64" in text and "PASSED" in text
    assert "rtol 1e-09" in text  # the tolerance table is printed
    data = json.loads(out_json.read_text())
    assert data["passed"] is True and data["results"]
    assert {r["status"] for r in data["results"]} == {"pass"}
    md = out_md.read_text()
    assert "| dtype | rtol | atol | source |" in md and "`tie-dot-rank-float64`" in md


@pytest.mark.parametrize("argv", [["--level", "9"], ["--dtype", "int8"], ["--backends", "cuda"]])
def test_cli_refuses_bad_arguments(argv, capsys):
    assert main(["conformance", "--no-progress", *argv]) == 2
    assert "not allowed" in capsys.readouterr().err


def test_unavailable_backend_shows_not_available_never_passed(monkeypatch):
    monkeypatch.setattr(runner, "backend_status", lambda name: (False, "missing fakepkg; install it"))
    entry = runner.load_entry("torch", ("float64",))
    assert not entry.available
    report = runner.run_suite([entry], levels=(1, 3), dtypes=("float64",), full=False)
    assert {r.status for r in report.results} == {"n/a"}
    assert not report.failures  # not a failure ...
    assert report.exit_code() == 1 and report.verdict == "NOT PASSED"  # ... and not a pass: nothing was checked
    text = format_console(report)
    assert "NOT AVAILABLE: missing fakepkg" in text
    assert text.splitlines()[-1].startswith("NOT PASSED: ") and "\nPASSED" not in text
    rows = [line for line in text.splitlines() if line.startswith(("  1 op forward", "  3 identities"))]
    assert len(rows) == 2 and all(line.split()[-1] == "n/a" for line in rows)
    assert "n/a" in format_markdown(report) and "NOT PASSED" in format_markdown(report)


def test_level_and_dtype_parsing():
    assert parse_levels("1-3") == (1, 2, 3)
    assert parse_levels("3,1") == (1, 3)
    assert parse_levels("all") == (1, 2, 3, 4, 5, 6)
    assert parse_dtypes("all") == ("float64", "float32", "bfloat16", "float16")
    with pytest.raises(ValueError, match="--level"):
        parse_levels("x")


def _no_cuda():
    from convnn.registry import cuda_visible

    if cuda_visible()[0]:
        pytest.skip("a CUDA GPU is visible: --device cuda can run here")


@pytest.mark.parametrize("backends", [["--backends", "numpy"], ["--backends", "torch"], []])
def test_device_cuda_without_a_gpu_fails_instead_of_running_elsewhere(backends, capsys):
    _no_cuda()
    code = main(["conformance", *backends, "--device", "cuda", "--level", "1", "--quick", "--case", "tie-dot-rank",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code != 0, captured.out
    assert "cuda" in captured.err and ("cannot run" in captured.err or "no backend can run" in captured.err)
    assert "PASS" not in [line.split()[-1] for line in captured.out.splitlines() if line.startswith("  1 op forward")]


def test_a_backend_that_rejects_the_device_is_unavailable_with_its_error():
    _no_cuda()
    entry = runner.load_entry("numpy", ("float64",), device="cuda")
    assert not entry.available and "cpu only" in entry.reason and "cuda" in entry.reason
    from convnn.registry import BACKENDS, backend_status

    multi = [n for n, p in BACKENDS.items() if "cuda" in p.devices and backend_status(n)[0]]
    for name in multi:
        entry = runner.load_entry(name, ("float64",), device="cuda")
        assert not entry.available, f"{name} claims to run on cuda without a GPU"
        assert entry.options.get("device") == "cuda"  # asked with the device, never retried without it


def test_load_options_come_from_the_plugin(monkeypatch):
    from convnn import registry

    plugin = registry.BACKENDS["numpy"]
    assert runner.load_options_for("numpy", "float64") == dict(getattr(plugin, "dtype_options", {}) or {}).get(
        "float64", {})

    class WithOptions:
        def __getattr__(self, item):
            return getattr(plugin, item)

        dtype_options = {"float64": {"x64": True}}

    monkeypatch.setattr(registry.BACKENDS, "_cache", {**registry.BACKENDS._all(), "numpy": WithOptions()})
    assert runner.load_options_for("numpy", "float64") == {"x64": True}
    assert runner.load_options_for("numpy", "float32") == {}
    with pytest.raises(ValueError, match="unknown"):
        runner.load_options_for("nope", "float64")
