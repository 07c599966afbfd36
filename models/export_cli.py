"""`convnn export onnx`: a trained run (or a checkpoint file) to an ONNX model with a dynamic batch axis."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "Export a model trained by `convnn train` to ONNX. ConvNN layers become standard operators (MatMul -> TopK -> "
    "Gather -> MatMul, Softmax for weighted slots); ONNX TopK keeps equal affinities lower token index first, the "
    "spec's tie rule. The batch axis is dynamic. Fixed at export time: the image size (so every layer's map size), "
    "float32, evaluation mode, and for sampling='random' layers the evaluation candidate draw (a constant of the "
    "graph). These facts are stored in the model's metadata (convnn.*). The exported graph is run in onnxruntime on "
    "an example batch and compared with the torch model. Needs pip install 'convnn[onnx]'.")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `export` command with its `onnx` target."""
    p = sub.add_parser("export", help="export a trained run to another runtime (ONNX)", description=DESCRIPTION)
    targets = p.add_subparsers(dest="target", metavar="TARGET")
    targets.required = True
    o = targets.add_parser("onnx", help="export to an ONNX model (dynamic batch, onnxruntime-checked)",
                           description=DESCRIPTION)
    o.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run folder written by `convnn train` (its checkpoints/best.safetensors, see --which) or a "
                        ".safetensors checkpoint file")
    o.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the model (default: RUN_DIR/export/model.onnx, or the checkpoint path with "
                        "the suffix .onnx)")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset, 13 to 20 (default 17)")
    o.add_argument("--batch-size", type=int, default=2,
                   help="images in the example batch that traces and checks the graph, >= 2 (default 2); the "
                        "exported batch axis is dynamic whatever this is")
    o.add_argument("--image-size", type=int, default=None,
                   help="image side the graph is fixed to (default: the run's training resize, else the model's "
                        "image_size, else 32)")
    o.add_argument("--which", choices=("best", "last"), default="best",
                   help="which checkpoint of a run folder (default best)")
    o.add_argument("--no-verify", action="store_true",
                   help="skip running the exported graph in onnxruntime against the torch model")
    o.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest logit difference from the torch model accepted by the check (default 1e-3); a "
                        "larger one exits with status 1")
    o.set_defaults(func=main)


def default_out(source: Path) -> Path:
    """RUN_DIR/export/model.onnx for a run folder, CHECKPOINT.onnx for a file."""
    return source / "export" / "model.onnx" if source.is_dir() else source.with_suffix(".onnx")


def main(args: argparse.Namespace) -> int:
    """Export; 0 on success, 1 when the onnxruntime check exceeds --tolerance, 2 on bad arguments or inputs."""
    try:
        from convnn.backends.torch.onnx_export import check_opset, export_zoo_module
        from convnn.backends.torch.zoo_module import from_checkpoint
    except ImportError as err:
        print(f"convnn export: error: {err}; install the exporter with pip install 'convnn[onnx]'", file=sys.stderr)
        return 2
    try:
        import onnx  # noqa: F401
        if not args.no_verify:
            import onnxruntime  # noqa: F401
    except ImportError as err:
        print(f"convnn export: error: missing {err.name}; install it with pip install 'convnn[onnx]'",
              file=sys.stderr)
        return 2
    source = Path(args.source)
    try:
        check_opset(args.opset)
        if not source.exists():
            raise ValueError(f"RUN_DIR_OR_CHECKPOINT={str(source)!r} does not exist; give a run folder or a "
                             f".safetensors checkpoint")
        if not args.tolerance > 0:
            raise ValueError(f"--tolerance={args.tolerance!r} must be > 0")
        module = from_checkpoint(source, which=args.which)
        out = Path(args.out) if args.out else default_out(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        result = export_zoo_module(module, out, opset=args.opset, batch_size=args.batch_size,
                                   image_size=args.image_size, verify=not args.no_verify)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"convnn export: error: {err}", file=sys.stderr)
        return 2
    meta = result.metadata
    print(f"wrote {result.path}")
    print(f"  model: {meta['convnn.model']} ({meta['convnn.num_classes']} classes), opset {meta['convnn.opset']}")
    print(f"  input: {meta['convnn.input']}")
    print(f"  output: {meta['convnn.output']}")
    print(f"  fixed at export: {meta['convnn.fixed_at_export']}")
    if result.max_abs_diff is None:
        print("  onnxruntime check: skipped (--no-verify)")
        return 0
    ok = result.max_abs_diff <= args.tolerance
    print(f"  onnxruntime check: max |logit difference| from the torch model on {args.batch_size} random images "
          f"= {result.max_abs_diff:.3g} ({'within' if ok else 'ABOVE'} --tolerance {args.tolerance:g})")
    return 0 if ok else 1


def _run(argv: Any = None) -> int:  # pragma: no cover - convenience for `python -m convnn.models.export_cli`
    parser = argparse.ArgumentParser(prog="convnn")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_run())
