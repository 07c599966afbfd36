"""--precision bf16: bfloat16 compute with float32 master weights, optimizer state and checkpoints (torch autocast,
jax through the backend vocabulary); refused by name where a backend cannot; old runs without the field resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convnn.config import ConvNNConfig
from convnn.models.train import Trainer, build_config, load_checkpoint
from convnn.models.train.checkpoint import checkpoint_bytes, write_checkpoints
from convnn.models.train.precision import MixedPrecision, check_precision

TINY_VIT = {"model": "vit_tiny_cifar",
            "model_options": {"depth": 1, "dim": 16, "mlp_dim": 32, "heads": 2, "attention": "attention",
                              "dropout": 0.0, "attention_dropout": 0.0}}


def _config(tmp_path: Path, name: str, **overrides):
    base = {"dataset": "sample", "subset": 64, "val_subset": 32, "batch_size": 32, "epochs": 1, "lr": 1e-3,
            "progress": False, "out_dir": str(tmp_path), "run_name": name, **TINY_VIT}
    base.update(overrides)
    return build_config("paper", None, base)


def _steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("field,value,words", [
    ("precision", "fp16", ["precision='fp16'", "fp32", "bf16"]),
    ("devices", 0, ["devices=0", "'all'"]),
])
def test_config_refuses_unknown_precision_and_device_counts(tmp_path, field, value, words):
    with pytest.raises(ValueError) as err:
        _config(tmp_path, "x", **{field: value})
    assert all(w in str(err.value) for w in words)


def test_bf16_needs_float32_master_weights(tmp_path):
    with pytest.raises(ValueError, match="dtype='float32'"):
        _config(tmp_path, "x", precision="bf16", dtype="float64")


@pytest.mark.parametrize("backend", ["numpy", "numba", "onnx"])
def test_backends_without_bf16_training_are_refused_naming_those_that_can(backend):
    from convnn import get_backend

    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    loaded = get_backend(backend)
    with pytest.raises(ValueError) as err:
        check_precision("bf16", loaded)
    text = str(err.value)
    assert backend in text and "torch" in text and "jax" in text
    check_precision("fp32", loaded)  # fp32 is everyone's


def test_trainer_refuses_bf16_on_numpy_before_training(tmp_path):
    pytest.importorskip("autograd")
    with pytest.raises(ValueError, match="bf16 training runs on torch or jax"):
        Trainer(_config(tmp_path, "np", backend="numpy", precision="bf16"), log=lambda s: None).run()
    assert not (tmp_path / "np").exists()  # nothing was written


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_bf16_view_computes_matmuls_in_bfloat16_and_convnn_in_a_supported_dtype(name):
    pytest.importorskip(name)
    from convnn.models.train.backend_choice import resolve_training_backend

    backend, _ = resolve_training_backend(name, "vgg11", {}, dtype="float32")
    mp = MixedPrecision("bf16", backend)
    view = mp.backend()
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((2, 4, 6, 6)).astype(np.float32), "float32")
    w = backend.asarray(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "float32")
    b = backend.asarray(np.zeros(4, np.float32), "float32")
    w_nn = backend.asarray(rng.standard_normal((4, 4, 9)).astype(np.float32), "float32")
    with mp.autocast():
        conv = view.conv2d(x, w, b, padding=1)
        # a bfloat16 activation into a ConvNN op: the backend alone refuses it on the CPU (no bf16 ConvNN kernels)
        with pytest.raises(TypeError):
            backend.convnn2d(conv, w_nn, b, ConvNNConfig(k=9))
        nn = view.convnn2d(conv, w_nn, b, ConvNNConfig(k=9))
        loss = view.cross_entropy(conv.reshape(2, -1)[:, :10], backend.asarray(np.array([1, 2]), "int32"))
    assert "bfloat16" in str(conv.dtype)
    assert "bfloat16" in str(nn.dtype)  # computed in float32, returned in its input's dtype
    assert "float32" in str(loss.dtype)  # the loss is computed in float32
    assert MixedPrecision("fp32", backend).backend() is backend


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_bf16_run_keeps_float32_weights_and_checkpoints_and_tracks_fp32(tmp_path, name):
    pytest.importorskip(name)
    fp32 = Trainer(_config(tmp_path, "fp32", backend=name), log=lambda s: None).run()
    bf16 = Trainer(_config(tmp_path, "bf16", backend=name, precision="bf16"), log=lambda s: None).run()
    config = json.loads((bf16.run_dir / "config.json").read_text())
    assert config["precision"] == "bf16"
    ckpt = load_checkpoint(bf16.run_dir)
    assert ckpt.meta["train"]["precision"] == "bf16"
    floats = {str(a.dtype) for g in ckpt.groups.values() for a in g.values() if a.dtype.kind == "f"}
    assert floats == {"float32"}  # params, model state and AdamW moments
    assert all("float32" in str(leaf.dtype) for leaf in _leaves(bf16.params))
    a, b = _steps(fp32.run_dir), _steps(bf16.run_dir)
    assert len(a) == len(b) == 2
    # same start, bfloat16 rounding only: close to the float32 run, but not identical (it did compute in bf16)
    assert abs(a[0]["loss"] - b[0]["loss"]) < 2e-2 * abs(a[0]["loss"])
    assert a[0]["loss"] != b[0]["loss"]


def _leaves(tree):
    from convnn.tree import tree_leaves

    return tree_leaves(tree)


def test_a_run_written_before_precision_and_devices_existed_resumes(tmp_path):
    pytest.importorskip("torch")
    from convnn.models.cli import build_train_config
    from convnn.cli import build_parser

    first = Trainer(_config(tmp_path, "old", backend="torch"), log=lambda s: None).run()
    run = first.run_dir
    # make it look like an older version's run: no precision/devices in the checkpoint or config.json
    for path in (run / "checkpoints" / "last.safetensors", run / "checkpoints" / "best.safetensors"):
        ckpt = load_checkpoint(path)
        meta = {k: v for k, v in ckpt.meta.items() if k != "format"}
        meta["train"] = {k: v for k, v in meta["train"].items() if k not in ("precision", "devices")}
        tensors = {f"{g}.{k}": v for g, arrays in ckpt.groups.items() for k, v in arrays.items()}
        write_checkpoints([path], checkpoint_bytes(tensors, meta))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                 if k not in ("precision", "devices")}))
    args = build_parser().parse_args(["train", "--resume", str(run), "--epochs", "2", "--precision", "bf16",
                                      "--no-progress"])
    cfg, resume = build_train_config(args)
    assert cfg.precision == "bf16" and cfg.devices == 1
    resumed = Trainer(cfg, resume=resume, log=lambda s: None).run()
    assert [s["step"] for s in _steps(run)] == [1, 2, 3, 4]
    assert len(resumed.history) == 2
    assert load_checkpoint(run).meta["train"]["precision"] == "bf16"


def test_conformance_checks_the_bf16_model_forward_within_bf16_tolerance():
    pytest.importorskip("torch")
    from convnn.conformance.results import NOT_AVAILABLE, PASS
    from convnn.conformance.runner import load_entry, run_suite

    pick = lambda c: c.id in ("fwd-vgg11-conv-bf16-mixed", "fwd-vit-attention-bf16-mixed")  # noqa: E731
    report = run_suite([load_entry("torch", ("bfloat16",)), load_entry("numpy", ("bfloat16",))], levels=(4,),
                       dtypes=("bfloat16",), full=False, case_filter=pick)
    by_backend = {}
    for r in report.results:
        by_backend.setdefault(r.backend, set()).add(r.status)
    assert by_backend == {"torch": {PASS}, "numpy": {NOT_AVAILABLE}}
    assert len([r for r in report.results if r.backend == "torch"]) == 2
