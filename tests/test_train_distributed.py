"""Data-parallel training: two torchrun processes (gloo) and two JAX devices match one process with the same global
batch within float32 tolerance; rank 0 alone writes the run folder; a distributed run resumes; misuse is refused.

The models have no dropout or BatchNorm, so the split batch computes exactly what the whole one does (up to
float32 rounding of the reductions). Batches of 32 over 100 images leave a last batch of 4 (torch: 2 + 2) or, for
jax, 65 images leave one image (not divisible by 2: it runs whole on one device)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from convnn.models.train import Trainer, build_config, load_checkpoint

TINY_VIT = ["--model", "vit_tiny_cifar", "-o", "depth=1", "-o", "dim=16", "-o", "mlp_dim=32", "-o", "heads=2",
            "-o", "dropout=0", "-o", "attention_dropout=0"]
COMMON = ["--preset", "paper", "--dataset", "sample", "--val-subset", "33", "--batch-size", "32", "--lr", "1e-3",
          "--no-progress"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CONVNN_TRACEBACK="1", **extra)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-5000:]}"
    return done


def _steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_training(got: Path, want: Path) -> None:
    """Per-step loss, gradient norm and accuracy, per-epoch validation, and the final checkpoint's tensors."""
    a, b = _steps(got), _steps(want)
    assert [s["step"] for s in a] == [s["step"] for s in b] and len(a) >= 6
    for sa, sb in zip(a, b):
        np.testing.assert_allclose(sa["loss"], sb["loss"], rtol=2e-5, err_msg=f"step {sa['step']}")
        np.testing.assert_allclose(sa["grad_norm"], sb["grad_norm"], rtol=2e-5, err_msg=f"step {sa['step']}")
        assert sa["top1"] == sb["top1"]
    ca, cb = load_checkpoint(got), load_checkpoint(want)
    assert ca.meta["global_step"] == cb.meta["global_step"]
    for (ha, hb) in zip(ca.meta["history"], cb.meta["history"]):
        assert ha["val_top1"] == hb["val_top1"] and ha["val_top5"] == hb["val_top5"]
        np.testing.assert_allclose(ha["val_loss"], hb["val_loss"], rtol=2e-5)
    for group in ("params", "opt"):
        assert ca.groups[group].keys() == cb.groups[group].keys()
        for name, value in cb.groups[group].items():
            np.testing.assert_allclose(ca.groups[group][name], value, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{group}.{name}")


def test_two_torchrun_processes_match_one_and_resume(tmp_path):
    pytest.importorskip("torch")
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch was built without torch.distributed")
    args = [*COMMON, *TINY_VIT, "-o", "attention=attention", "--backend", "torch", "--subset", "99",
            "--out-dir", str(tmp_path)]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "convnn", "train"]
    # one process, 2 epochs (in this process: the reference)
    cfg = build_config("paper", None, {"model": "vit_tiny_cifar", "backend": "torch", "dataset": "sample",
                                       "subset": 99, "val_subset": 33, "batch_size": 32, "lr": 1e-3, "epochs": 2,
                                       "progress": False, "out_dir": str(tmp_path), "run_name": "single",
                                       "model_options": {"depth": 1, "dim": 16, "mlp_dim": 32, "heads": 2,
                                                         "dropout": 0, "attention_dropout": 0,
                                                         "attention": "attention"}})
    Trainer(cfg, log=lambda s: None).run()
    # two processes: 1 epoch, then resumed (again under torchrun) to 2
    _run([*launch, *args, "--epochs", "1", "--run-name", "ddp"], _env())
    run = tmp_path / "ddp"
    config = json.loads((run / "config.json").read_text())
    assert config["distributed"] == {"kind": "torch-distributed", "world_size": 2, "devices": 2,
                                     "process_group": "gloo"}
    _run([*launch, "--resume", str(run), "--epochs", "2", "--no-progress"], _env())
    _assert_same_training(run, tmp_path / "single")
    # rank 0 alone wrote: one line per step, one row per epoch, nothing outside the run folder
    assert [s["step"] for s in _steps(run)] == list(range(1, 9))
    assert len((run / "epochs.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]


JAX_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from convnn.models.train import Trainer, build_config

    assert len(jax.devices()) == 2, jax.devices()
    out = sys.argv[1]
    base = {"model": "vit_tiny_cifar", "backend": "jax", "dataset": "sample", "subset": 65, "val_subset": 33,
            "batch_size": 32, "lr": 1e-3, "epochs": 2, "progress": False, "out_dir": out,
            "model_options": {"depth": 1, "dim": 16, "mlp_dim": 32, "heads": 2, "dropout": 0,
                              "attention_dropout": 0, "attention": "convnn"}}
    one = Trainer(build_config("paper", None, {**base, "run_name": "one"}), log=lambda s: None).run()
    two = Trainer(build_config("paper", None, {**base, "run_name": "two", "devices": 2}), log=lambda s: None).run()
    leaves = jax.tree_util.tree_leaves(two.params)
    print(json.dumps({"devices_per_param": sorted({len(p.sharding.device_set) for p in leaves}),
                      "one_devices": sorted({len(p.sharding.device_set) for p in jax.tree_util.tree_leaves(one.params)})}))
""")


def test_two_jax_devices_match_one(tmp_path):
    pytest.importorskip("jax")
    done = _run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path)],
                _env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), timeout=180)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"devices_per_param": [2], "one_devices": [1]}  # replicated over the mesh vs one device
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["distributed"]["kind"] == "jax-sharding" and config["distributed"]["devices"] == 2
    assert config["devices"] == 2
    _assert_same_training(tmp_path / "two", tmp_path / "one")


def test_jax_mesh_splits_divisible_batches_and_keeps_the_rest_whole():
    jax = pytest.importorskip("jax")
    from convnn.models.train.distributed import JaxMesh

    mesh = JaxMesh(1)
    x = mesh.place_batch(jax.numpy.ones((4, 3)))
    assert x.sharding.spec == jax.sharding.PartitionSpec("data")
    mesh.devices = 3  # as if three devices: 4 rows do not divide, the batch stays whole on the first device
    assert not mesh.splits(4) and mesh.splits(6) and not mesh.splits(0)


def _tiny(tmp_path: Path, backend: str, **overrides):
    return build_config("paper", None, {"model": "vit_tiny_cifar", "backend": backend, "dataset": "sample",
                                        "subset": 32, "val_subset": 16, "batch_size": 16, "epochs": 1,
                                        "progress": False, "out_dir": str(tmp_path), "run_name": "r",
                                        "model_options": {"depth": 1, "dim": 16, "mlp_dim": 32, "heads": 2},
                                        **overrides})


def test_devices_on_torch_points_to_torchrun(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="torchrun --nproc_per_node"):
        Trainer(_tiny(tmp_path, "torch", devices=2), log=lambda s: None).run()
    assert not (tmp_path / "r").exists()


def test_more_jax_devices_than_exist_is_refused_with_the_way_to_get_them(tmp_path):
    jax = pytest.importorskip("jax")
    n = len(jax.devices())
    with pytest.raises(ValueError, match=f"jax sees {n} local device.*xla_force_host_platform_device_count"):
        Trainer(_tiny(tmp_path, "jax", devices=n + 1), log=lambda s: None).run()


def test_a_torchrun_launch_of_a_single_process_backend_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("jax")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="multi-process training runs on backend torch"):
        Trainer(_tiny(tmp_path, "jax"), log=lambda s: None).run()
    assert not (tmp_path / "r").exists()  # a rank other than 0 writes nothing
