"""The `convnn` backstop: whatever a command raises ends as one line `convnn <command>: error: ...` on stderr
(exit 2; 130 when interrupted), a full traceback only with CONVNN_TRACEBACK=1 (or CONVNN_DEBUG=1); argparse's
own errors are one line too."""
from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from convnn import cli
from convnn.registry import BackendUnavailable


def _one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(prefix) and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture
def raising_command(monkeypatch):
    """A command `boom` (with a subcommand `deep`) that raises whatever the test puts in `holder['error']`."""
    holder: dict = {}

    def run(args):
        raise holder["error"]

    def register(sub):
        p = sub.add_parser("boom")
        inner = p.add_subparsers(dest="boom_command")
        inner.add_parser("deep").set_defaults(func=run)
        p.set_defaults(func=run)

    class EntryPoint:
        name, value = "boom", "tests:register"

        def load(self):
            return register

    monkeypatch.setattr(cli, "command_plugins", lambda: [EntryPoint()])
    monkeypatch.delenv("CONVNN_TRACEBACK", raising=False)
    monkeypatch.delenv("CONVNN_DEBUG", raising=False)
    return holder


@pytest.mark.parametrize("error,words", [
    (ValueError("--size=-1 is not allowed; give an int >= 1"), "--size=-1 is not allowed; give an int >= 1"),
    (TypeError("cfg must be a ConvNNConfig, got dict"), "cfg must be a ConvNNConfig, got dict"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/such/run"), "/no/such/run"),
    (PermissionError(errno.EACCES, "Permission denied", "/locked"), "Permission denied"),
    (BackendUnavailable("backend 'numba' cannot run: missing numba; install with pip install 'convnn[numba]'"),
     "pip install 'convnn[numba]'"),
    (ModuleNotFoundError("No module named 'tqdm'", name="tqdm"), "convnn info"),
    (NotImplementedError("the numpy backend cannot train ConvNN layers; use numba, torch or jax"), "numba, torch"),
    (MemoryError("Unable to allocate 1.75 TiB"), "out of memory"),
])
def test_expected_errors_are_one_line_exit_2(raising_command, capsys, error, words):
    raising_command["error"] = error
    assert cli.main(["boom"]) == 2
    line = _one_line(capsys, "convnn boom: error: ")
    assert words in line


def test_an_unexpected_error_is_one_line_and_says_how_to_get_the_traceback(raising_command, capsys):
    raising_command["error"] = RuntimeError("something no one planned for\nsecond line")
    assert cli.main(["boom"]) == 2
    line = _one_line(capsys, "convnn boom: error: unexpected RuntimeError: something no one planned for second line")
    assert "CONVNN_TRACEBACK=1" in line


def test_the_subcommand_is_named(raising_command, capsys):
    raising_command["error"] = ValueError("bad")
    assert cli.main(["boom", "deep"]) == 2
    assert _one_line(capsys, "convnn boom deep: error: bad")


def test_interrupt_exits_130(raising_command, capsys):
    raising_command["error"] = KeyboardInterrupt()
    assert cli.main(["boom"]) == 130
    assert _one_line(capsys, "convnn boom: interrupted")


@pytest.mark.parametrize("var", ["CONVNN_TRACEBACK", "CONVNN_DEBUG"])
def test_the_traceback_on_request(raising_command, monkeypatch, var):
    monkeypatch.setenv(var, "1")
    raising_command["error"] = ValueError("bad")
    with pytest.raises(ValueError, match="bad"):
        cli.main(["boom"])
    raising_command["error"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        cli.main(["boom"])


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["explain", "--op", "nosuchop"])
    assert stop.value.code == 2
    line = _one_line(capsys, "convnn explain: error: argument --op: invalid choice: 'nosuchop'")
    assert "convnn explain --help" in line
    with pytest.raises(SystemExit):
        cli.main(["conformance", "--nosuchflag"])
    assert "convnn: error: unrecognized arguments: --nosuchflag" in _one_line(capsys, "convnn: error:")


def test_no_command_and_no_bench_subcommand(capsys):
    assert cli.main([]) == 2
    assert _one_line(capsys, "convnn: error: give a command")
    assert cli.main(["bench"]) == 2
    assert "layer, model, sweep or readme" in _one_line(capsys, "convnn bench: error:")


def test_explain_and_conformance_errors_are_one_line(capsys):
    assert cli.main(["explain", "--k", "0"]) == 2
    assert "k=0" in _one_line(capsys, "convnn explain: error:")
    assert cli.main(["explain", "--backend", "nosuch"]) == 2
    assert "'nosuch' is unknown" in _one_line(capsys, "convnn explain: error:")
    assert cli.main(["conformance", "--level", "9", "--no-progress"]) == 2
    assert "--level='9'" in _one_line(capsys, "convnn conformance: error:")


def test_the_console_script_prints_no_traceback():
    out = subprocess.run([sys.executable, "-m", "convnn", "bench", "layer", "--quick", "--repeats", "0"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == "convnn bench layer: error: --repeats=0 is not allowed; give an int >= 1"
