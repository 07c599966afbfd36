"""`convnn train` and `convnn eval`: the zoo's command line (registered into convnn.cli)."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

TRAIN_DESCRIPTION = """\
Train a zoo model. With no arguments: the 'demo' preset, a small branching VGG-11 (ConvNN beside
Conv2d, ratio 0.5, channels 8..64, light head) for 4 epochs on the embedded 3,000-image CIFAR-10
sample (2,700 train / 300 validation), a few minutes on a 2-core CPU. It prints a per-epoch table
and where the curves (PNG), metrics (CSV per epoch, JSONL per step), config and checkpoints are.

Settings resolve in this order (later wins): the preset, --config FILE.json, the named options
below, then --set KEY=VALUE. Model options go in model_options (--option KEY=VALUE, or --set
model_options.KEY=VALUE); `convnn train --list-models` shows every model and its options.
"""

TRAIN_EPILOG = """\
examples:
  convnn train                                            # the demo: minutes on a CPU
  convnn train --preset paper --model vgg11 --option layer=branching --option ratio=0.5 \\
      --dataset cifar10 --data-dir DIR --test              # the paper's VGG protocol (150 epochs)
  convnn train --model vit_tiny_cifar --option attention=convnn --option sampling=random \\
      --dataset cifar10 --data-dir DIR --subset 5000 --epochs 5 --lr 5e-4
  convnn train --resume runs/RUN                           # continue a run after a crash or Ctrl-C
  convnn train --backend torch --precision bf16 ...         # bfloat16 compute, float32 weights and checkpoints
  torchrun --nproc_per_node 2 -m convnn train --backend torch ...   # data-parallel, one process per device
  convnn train --backend jax --devices all ...             # jax: the batch sharded over every local device
Ctrl-C (SIGINT) or SIGTERM saves the last completed step and prints how to resume (exit 130 / 143). A run
folder is locked while a run uses it, and a new run refuses a folder that already holds files.
backend 'auto' (training) is the registry's one policy for purpose 'train': a backend that runs the
ConvNN ops forward only is passed over for models with ConvNN layers. `convnn explain --purpose train`
prints which backend it picks here and why each other one was passed over.
"""


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    from .train.config import parse_value

    return key.strip(), parse_value(value)


def _devices(text: str) -> Any:
    """--devices: a positive int or 'all'."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device count: give an int >= 1 or 'all'")
    return value


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a zoo model (no arguments: a small demo on the embedded CIFAR-10 sample)",
                       description=TRAIN_DESCRIPTION, epilog=TRAIN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("demo", "paper"), default="demo",
                   help="starting settings: 'demo' (default; small model, embedded sample, 4 epochs) or 'paper' "
                        "(SPEC.md section 7: AdamW lr 1e-4, weight decay 0.01, constant LR, clip 1.0, batch 256, "
                        "150 epochs, no augmentation, seed 42)")
    p.add_argument("--config", metavar="FILE.json", help="JSON object of training options (any field of --set)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", type=_key_value, default=[],
                   help="override one training option; VALUE is JSON when it parses (1e-3, true, null, [..]) else a "
                        "string; model options as model_options.KEY=VALUE; repeatable")
    p.add_argument("--option", "-o", dest="model_opts", metavar="KEY=VALUE", action="append", type=_key_value,
                   default=[], help="one model option, e.g. layer=branching, ratio=0.5, k=9, sampling=random, "
                                    "num_samples=64, attention=convnn, width=0.25, head=light; repeatable")
    p.add_argument("--model", help="zoo model: vgg11, vgg13, vgg16, vgg19, vit_tiny (224 px, patch 16), "
                                   "vit_tiny_cifar (32 px, patch 4)")
    p.add_argument("--backend", help="a registered backend (convnn info lists them) or auto (default auto, see below)")
    p.add_argument("--dataset", help="sample (the embedded 3,000 CIFAR-10 images), cifar10, cifar100, fashion_mnist")
    p.add_argument("--data-dir", help="folder holding the dataset (e.g. cifar-10-batches-py/ or the .tar.gz); "
                                      "default $CONVNN_DATA, then ~/.cache/convnn/data")
    p.add_argument("--download", action="store_true", default=None,
                   help="download the official archive (MD5-checked) when it is not found locally")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--eval-batch-size", type=int, help="batch size for validation and test (default: batch size)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, help="AdamW decoupled weight decay (applied to every parameter)")
    p.add_argument("--clip-grad-norm", type=float, help="clip the global gradient norm to this value")
    p.add_argument("--schedule", choices=("constant", "cosine"), help="learning-rate schedule (per step)")
    p.add_argument("--warmup-epochs", type=float, help="linear warmup length in epochs (0: none)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (padding 4) and horizontal flip on the training images")
    p.add_argument("--resize", type=int, help="resize images to this size (default: the model's image size, e.g. "
                                              "224 for vit_tiny)")
    p.add_argument("--subset", type=int, help="train on the first N images of the training split only")
    p.add_argument("--val-size", type=int, help="validation split = the last N training images (default 10%%)")
    p.add_argument("--val-subset", type=int, help="evaluate on the first N validation images only")
    p.add_argument("--test", action="store_true", default=None,
                   help="at the end, evaluate the best checkpoint on the official test split (reported separately; "
                        "an error if the test file is missing)")
    p.add_argument("--seed", type=int, help="run seed: set before the model is built; also drives data order, "
                                            "dropout and sampling")
    p.add_argument("--dtype", choices=("float32", "float64"), help="parameter and activation dtype")
    p.add_argument("--compile", choices=("auto", "on", "off"),
                   help="compile the step with backend.compile (auto: where the backend compiles by default, "
                        "capabilities.compile_by_default)")
    p.add_argument("--out-dir", help="parent folder of runs (default runs/)")
    p.add_argument("--run-name", help="run folder name (default MODEL-DATASET-TIMESTAMP); the folder must be new or "
                                      "empty (continue an existing run with --resume)")
    p.add_argument("--checkpoint-every", type=int, help="also save the 'last' checkpoint every N steps")
    p.add_argument("--precision", choices=("fp32", "bf16"),
                   help="fp32 (default), or bf16: bfloat16 compute with float32 master weights, optimizer state and "
                        "checkpoints (torch: autocast on CPU and CUDA; jax: bfloat16 matmuls/convolutions). Backends "
                        "torch and jax only")
    p.add_argument("--devices", type=_devices, metavar="N|all",
                   help="jax: split each batch over N local devices (or all of them), parameters replicated, "
                        "gradients averaged; the global batch stays --batch-size (BatchNorm normalises per device). "
                        "Default 1: extra devices are never used unasked. torch: launch one "
                        "process per device instead, e.g. torchrun --nproc_per_node 2 -m convnn train ... (gloo "
                        "on CPU, NCCL on CUDA; rank 0 writes the run folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the per-epoch table stays)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint with its "
                                                       "saved config (only --epochs, --test, --backend, --precision, "
                                                       "--devices and display options may change)")
    p.add_argument("--list-models", action="store_true", help="list the zoo's models and their options, then exit")
    p.set_defaults(func=cmd_train)


