"""Nothing silent: no check reports success without having checked, and availability is what an import says.

Conformance never prints PASSED or exits 0 for a run that checked nothing (a device without a GPU, a backend
that cannot load, a --case that matches nothing, every cell n/a); bench refuses arguments that select nothing
before any work; `convnn info`, `explain` and `auto` see a framework that is installed but fails to import.
"""
from __future__ import annotations

import json
import textwrap

import pytest

import convnn as cc
from convnn import registry
from convnn.cli import main

QUICK = ["--level", "1", "--quick", "--case", "tie-dot-rank", "--no-progress"]


def _verdict(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith(("PASSED:", "NOT PASSED:", "FAILED:"))]
    assert len(lines) == 1, out
    return lines[0].split(":", 1)[0]


def _plugin(name: str, requires: tuple[str, ...], loader) -> registry.BackendPlugin:
    return registry.BackendPlugin(name=name, requires=requires, extra=None, summary=f"{name}: a test plugin",
                                  loader=loader, devices=("cpu",))


def _register(monkeypatch, *plugins: registry.BackendPlugin, keep: tuple[str, ...] = ("numpy",)) -> None:
    real = registry.BACKENDS._all()
    monkeypatch.setattr(registry.BACKENDS, "_cache", {**{n: real[n] for n in keep}, **{p.name: p for p in plugins}})
    monkeypatch.setattr(registry, "cuda_visible", lambda: (False, "no CUDA GPU in this test"))


def _fails_to_load(**options):
    raise ImportError("libfakefw.so: cannot open shared object file: No such file or directory")


# ----------------------------------------------------------------------------- 1. conformance
def test_conformance_on_cuda_without_a_gpu_exits_nonzero_and_never_says_passed(capsys):
    if registry.cuda_visible()[0]:
        pytest.skip("a CUDA GPU is visible: --device cuda can run here")
    code = main(["conformance", "--backends", "torch", "--device", "cuda", *QUICK])
    captured = capsys.readouterr()
    assert code == 1
    assert _verdict(captured.out) == "NOT PASSED", captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "cuda" in err[0] and "cannot run" in err[0]


@pytest.mark.parametrize("selection", [["--backends", "fakefw"], ["--backends", "all"], []])
def test_conformance_with_a_backend_that_cannot_load_exits_nonzero(monkeypatch, capsys, tmp_path, selection):
    _register(monkeypatch, _plugin("fakefw", ("numpy",), _fails_to_load))
    out_json = tmp_path / "c.json"
    code = main(["conformance", *selection, *QUICK, "--json", str(out_json)])
    captured = capsys.readouterr()
    assert code == 1, captured.out
    assert _verdict(captured.out) == "NOT PASSED"
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "'fakefw'" in err[0] and "libfakefw.so" in err[0]
    data = json.loads(out_json.read_text())
    assert data["passed"] is False and data["problems"]


def test_conformance_with_a_backend_that_is_not_installed_is_only_na_among_all(monkeypatch, capsys):
    _register(monkeypatch, _plugin("absentfw", ("convnn_no_such_module_anywhere",), _fails_to_load))
    assert main(["conformance", *QUICK]) == 0  # every backend: one not installed is n/a, not a failure
    out = capsys.readouterr().out
    assert "absentfw: NOT AVAILABLE: missing convnn_no_such_module_anywhere" in out and _verdict(out) == "PASSED"
    assert main(["conformance", "--backends", "absentfw", *QUICK]) == 1  # asked for by name: it must run


