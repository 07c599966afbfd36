"""The training loop on the NumPy backend (autograd): outputs, exact resume after an interruption, checkpoints,
config mismatches and the CLI. Small models and the embedded sample keep these in CI budget."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convnn.tree import flatten
from convnn.models.cli import run_eval
from convnn.models.train import Trainer, build_config, load_checkpoint

pytest.importorskip("autograd")

TINY_VIT = {"model": "vit_tiny_cifar",
            "model_options": {"depth": 1, "dim": 16, "mlp_dim": 32, "heads": 2, "attention": "attention"}}


def _config(tmp_path: Path, name: str, **overrides):
    base = {"backend": "numpy", "dataset": "sample", "subset": 96, "val_subset": 32, "batch_size": 32,
            "epochs": 2, "lr": 1e-3, "progress": False, "out_dir": str(tmp_path), "run_name": name, **TINY_VIT}
    base.update(overrides)
    return build_config("paper", None, base)


class Interrupt(Exception):
    pass


def _stop_at(step: int):
    def callback(global_step: int) -> None:
        if global_step == step:
            raise Interrupt(f"stopped at step {global_step}")
    return callback


def test_run_writes_metrics_curves_config_and_checkpoints(tmp_path):
    result = Trainer(_config(tmp_path, "r"), log=lambda s: None).run()
    run = result.run_dir
    for name in ("config.json", "epochs.csv", "metrics.jsonl", "curves.png", "summary.json",
                 "checkpoints/last.safetensors", "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert all(np.isfinite(s["loss"]) and s["images_per_second"] > 0 for s in steps)
    assert len((run / "epochs.csv").read_text().splitlines()) == 3
    config = json.loads((run / "config.json").read_text())
    assert config["resolved_backend"] == "numpy" and config["train_images"] == 96 and config["val_images"] == 32
    assert not list(run.rglob("*.tmp"))  # atomic writes leave no temporaries
    # the evaluation command reproduces the best epoch's validation numbers from the checkpoint
    best = result.best
    metrics = run_eval(str(run), "numpy")
    assert metrics["n"] == 32 and abs(metrics["top1"] - best["val_top1"]) < 1e-12
    assert abs(metrics["loss"] - best["val_loss"]) < 1e-5


@pytest.mark.parametrize("stop_at,saved_at", [(5, 4), (3, 2)])
def test_interrupted_and_resumed_run_ends_with_identical_parameters(tmp_path, stop_at, saved_at):
    # dropout, augmentation, a cosine schedule with warmup and mid-epoch checkpoints exercise every random stream
    extra = {"augment": True, "schedule": "cosine", "warmup_epochs": 0.5, "checkpoint_every": 2}
    full = Trainer(_config(tmp_path, "full", **extra), log=lambda s: None).run()
    cfg = _config(tmp_path, "crash", **extra)
    with pytest.raises(Interrupt):
        Trainer(cfg, step_callback=_stop_at(stop_at), log=lambda s: None).run()
    ckpt = load_checkpoint(tmp_path / "crash")
    # 'last' is saved every 2 steps and after each epoch's validation; a stop at step 3 comes before that
    assert ckpt.meta["global_step"] == saved_at
    resumed = Trainer(cfg, resume=str(tmp_path / "crash"), log=lambda s: None).run()
    for path, leaf in flatten(full.params).items():
        np.testing.assert_array_equal(flatten(resumed.params)[path], leaf, err_msg=path)
    assert [h["val_top1"] for h in resumed.history] == [h["val_top1"] for h in full.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    steps = [json.loads(line)["step"] for line in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # the steps after the checkpoint were logged once


def test_resume_refuses_a_different_config_and_existing_runs_are_not_overwritten(tmp_path):
    Trainer(_config(tmp_path, "a", epochs=1), log=lambda s: None).run()
    with pytest.raises(ValueError, match="different training config.*lr"):
        Trainer(_config(tmp_path, "a", epochs=2, lr=5e-3), resume=str(tmp_path / "a"), log=lambda s: None).run()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_config(tmp_path, "a"), log=lambda s: None).run()


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    Trainer(_config(tmp_path, "b", epochs=1), log=lambda s: None).run()
    last = tmp_path / "b" / "checkpoints" / "last.safetensors"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_checkpoint(last)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing")
    # a checkpoint whose params do not fit the model its config names
    from convnn.models.train.checkpoint import save_checkpoint

    ckpt = load_checkpoint(tmp_path / "b" / "checkpoints" / "best.safetensors")
    meta = dict(ckpt.meta)
    meta["model"] = {**meta["model"], "options": {**meta["model"]["options"], "dim": 32, "mlp_dim": 32}}
    meta.pop("format")
    save_checkpoint(tmp_path / "foreign.safetensors", params=ckpt.tree("params"), state={}, opt_state={},
                    meta=meta, to_numpy=np.asarray)
    with pytest.raises(ValueError, match="has shape"):
        run_eval(str(tmp_path / "foreign.safetensors"), "numpy")


def test_training_a_convnn_model_on_the_numpy_oracle_says_where_to_go(tmp_path):
    cfg = _config(tmp_path, "c", model="vgg11", model_options={"layer": "branching", "width": 0.0625,
                                                                 "head": "light"})
    with pytest.raises(NotImplementedError) as err:
        Trainer(cfg, log=lambda s: None).run()
    trainers = str(err.value).rsplit("train it on ", 1)[1]  # ordered by the shipped speed figures
    assert sorted(trainers.replace(" or ", ", ").split(", ")) == ["jax", "numba", "torch"], str(err.value)


# ----------------------------------------------------------------------------- the CLI
def test_cli_help_explains_every_option(capsys):
    from convnn.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--config", "--set", "--option", "--model", "--backend", "--dataset", "--epochs", "--batch-size",
                   "--subset", "--resume", "--augment", "--schedule", "--test", "--data-dir"):
        assert option in text
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "--backend" in capsys.readouterr().out


def test_cli_train_and_eval(tmp_path, capsys):
    from convnn.cli import main

    args = ["train", "--backend", "numpy", "--model", "vit_tiny_cifar", "-o", "depth=1", "-o", "dim=16",
            "-o", "mlp_dim=16", "--subset", "64", "--val-subset", "32", "--batch-size", "32", "--epochs", "1",
            "--out-dir", str(tmp_path), "--run-name", "cli", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "curves:" in out and "val top1" in out
    assert main(["eval", str(tmp_path / "cli"), "--backend", "numpy", "--no-progress",
                 "--output", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 32
    assert main(["train", "--model", "resnet50", "--no-progress", "--out-dir", str(tmp_path)]) == 2
    assert "model='resnet50' is unknown" in capsys.readouterr().err
    assert main(["train", "--set", "epochz=1", "--out-dir", str(tmp_path)]) == 2
    assert "unknown training option" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "cli"), "--lr", "0.5", "--no-progress"]) == 2
    assert "--resume continues the saved config" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "cli"), "--split", "test", "--backend", "numpy"]) == 2
    assert "no test split" in capsys.readouterr().err


def _tiny_cifar10(root: Path, with_test: bool) -> None:
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    gen = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + (["test_batch"] if with_test else [])
    for name in names:
        batch = {"data": gen.integers(0, 256, (16, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in gen.integers(0, 10, 16)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_test_split_is_reported_separately_and_required_up_front(tmp_path):
    _tiny_cifar10(tmp_path / "with", True)
    cfg = _config(tmp_path, "t", dataset="cifar10", data_dir=str(tmp_path / "with"), subset=None, val_subset=None,
                  epochs=1, test=True)
    result = Trainer(cfg, log=lambda s: None).run()
    assert result.test["n"] == 16 and result.test["split"] == "test"
    assert json.loads((result.run_dir / "test.json").read_text())["n"] == 16
    assert json.loads((result.run_dir / "summary.json").read_text())["test"]["n"] == 16
    _tiny_cifar10(tmp_path / "without", False)
    cfg = _config(tmp_path, "u", dataset="cifar10", data_dir=str(tmp_path / "without"), subset=None,
                  val_subset=None, epochs=1, test=True)
    from convnn.models.data import DatasetNotFound

    with pytest.raises(DatasetNotFound, match="no fallback"):
        Trainer(cfg, log=lambda s: None).run()
    assert not (tmp_path / "u" / "checkpoints").exists()  # nothing trained, nothing half-written


# ----------------------------------------------------------------------------- which backend trains
def test_auto_training_backend_is_the_registry_policy(monkeypatch):
    from convnn import registry
    from convnn.models.train.backend_choice import resolve_training_backend

    monkeypatch.setattr(registry, "cuda_visible", lambda: (False, "no CUDA GPU in this test"))
    for options, uses in (({"layer": "convnn"}, True), ({"layer": "conv"}, False)):
        backend, why = resolve_training_backend("auto", "vgg11", options)
        assert backend.name == registry.resolve_auto("train", uses_convnn=uses).name
        assert why.startswith("auto (cpu): ") and backend.capabilities.can_train(uses)[0]


def test_a_backend_that_fails_to_load_is_a_named_error_not_a_fallback(monkeypatch):
    from convnn import registry
    from convnn.models.train.backend_choice import BackendLoadError, resolve_training_backend

    def broken(**options):
        raise RuntimeError("the device is on fire")

    plugin = registry.BACKENDS["numpy"]
    fake = registry.BackendPlugin(name="numpy", requires=plugin.requires, extra=None, summary="broken", loader=broken,
                                  devices=("cpu",), trains_convnn=False)
    monkeypatch.setattr(registry.BACKENDS, "_cache", {**registry.BACKENDS._all(), "numpy": fake})
    with pytest.raises(BackendLoadError, match="backend 'numpy'.*RuntimeError: the device is on fire"):
        resolve_training_backend("numpy", "vit_tiny_cifar", {})
    with pytest.raises(BackendLoadError):  # auto picks a backend for a model without ConvNN: the same error
        monkeypatch.setitem(registry.CPU_POLICY, "train", (("numpy",), "a test order"))
        monkeypatch.setattr(registry, "PLAIN_TRAIN_POLICY", None)
        monkeypatch.setattr(registry, "cuda_visible", lambda: (False, "no CUDA GPU in this test"))
        resolve_training_backend("auto", "vit_tiny_cifar", {})