NAMED = ("model", "backend", "dataset", "data_dir", "download", "epochs", "batch_size", "eval_batch_size", "lr",
         "weight_decay", "clip_grad_norm", "schedule", "warmup_epochs", "augment", "resize", "subset", "val_size",
         "val_subset", "test", "seed", "dtype", "compile", "out_dir", "run_name", "checkpoint_every", "precision",
         "devices")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in NAMED:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    if args.no_progress:
        out["progress"] = False
    for key, value in args.model_opts:
        out[f"model_options.{key}"] = value
    for key, value in args.overrides:
        out[key] = value
    return out


def _list_models() -> str:
    from .registry import MODELS, model_defaults

    lines = []
    for name, (_, _, _, about) in MODELS.items():
        lines.append(f"{name}: {about}")
        opts = model_defaults(name)
        lines.append("  options: " + ", ".join(f"{k}={v!r}" for k, v in opts.items()))
    return "\n".join(lines)


def build_train_config(args: argparse.Namespace) -> tuple[Any, Optional[str]]:
    """The TrainConfig for parsed `train` arguments and the run folder to resume (or None)."""
    from .train.config import TrainConfig, apply_overrides, build_config

    overrides = _overrides(args)
    if args.resume:
        from .train.checkpoint import load_checkpoint
        from .train.loop import RESUME_MAY_CHANGE

        saved = load_checkpoint(args.resume).meta["train"]
        allowed = set(RESUME_MAY_CHANGE)
        changed = sorted(k for k, v in overrides.items() if k not in allowed and saved.get(k, object()) != v)
        if changed:
            raise ValueError(f"--resume continues the saved config; these options would change it: {changed}. "
                             f"Start a new run instead (or drop them)")
        return TrainConfig(**apply_overrides(saved, overrides)), args.resume
    return build_config(args.preset, args.config, overrides), None


