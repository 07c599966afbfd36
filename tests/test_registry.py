"""Backend registry: lazy imports, availability, install hints, explain, and the `convnn info` command."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

import convnn_core as cc
from convnn_core import registry
from convnn_core.vocabulary import CONVNN_OPS, missing_ops


def test_importing_core_imports_no_framework():
    code = ("import convnn_core, sys; bad = {'torch', 'jax', 'numba'} & set(sys.modules); "
            "assert not bad, bad; convnn_core.available_backends(); convnn_core.explain(); "
            "bad = {'torch', 'jax', 'numba'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numpy_backend_is_the_spec():
    backend = cc.get_backend("numpy")
    assert backend.name == "numpy"
    assert not [op for op in CONVNN_OPS if op in missing_ops(backend)]
    assert "numpy" in cc.available_backends()


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend='tensorflow' is unknown; choose one of numpy, numba, torch, jax"):
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


def test_auto_without_gpu_never_picks_torch(monkeypatch):
    monkeypatch.setattr(registry, "_cuda_available", lambda: (False, "no CUDA GPU is visible"))
    chosen, passed = registry.resolve_auto()
    assert chosen in ("numba", "numpy")
    assert passed[0] == ("torch", "no CUDA GPU is visible")
    text = cc.explain("convnn2d")
    assert f"runs on {chosen!r}" in text and "passed over 'torch': no CUDA GPU is visible" in text


def test_explain_named_backend():
    text = cc.explain("convnn_attention", backend="numpy")
    assert text.startswith("convnn_attention: runs on 'numpy' (asked for by name)")
    for name in ("numba", "torch", "jax"):
        assert repr(name) in text


def test_convnn_info_command():
    from convnn_core.cli import info_text, main

    text = info_text()
    assert "backends:" in text and "numpy  available" in text and "dispatch:" in text
    assert main(["info"]) == 0
    out = subprocess.run([sys.executable, "-m", "convnn_core", "--help"], capture_output=True, text=True, check=True)
    assert "info" in out.stdout
