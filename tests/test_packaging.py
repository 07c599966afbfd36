"""The installed names: one `convnn` namespace in the wheel, and nothing a user's own folders can shadow."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERIC = ("models", "backends", "bench", "conformance")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("src") / "convnn"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "reports",
                                                                 "__pycache__", "*.egg-info", ".hypothesis"))
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, env=env, cwd=out, capture_output=True)
    (found,) = out.glob("convnn-*.whl")
    return found


def test_the_wheel_installs_one_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"convnn"}, f"top-level names in the wheel: {sorted(top)}"
    for sub in GENERIC:
        assert f"convnn/{sub}/__init__.py" in names
    assert "convnn/models/data/sample/manifest.json" in names


def test_the_wheel_registers_backends_and_commands_as_entry_points(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (ep,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(ep).decode()
    assert "[convnn.backends]" in text and "[convnn.commands]" in text
    for name in ("numpy", "numba", "torch", "jax"):
        assert f"{name} = convnn.backends.{name}:PLUGIN" in text


def _decoys(folder: Path) -> None:
    for name in ("models", "backends", "bench", "conformance"):
        pkg = folder / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(f"raise ImportError('the decoy package {name!r} was imported')\n")


def test_convnn_ignores_a_users_own_models_backends_and_bench_packages(tmp_path: Path) -> None:
    """`convnn info` and a two-step training run from a folder holding decoy packages with generic names."""
    _decoys(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}
    info = subprocess.run([sys.executable, "-m", "convnn", "info"], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    assert info.returncode == 0, info.stderr
    assert "decoy package" not in info.stdout + info.stderr
    train = subprocess.run(
        [sys.executable, "-m", "convnn", "train", "--backend", "numpy", "--model", "vgg11", "-o", "layer=conv",
         "--dataset", "sample", "--subset", "16", "--val-subset", "8", "--batch-size", "8", "--epochs", "1",
         "--no-progress", "--out-dir", str(tmp_path / "runs"), "--run-name", "shadow-test"],
        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "decoy package" not in train.stdout + train.stderr
    lines = (tmp_path / "runs" / "shadow-test" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 2


def test_importing_convnn_imports_no_framework() -> None:
    code = ("import convnn, sys; convnn.explain(); convnn.available_backends(); "
            "print(sorted({'torch', 'jax', 'numba'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
