"""Backend-neutral checkpoints: one checkpoint evaluates to the same accuracy on every installed backend, and a
run killed with SIGKILL resumes to the same parameters (slow)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convnn.registry import backend_status
from convnn.tree import flatten
from convnn.models import create_model
from convnn.models.cli import run_eval
from convnn.models.train import build_config, load_checkpoint
from convnn.models.train.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BRANCHING = {"layer": "branching", "ratio": 0.5, "width": 0.0625, "head": "light"}


def _checkpoint(tmp_path: Path, options: dict, model: str = "vgg11") -> Path:
    """A checkpoint of an initialised model with non-trivial BatchNorm statistics, as `convnn train` writes it."""
    m = create_model(model, backend="numpy", **options)
    params, state = m.init(11)
    state = {k: v for k, v in state.items()}
    if "features" in state:
        for layer in state["features"].values():
            layer["bn"]["mean"] = layer["bn"]["mean"] + 0.05
            layer["bn"]["var"] = layer["bn"]["var"] * 0.5
    cfg = build_config("paper", None, {"dataset": "sample", "val_subset": 48, "batch_size": 16, "model": model,
                                        "model_options": options})
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, params=params, state=state, opt_state={}, to_numpy=np.asarray,
                    meta={"model": m.config, "train": cfg.resolved(), "backend": "numpy", "resize": None,
                          "epoch": 1, "step_in_epoch": 0, "global_step": 1, "history": [], "best": {}, "sums": {}})
    return path


def _available(names):
    return [n for n in names if backend_status(n)[0]]


@pytest.mark.parametrize("model,options", [
    pytest.param("vgg11", BRANCHING, marks=pytest.mark.slow),  # about 80 s: numba compiles, torch CPU is slow
    ("vit_tiny_cifar", {"attention": "convnn", "sampling": "random", "num_samples": 32, "depth": 1, "dim": 16,
                        "mlp_dim": 16}),
])
def test_one_checkpoint_same_accuracy_on_every_backend(tmp_path, model, options):
    path = _checkpoint(tmp_path, options, model)
    # float32 (the checkpoint's dtype): the accuracy agrees within 0.1 point; float64: to rounding
    for dtype, loss_rtol in ((None, 1e-4), ("float64", 1e-10)):
        reference = run_eval(str(path), "numpy", dtype=dtype)
        assert reference["n"] == 48
        for name in _available(("torch", "jax", "numba")):
            got = run_eval(str(path), name, dtype=dtype)
            assert got["backend"] == name and got["dtype"] == (dtype or "float32")
            assert abs(got["top1"] - reference["top1"]) <= 0.001, (name, dtype, got["top1"], reference["top1"])
            assert abs(got["top5"] - reference["top5"]) <= 0.001, (name, dtype)
            assert abs(got["loss"] - reference["loss"]) <= loss_rtol * max(1.0, reference["loss"]), (name, dtype)


@pytest.mark.slow
@pytest.mark.skipif(not backend_status("numba")[0], reason="numba backend not available")
def test_killed_run_resumes_to_the_uninterrupted_parameters(tmp_path):
    """A `convnn train` subprocess killed with SIGKILL mid-run, then resumed, ends where an uninterrupted run ends."""
    common = ["--backend", "numba", "--dataset", "sample", "--subset", "192", "--val-subset", "64",
              "--batch-size", "32", "--epochs", "2", "--checkpoint-every", "2", "--no-progress",
              "--out-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "convnn", "train"]
    subprocess.run(cmd + common + ["--run-name", "full"], check=True, env=env, cwd=ROOT, capture_output=True)
    proc = subprocess.Popen(cmd + common + ["--run-name", "killed"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jsonl = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 7:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(tmp_path / "killed").meta["global_step"] < 12
    subprocess.run(cmd + ["--resume", str(tmp_path / "killed"), "--no-progress"], check=True, env=env, cwd=ROOT,
                   capture_output=True)
    full = load_checkpoint(tmp_path / "full")
    resumed = load_checkpoint(tmp_path / "killed")
    assert resumed.meta["global_step"] == full.meta["global_step"] == 12
    for name, arr in full.groups["params"].items():
        np.testing.assert_array_equal(resumed.groups["params"][name], arr, err_msg=name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
    assert flatten(full.meta["best"]) == flatten(resumed.meta["best"])
