"""The `convnn` command: `info` and `explain` here; other commands (train/eval, conformance, bench) from the
entry-point group `convnn.commands`, each a `register(subparsers)` function."""
from __future__ import annotations

import argparse
import platform
import sys
from typing import Any, Callable, Optional, Sequence

COMMANDS_GROUP = "convnn.commands"
OPS = ("convnn2d", "convnn1d", "convnn_attention", "select_neighbors")
DTYPES = ("float32", "float64", "bfloat16", "float16")
PACKAGES = ("numpy", "array-api-compat", "torch", "jax", "jaxlib", "numba", "autograd", "optax", "triton")


def _version(pkg: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def info_text() -> str:
    """What `convnn info` prints: versions, the registered backends (available or why not), devices, dispatch."""
    from . import __version__
    from .config import ConvNNConfig
    from .registry import BACKENDS, backend_status, explain

    lines = [f"convnn {__version__} on Python {platform.python_version()} ({platform.machine()}, {platform.system()})"]
    lines.append("packages:")
    for pkg in PACKAGES:
        lines.append(f"  {pkg:<17} {_version(pkg) or 'not installed'}")
    lines.append("backends:")
    for name, plugin in BACKENDS.items():
        ok, why = backend_status(name)
        state = "available" if ok else f"NOT available: {why}"
        lines.append(f"  {name:<6} {state}")
        trains = "trains ConvNN layers" if plugin.trains_convnn else "ConvNN ops forward only"
        lines.append(f"         {plugin.summary}")
        lines.append(f"         devices: {', '.join(plugin.devices)}; {trains}")
    lines.append("devices:")
    lines.extend("  " + d for d in _devices())
    cfg = ConvNNConfig()
    lines.append("dispatch:")
    lines.extend("  " + line for line in explain("convnn2d", cfg).splitlines())
    lines.extend("  " + line for line in explain("convnn2d", cfg, purpose="train").splitlines())
    return "\n".join(lines)


def _devices() -> list[str]:
    """The CPU, and whether a CUDA GPU is visible (the registry's probe, which imports nothing without one)."""
    import os

    from .registry import BACKENDS, cuda_visible

    out = [f"cpu: {os.cpu_count()} cores"]
    cuda, why = cuda_visible()
    on_cuda = [n for n, p in BACKENDS.items() if "cuda" in p.devices]
    out.append(f"cuda: {why}" + (f" (backends that run there: {', '.join(on_cuda)})" if cuda and on_cuda else ""))
    return out


def _cmd_info(args: argparse.Namespace) -> int:
    print(info_text())
    return 0


# ----------------------------------------------------------------------------- explain
def _add_explain(sub: Any) -> None:
    from .config import METRICS, ORDERS, SAMPLINGS, SELECT_MODES, WEIGHTINGS
    from .registry import PURPOSES

    p = sub.add_parser("explain", help="which backend and which path an op would take, and why the others not",
                       description="Print registry.explain(op, ConvNNConfig(...)): the backend ('auto' picks it "
                                   "by the one policy for --purpose), the path it takes for this config, dtype and "
                                   "device, and why every other backend and path was passed over.")
    p.add_argument("--op", choices=OPS, default="convnn2d", help="the ConvNN op (default convnn2d)")
    p.add_argument("--purpose", choices=PURPOSES, default="op",
                   help="op: run the op; train: train a model with ConvNN layers (default op)")
    p.add_argument("--backend", default="auto", help="a registered backend, or auto (default)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (default float32)")
    p.add_argument("--device", default=None, help="the device to explain for (default: the one auto picks, or cpu)")
    p.add_argument("--k", type=int, default=None, help="neighbours K")
    p.add_argument("--select", choices=SELECT_MODES, default=None, help="what selects the neighbours")
    p.add_argument("--metric", choices=METRICS, default=None, help="the affinity metric")
    p.add_argument("--sampling", choices=SAMPLINGS, default=None, help="candidate sampling")
    p.add_argument("--num-samples", type=int, default=None, help="candidates for random / spatial sampling")
    p.add_argument("--weighting", choices=WEIGHTINGS, default=None, help="how neighbours are weighted")
    p.add_argument("--order", choices=ORDERS, default=None, help="slot order of the neighbours")
    p.set_defaults(func=_cmd_explain)


CONFIG_FIELDS = ("k", "select", "metric", "sampling", "num_samples", "weighting", "order")


def explain_text(args: argparse.Namespace) -> str:
    """What `convnn explain` prints for parsed arguments."""
    from .config import ConvNNConfig
    from .registry import explain

    fields = {f: getattr(args, f) for f in CONFIG_FIELDS if getattr(args, f) is not None}
    cfg = ConvNNConfig(**fields)
    return explain(args.op, cfg, args.backend, purpose=args.purpose, dtype=args.dtype, device=args.device)


def _cmd_explain(args: argparse.Namespace) -> int:
    try:
        print(explain_text(args))
    except (TypeError, ValueError) as err:
        print(f"convnn explain: error: {err}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------- the parser
def command_plugins() -> list[Any]:
    """The entry points of the group `convnn.commands` (each value a `register(subparsers)` function)."""
    from importlib.metadata import entry_points

    return sorted(entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: info, explain, and every command registered under `convnn.commands`.

    A command whose package fails to import is named on stderr (with the error) and left out; the others work.
    """
    parser = argparse.ArgumentParser(
        prog="convnn",
        description="Convolutional Nearest Neighbors on every registered backend (`convnn info` lists them).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="backends, versions, devices, and what is missing with how to install it")
    info.set_defaults(func=_cmd_info)
    _add_explain(sub)
    for ep in command_plugins():
        try:
            register = ep.load()
        except ImportError as err:
            print(f"convnn: command plugin {ep.name!r} ({ep.value}) cannot be imported: {type(err).__name__}: "
                  f"{err}", file=sys.stderr)
            continue
        register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `convnn` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
