"""Zoo models exported to ONNX: dynamic batch, metadata saying what is fixed, equality with the torch module and the
float64 oracle, and `convnn export onnx` on a run folder."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from convnn.backends.torch.onnx_export import export_zoo_module, run_onnx  # noqa: E402
from convnn.backends.torch.zoo_module import from_zoo  # noqa: E402

VIT = {"dim": 32, "depth": 2, "heads": 2, "mlp_dim": 64, "dropout": 0.0, "attention_dropout": 0.0}
VGG = {"width": 0.125, "head": "light", "dropout": 0.0}


def _images(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_vit_convnn_random_sampling_exports_with_dynamic_batch():
    module = from_zoo("vit_tiny_cifar", attention="convnn", k=9, sampling="random", num_samples=16, **VIT)
    result = export_zoo_module(module)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    graph_input = result.model.graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = {n.op_type for n in result.model.graph.node}
    assert {"TopK", "MatMul"} <= ops and not any(n.domain not in ("", "ai.onnx") for n in result.model.graph.node)
    for batch in (1, 3):
        x = _images(batch)
        with torch.no_grad():
            want = module.eval()(torch.from_numpy(x)).numpy()
        got = run_onnx(result.model, x)
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    meta = {p.key: p.value for p in result.model.metadata_props}
    assert meta["convnn.model"] == "vit_tiny_cifar"
    assert "32x32" in meta["convnn.fixed_at_export"] and "candidate draw" in meta["convnn.fixed_at_export"]
    assert json.loads(meta["convnn.options"])["sampling"] == "random"


def test_exported_vgg_position_model_equals_float64_oracle():
    """The exported graph against the zoo model on the NumPy oracle (float64) with the same parameters."""
    from convnn import get_backend
    from convnn.models.registry import create_model
    from convnn.tree import flatten

    opts = {**VGG, "layer": "convnn", "select": "position", "metric": "euclidean", "order": "position"}
    module = from_zoo("vgg11", seed=1, **opts)
    result = export_zoo_module(module, verify=False)
    ref = get_backend("numpy")
    model = create_model("vgg11", backend=ref, num_classes=10, **{**opts, "dtype": "float64"})
    flat_p = {k: v.detach().double().numpy() for k, v in flatten(module.params_tree()).items()}
    flat_s = {k: v.detach().double().numpy() for k, v in flatten(module.state_tree()).items()}
    from convnn.tree import unflatten

    x = _images(3, seed=5)
    want, _ = model.apply(unflatten(flat_p), unflatten(flat_s), x.astype(np.float64), train=False, rng=None)
    got = run_onnx(result.model, x)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-4)


def test_export_refuses_bad_arguments():
    module = from_zoo("vgg11", **VGG)
    with pytest.raises(ValueError, match="opset=7"):
        export_zoo_module(module, opset=7)
    with pytest.raises(ValueError, match="batch_size=1"):
        export_zoo_module(module, batch_size=1)
    with pytest.raises(TypeError, match="zoo module"):
        export_zoo_module(torch.nn.Linear(2, 2))


def _run_cli(argv: list[str]) -> int:
    from convnn.models import export_cli

    parser = argparse.ArgumentParser(prog="convnn")
    export_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_exports_a_run_folder(tmp_path: Path, capsys):
    from convnn import get_backend
    from convnn.models.registry import create_model
    from convnn.models.train.checkpoint import save_checkpoint

    ref = get_backend("numpy")
    model = create_model("vgg11", backend=ref, num_classes=10, layer="branching", sampling="random", num_samples=16,
                         **VGG)
    params, state = model.init(0)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(run / "checkpoints" / "best.safetensors", params=params, state=state, opt_state={},
                    meta={"model": model.config, "resize": None}, to_numpy=ref.to_numpy)
    assert _run_cli(["export", "onnx", str(run), "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert (run / "export" / "model.onnx").is_file() and "within --tolerance" in out and "batch dynamic" in out
    assert _run_cli(["export", "onnx", str(run), "--opset", "99"]) == 2
    assert "opset=99" in capsys.readouterr().err
    assert _run_cli(["export", "onnx", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