def test_conformance_case_that_matches_nothing_is_an_error(capsys):
    code = main(["conformance", "--backends", "numpy", "--level", "1", "--quick", "--case", "no-such-case",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "'no-such-case'" in err[0] and "matches no case" in err[0]
    assert "PASSED" not in captured.out


def test_conformance_where_every_cell_is_na_does_not_pass(capsys):
    code = main(["conformance", "--backends", "numpy", "--dtype", "float16", *QUICK])  # numpy declares no float16
    captured = capsys.readouterr()
    assert code == 1
    assert _verdict(captured.out) == "NOT PASSED" and "nothing was checked" in captured.err


# ----------------------------------------------------------------------------- 2. bench
@pytest.fixture
def _restore_threads():
    from convnn.bench.threads import restore_thread_state, snapshot_thread_state

    state = snapshot_thread_state()
    yield
    restore_thread_state(state)


def _bench(tmp_path, capsys, *argv: str) -> tuple[int, str]:
    threads = [] if "--threads" in argv else ["--threads", "1"]
    code = main(["bench", *argv, "--quick", *threads, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return code, err[0]


def test_bench_unknown_variant_is_refused_with_the_known_labels(tmp_path, capsys, _restore_threads):
    code, line = _bench(tmp_path, capsys, "layer", "--backends", "numpy", "--variants", "nosuchvariant")
    assert code == 2 and line.startswith("convnn bench layer: error:")
    assert "'nosuchvariant'" in line and "convnn feature/all" in line and "attention (dense)" in line
    assert not list(tmp_path.iterdir())  # no empty report written


def test_bench_on_cuda_without_a_gpu_stops_before_any_work(tmp_path, capsys, monkeypatch, _restore_threads):
    if registry.cuda_visible()[0]:
        pytest.skip("a CUDA GPU is visible: --device cuda can run here")
    from convnn.bench import machine

    def never(*args, **kwargs):
        raise AssertionError("the machine was measured before the device was checked")

    monkeypatch.setattr(machine, "measure_machine", never)
    code, line = _bench(tmp_path, capsys, "layer", "--device", "cuda", "--backends", "torch")
    assert code == 2 and line.startswith("convnn bench layer: error: --device cuda") and "--device cpu" in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv,words", [
    (["layer", "--batch", "0"], "--batch=0"),
    (["layer", "--repeats", "0"], "--repeats=0"),
    (["layer", "--warmup", "-1"], "--warmup=-1"),
    (["layer", "--threads", "0"], "--threads=0"),
    (["layer", "--backends", "cupy"], "'cupy' unknown"),
    (["model", "--models", "vgg11 conv,nosuchmodel"], "'nosuchmodel'"),
    (["model", "--batch", "0"], "--batch=0"),
    (["sweep", "--axes", "N,Q"], "'Q' unknown"),
    (["sweep", "--batch", "-2"], "--batch=-2"),
    (["layer", "--batch", "x"], "invalid int value"),
])
def test_bench_argument_errors_are_one_line_exit_2(tmp_path, capsys, argv, words, _restore_threads):
    try:
        code, line = _bench(tmp_path, capsys, *argv)
    except SystemExit as stop:  # argparse's own errors (a value that is not an int) exit through SystemExit
        code = stop.code
        line = capsys.readouterr().err.strip()
        assert len(line.splitlines()) == 1
    assert code == 2 and line.startswith(f"convnn bench {argv[0]}: error:") and words in line, line
    assert not list(tmp_path.iterdir())


def test_bench_backend_asked_for_by_name_that_cannot_load_stops(tmp_path, capsys, monkeypatch, _restore_threads):
    _register(monkeypatch, _plugin("fakefw", ("numpy",), _fails_to_load))
    code, line = _bench(tmp_path, capsys, "layer", "--backends", "fakefw")
    assert code == 2 and "'fakefw' was asked for" in line and "libfakefw.so" in line
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 4. honest availability
@pytest.fixture
def broken_framework(tmp_path, monkeypatch):
    """A plugin 'brokenfw' first in the CPU order whose required module is installed but raises on import."""
    name = "convnn_test_broken_framework"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent('''
        raise ImportError("libbroken.so.1: cannot open shared object file: No such file or directory")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))

    def load(**options):
        import importlib

        importlib.import_module(name)
        raise AssertionError("unreachable: the import above fails")

    _register(monkeypatch, _plugin("brokenfw", (name,), load))
    monkeypatch.setitem(registry.CPU_POLICY, "op", (("brokenfw", "numpy"), "a test order"))
    monkeypatch.setitem(registry.CPU_POLICY, "train", (("brokenfw", "numpy"), "a test order"))
    return "brokenfw"


def test_installed_but_broken_framework_is_not_available(broken_framework, capsys):
    assert registry.backend_status(broken_framework) == (True, "installed")  # the cheap look-up cannot tell
    ok, why = registry.backend_status(broken_framework, probe=True)
    assert not ok and why.startswith("installed but fails to import") and "libbroken.so.1" in why
    # convnn info says so, and the dispatch it shows is not the broken backend
    assert main(["info"]) == 0
    info = capsys.readouterr().out
    assert "brokenfw NOT available: installed but fails to import" in info
    assert "runs on 'brokenfw'" not in info
    # explain (probing, as `convnn explain` does) and auto pass over it, with the reason
    text = cc.explain("convnn2d", probe=True)
    assert text.startswith("convnn2d: runs on 'numpy'")
    assert "backend passed over 'brokenfw': installed but fails to import" in text
    choice = registry.resolve_auto("op")
    assert choice.name == "numpy" and dict(choice.passed_over)["brokenfw"].startswith("installed but fails")
    with pytest.warns(RuntimeWarning, match="brokenfw"):
        assert cc.get_backend("auto").name == "numpy"
    with pytest.raises(cc.BackendUnavailable, match="installed but fails to import"):
        cc.get_backend(broken_framework)
    assert main(["explain", "--backend", broken_framework]) == 0
    assert "'brokenfw' cannot run: installed but fails to import" in capsys.readouterr().out


def test_explain_without_probe_says_it_did_not_import(broken_framework, capsys):
    text = cc.explain("convnn2d")  # the import-free default: it cannot see the broken install, and says so
    assert text.startswith("convnn2d: runs on 'brokenfw'")
    assert "availability: from the installed packages, not imported" in text and "probe=True" in text
    assert main(["explain"]) == 0  # the command probes
    out = capsys.readouterr().out
    assert out.startswith("convnn2d: runs on 'numpy'") and "not imported" not in out