# ----------------------------------------------------------------------------- errors: one line each
# The exceptions whose message already says what went wrong and what to do; anything else is reported with its
# type as unexpected. CONVNN_TRACEBACK=1 re-raises instead (the full traceback, for a bug report).
EXPLAINED = (ValueError, TypeError, ImportError, NotImplementedError, FloatingPointError)
OS_HINTS = {
    errno.ENOSPC: "no space left on the device: free some space",
    errno.EDQUOT: "disk quota exceeded: free some space",
    errno.EACCES: "permission denied: check its permissions or choose another path",
    errno.EPERM: "permission denied: check its permissions or choose another path",
    errno.EROFS: "read-only file system: use a writable folder",
    errno.EEXIST: "a file is in the way of a folder: choose another path",
    errno.ENOTDIR: "a file is in the way of a folder: choose another path",
    errno.EISDIR: "a folder is in the way of a file: choose another path",
    errno.ENOENT: "check the path",
    errno.EMFILE: "too many open files",
}


def _chain(err: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def describe_error(err: BaseException, command: str) -> tuple[str, int]:
    """(one line saying what went wrong and what to do, exit status) for an exception that ended `command`."""
    from .train.loop import TrainingInterrupted
    from .train.runfolder import RunFolderBusy

    chain = _chain(err)
    # a signal's exception may come wrapped (numba reports an exception raised inside a kernel call as SystemError)
    interrupted = next((e for e in chain if isinstance(e, TrainingInterrupted)), None)
    if interrupted is not None:
        return f"convnn {command}: {interrupted}", interrupted.exit_code
    if any(isinstance(e, KeyboardInterrupt) for e in chain):
        return f"convnn {command}: interrupted (SIGINT); nothing was saved by this command", 130
    if isinstance(err, MemoryError):
        what = "lower --batch-size" if command == "eval" else "lower --batch-size or --eval-batch-size (or --resize)"
        text = f"out of memory ({err or 'MemoryError'}); {what}, or use a smaller model"
    elif isinstance(err, OSError) and type(err).__module__ == "builtins" and err.errno is not None:
        # a raw OSError from the OS: name the file and the way out
        where = "" if err.filename is None else f": {err.filename}" + (
            "" if err.filename2 is None else f" -> {err.filename2}")
        hint = OS_HINTS.get(err.errno, err.strerror or str(err))
        text = f"{err.strerror or err}{where} ({hint})"
        run_dir = getattr(err, "run_dir", None)
        if command == "train" and run_dir is not None and (Path(run_dir) / "checkpoints" / "last.safetensors").exists():
            text += f"; once fixed, continue the run with: convnn train --resume {run_dir}"
    elif isinstance(err, (OSError, RunFolderBusy, *EXPLAINED)):
        text = str(err) or type(err).__name__
    else:
        text = (f"unexpected {type(err).__name__}: {err} (a bug in convnn or a backend: set CONVNN_TRACEBACK=1 for "
                f"the traceback and report it)")
    if isinstance(err, FloatingPointError) and "diverged" not in text:
        text = f"floating-point error: {text}"
    return f"convnn {command}: error: {' '.join(text.split())}", 2


def _tracebacks_wanted() -> bool:
    """CONVNN_TRACEBACK=1 (or CONVNN_DEBUG=1): re-raise for the full traceback instead of one line."""
    return any(os.environ.get(var, "").strip() not in ("", "0") for var in ("CONVNN_TRACEBACK", "CONVNN_DEBUG"))


def _fail(err: BaseException, command: str) -> int:
    if _tracebacks_wanted():
        raise err
    line, code = describe_error(err, command)
    print(line, file=sys.stderr)
    return code


def cmd_train(args: argparse.Namespace) -> int:
    if args.list_models:
        print(_list_models())
        return 0
    try:
        from .train import Trainer

        cfg, resume = build_train_config(args)
        Trainer(cfg, resume=resume).run()
    except (Exception, KeyboardInterrupt) as err:
        return _fail(err, "train")
    return 0


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on any backend (top-1/top-5, per-sample)",
                       description="Evaluate a checkpoint written by `convnn train` (a .safetensors file or a run "
                                   "folder, which means its checkpoints/best.safetensors). The model and the data "
                                   "split are rebuilt from the checkpoint's config; the backend may differ from the "
                                   "one that trained it.")
    p.add_argument("checkpoint", help="a .safetensors checkpoint, or a run folder")
    p.add_argument("--backend", default="auto",
                   help="a registered backend (convnn info lists them) or auto (default: the training policy)")
    p.add_argument("--split", choices=("val", "test", "train"), default="val",
                   help="val: the run's validation split (default); test: the official test split (an error if "
                        "missing); train: the run's training images")
    p.add_argument("--dataset", help="evaluate on another dataset than the run's (same classes and image size)")
    p.add_argument("--data-dir", help="folder holding the dataset (default: the run's)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the run's)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="compute dtype (default: the checkpoint's). float64 makes backends agree to rounding: in "
                        "float32, ConvNN's top-k can break near-ties between neighbours differently per backend")
    p.add_argument("--output", metavar="FILE.json", help="also write the metrics as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def run_eval(checkpoint: str, backend_name: str = "auto", split: str = "val", dataset: Optional[str] = None,
             data_dir: Optional[str] = None, batch_size: Optional[int] = None, progress: bool = False,
             dtype: Optional[str] = None) -> dict[str, Any]:
    """Metrics of a checkpoint on one split, computed on the chosen backend."""
    import numpy as np

    from .data import default_val_size, load_dataset, split_validation
    from .registry import create_model
    from .train.checkpoint import load_checkpoint
    from .train.evaluate import evaluate
    from .train.backend_choice import resolve_training_backend
    from .train.loop import restore_tree

    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1 (--batch-size; omit it to use the run's "
                         f"batch size)")
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoints" / "best.safetensors"
    ckpt = load_checkpoint(path)
    train_cfg, model_cfg = ckpt.meta["train"], ckpt.meta["model"]
    options = dict(model_cfg["options"])
    if dtype is not None:
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype={dtype!r} is not allowed; choose float32 or float64")
        options["dtype"] = dtype
    backend, _ = resolve_training_backend(backend_name, model_cfg["name"], options,
                                          dtype=options.get("dtype", "float32"), train=False)
    model = create_model(model_cfg["name"], backend=backend, num_classes=model_cfg["num_classes"], **options)
    params = restore_tree(ckpt.groups["params"], model.param_specs(), backend, model.dtype, "params")
    state = restore_tree(ckpt.groups["state"], model.state_specs(), backend, model.dtype, "state")
    name = dataset or train_cfg["dataset"]
    where = data_dir if data_dir is not None else train_cfg.get("data_dir")
    if split == "test":
        ds = load_dataset(name, "test", where)
    else:
        full = load_dataset(name, "train", where)
        val_size = train_cfg.get("val_size") or default_val_size(len(full))
        train, val = split_validation(full, val_size)
        if split == "val":
            ds = val if train_cfg.get("val_subset") is None else val.take(np.arange(min(train_cfg["val_subset"],
                                                                                        len(val))))
        else:
            ds = train if train_cfg.get("subset") is None else train.take(np.arange(min(train_cfg["subset"],
                                                                                        len(train))))
    if ds.num_classes != model.num_classes:
        raise ValueError(f"dataset {name!r} has {ds.num_classes} classes but the checkpoint's model has "
                         f"{model.num_classes}")
    batch_size = train_cfg["batch_size"] if batch_size is None else batch_size
    metrics = evaluate(model, params, state, ds, batch_size=batch_size,
                       resize=ckpt.meta.get("resize"), progress=progress, desc=split)
    return {**metrics, "split": split, "dataset": name, "backend": backend.name, "checkpoint": str(path),
            "epoch": ckpt.meta.get("epoch"), "model": model_cfg, "dtype": model.dtype}


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        output = Path(args.output) if args.output else None
        if output is not None:  # before minutes of evaluation, not after
            _check_output(output)
        result = run_eval(args.checkpoint, args.backend, args.split, args.dataset, args.data_dir, args.batch_size,
                          progress=not args.no_progress, dtype=args.dtype)
        print(f"{result['checkpoint']} on {result['backend']} ({result['dtype']}): "
              f"{result['dataset']} {result['split']} "
              f"({result['n']} images): loss {result['loss']:.4f}, top-1 {100 * result['top1']:.2f}%, "
              f"top-5 {100 * result['top5']:.2f}%")
        if output is not None:
            from .train.checkpoint import atomic_write_text

            try:
                atomic_write_text(output, json.dumps(result, indent=2) + "\n")
            except OSError as err:
                raise OutputError(err.errno, f"cannot write --output {output} ({err.strerror or err})") from err
    except (Exception, KeyboardInterrupt) as err:
        return _fail(err, "eval")
    return 0


class OutputError(OSError):
    """--output cannot be written (the message says why)."""

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


def _check_output(output: Path) -> None:
    """--output must name a file in a folder that exists or can be made (raises OutputError saying why not)."""
    from .train.runfolder import blocking_file

    if output.is_dir():
        raise OutputError(errno.EISDIR, f"cannot write --output {output}: it is a folder; give a file name")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why = OS_HINTS.get(err.errno, err.strerror or str(err)) if err.errno is not None else str(err)
        where = blocking_file(output.parent) or err.filename or output.parent
        raise OutputError(err.errno, f"cannot write --output {output} ({why}: {where})") from err
    if not os.access(output.parent, os.W_OK):
        raise OutputError(errno.EACCES, f"cannot write --output {output} (permission denied: {output.parent})")


def register(subparsers: Any) -> None:
    """Add `train` and `eval` to the `convnn` command."""
    _add_train(subparsers)
    _add_eval(subparsers)
