"""Backend registry: lazy imports, availability, install hints, explain, and the `convnn info` command."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import convnn as cc
from convnn import registry
from convnn.kernels import PathChoice, PathRequest
from convnn.vocabulary import CONVNN_OPS, missing_ops


def test_importing_core_imports_no_framework():
    code = ("import convnn, sys; bad = {'torch', 'jax', 'numba'} & set(sys.modules); "
            "assert not bad, bad; convnn.available_backends(); convnn.explain(); "
            "bad = {'torch', 'jax', 'numba'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numpy_backend_is_the_spec():
    backend = cc.get_backend("numpy")
    assert backend.name == "numpy"
    assert not [op for op in CONVNN_OPS if op in missing_ops(backend)]
    assert "numpy" in cc.available_backends()


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend='tensorflow' is unknown; choose one of .*numpy.* or 'auto'"):
        cc.get_backend("tensorflow")


def test_missing_framework_names_the_extra(monkeypatch):
    real = importlib.util.find_spec

    def fake_find_spec(name, *args):
        return None if name == "numba" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    ok, why = cc.backend_status("numba")
    assert not ok and "missing numba" in why and "pip install 'convnn[numba]'" in why
    with pytest.raises(cc.BackendUnavailable, match=r"backend 'numba' cannot run: missing numba.*convnn\[numba\]"):
        cc.get_backend("numba")
    assert "numba" not in cc.available_backends()


def test_auto_without_gpu_follows_the_cpu_policy(monkeypatch):
    monkeypatch.setattr(registry, "cuda_visible", lambda: (False, "no CUDA GPU is visible"))
    for purpose in registry.PURPOSES:
        choice = registry.resolve_auto(purpose)
        assert choice.device == "cpu"
        order = [n for n in registry.CPU_POLICY[purpose][0] if n in registry.available_backends()]
        if purpose == "train":
            order = [n for n in order if registry.BACKENDS[n].trains_convnn]
        assert choice.name == order[0]
        assert "no CUDA GPU is visible" in choice.reason
        text = cc.explain("convnn2d", purpose=purpose)
        assert f"runs on {choice.name!r} (cpu)" in text
        assert all(f"passed over {n!r}" in text for n, _ in choice.passed_over)


def test_explain_named_backend():
    text = cc.explain("convnn_attention", backend="numpy")
    assert text.startswith("convnn_attention: runs on 'numpy' (cpu); asked for by name")
    for name in registry.BACKENDS:
        if name != "numpy":
            assert repr(name) in text


def test_explain_names_the_path_of_a_config():
    text = cc.explain("convnn2d", cc.ConvNNConfig(k=5, sampling="random", num_samples=16), backend="numpy")
    path = [line for line in text.splitlines() if line.startswith("  path: ")]
    assert len(path) == 1 and path[0] == "  path: " + registry.BACKENDS["numpy"].describe_path(
        PathRequest("convnn2d", cc.ConvNNConfig(), "float32", "cpu")).path


# ----------------------------------------------------------------------------- plugins
class _FakeBackend:
    name = "fake"


def _fake_plugin(name="fake", trains_convnn=False):
    return registry.BackendPlugin(
        name=name, requires=("numpy",), extra=None, summary="a test plugin", loader=lambda **options: _FakeBackend(),
        devices=("cpu",), trains_convnn=trains_convnn,
        describe_path=lambda request: PathChoice(f"fake path for {request.op} k={request.cfg.k}",
                                                 (("the other path", "not in this test"),)))


@pytest.fixture
def fake_registered(monkeypatch):
    monkeypatch.setattr(registry.BACKENDS, "_cache", {**registry.BACKENDS._all(), "fake": _fake_plugin()})
    monkeypatch.setattr(registry, "cuda_visible", lambda: (False, "no CUDA GPU in this test"))
    return registry.BACKENDS["fake"]


def test_a_registered_plugin_is_listed_explained_and_loaded(fake_registered):
    assert "fake" in registry.available_backends() and "fake" in list(registry.BACKENDS)
    text = registry.explain("convnn2d", cc.ConvNNConfig(k=7), backend="fake")
    assert text.startswith("convnn2d: runs on 'fake' (cpu); asked for by name")
    assert "  path: fake path for convnn2d k=7" in text and "path passed over the other path" in text
    assert "passed over 'fake'" in registry.explain("convnn2d", cc.ConvNNConfig())
    assert isinstance(registry.get_backend("fake"), _FakeBackend)
    from convnn.cli import info_text

    assert "fake" in info_text() and "a test plugin" in info_text()


def test_train_auto_never_picks_a_backend_that_cannot_train_convnn(fake_registered, monkeypatch):
    # the forward-only plugin first in the training order: auto must pass over it for a ConvNN model
    order = ("fake",) + registry.CPU_POLICY["train"][0]
    monkeypatch.setitem(registry.CPU_POLICY, "train", (order, "a test order"))
    monkeypatch.setattr(registry, "PLAIN_TRAIN_POLICY", None)  # models without ConvNN follow the same order
    choice = registry.resolve_auto("train", uses_convnn=True)
    assert registry.BACKENDS[choice.name].trains_convnn
    assert dict(choice.passed_over)["fake"].startswith("runs the ConvNN ops forward only")
    # a model without ConvNN layers may train on it
    assert registry.resolve_auto("train", uses_convnn=False).name == "fake"
    # with only forward-only backends nothing can train a ConvNN model: an error, not a forward-only pick
    monkeypatch.setattr(registry.BACKENDS, "_cache", {n: p for n, p in registry.BACKENDS._all().items()
                                                      if not p.trains_convnn})
    with pytest.raises(registry.BackendUnavailable, match="forward only"):
        registry.resolve_auto("train", uses_convnn=True)


def test_train_auto_on_the_real_registry_picks_a_convnn_trainer():
    choice = registry.resolve_auto("train", uses_convnn=True)
    assert registry.BACKENDS[choice.name].trains_convnn
    for name, why in choice.passed_over:
        assert registry.BACKENDS[name].trains_convnn or "forward only" in why or "lower" in why


def test_convnn_info_command():
    from convnn.cli import info_text, main

    text = info_text()
    assert "backends:" in text and "numpy  available" in text and "dispatch:" in text
    dispatch = text.split("dispatch:", 1)[1]
    assert "auto policy for 'op'" in dispatch and "auto policy for 'train'" in dispatch and "path: " in dispatch
    assert main(["info"]) == 0
    out = subprocess.run([sys.executable, "-m", "convnn", "--help"], capture_output=True, text=True, check=True)
    assert "info" in out.stdout


def test_convnn_explain_command(capsys):
    from convnn.cli import main

    assert main(["explain", "--backend", "numpy", "--op", "convnn1d", "--k", "5", "--sampling", "random",
                 "--num-samples", "16", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("convnn1d: runs on 'numpy' (cpu); asked for by name") and "  path: " in out
    assert main(["explain", "--purpose", "train"]) == 0
    assert "auto policy for 'train'" in capsys.readouterr().out
    assert main(["explain", "--sampling", "random"]) == 2  # random sampling needs --num-samples
    assert "num_samples" in capsys.readouterr().err


def test_cli_commands_come_from_the_entry_point_group(monkeypatch):
    from importlib import metadata

    from convnn import cli

    def register(sub):
        sub.add_parser("hello").set_defaults(func=lambda args: 7)

    class FakeEntryPoint:
        name, value = "hello", "tests:register"

        def load(self):
            return register

    monkeypatch.setattr(cli, "command_plugins", lambda: [FakeEntryPoint()])
    assert cli.main(["hello"]) == 7
    groups = {ep.value for ep in metadata.entry_points(group=cli.COMMANDS_GROUP)}
    assert {"convnn.models.cli:register", "convnn.conformance.cli:register", "convnn.bench.cli:register"} <= groups


# ----------------------------------------------------------------------------- no backend-name branches
NAME_BRANCH = re.compile(r"""(==|!=)\s*["'](jax|torch|numpy|numba)["']|["'](jax|torch|numpy|numba)["']\s*(==|!=)"""
                         r"""|\b(not )?in \(\s*["'](jax|torch|numpy|numba)["']""")


def test_no_backend_name_branches_outside_the_backends():
    root = Path(__file__).resolve().parents[1]
    files = [root / "convnn_core" / "cli.py"]
    for folder in ("bench", "conformance", "models"):
        files += sorted((root / folder).rglob("*.py"))
    assert len(files) > 20
    hits = [f"{path.relative_to(root)}:{i}: {line.strip()}" for path in files
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if NAME_BRANCH.search(line)]
    assert not hits, "backend-name branches (read backend.capabilities / the registry plugin instead):\n" + \
        "\n".join(hits)
