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
PACKAGES = ("numpy", "array-api-compat", "torch", "jax", "jaxlib", "numba", "autograd", "optax", "triton", "onnx",
            "onnxscript", "onnxruntime", "flax", "ray")
# the pip extra that installs a package `convnn info` lists (triton comes with CUDA builds of torch)
EXTRA_OF = {"torch": "torch", "jax": "jax", "jaxlib": "jax", "optax": "jax", "numba": "numba", "autograd": "numba",
            "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "flax": "flax", "ray": "ray"}


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
        version = _version(pkg)
        extra = EXTRA_OF.get(pkg)
        missing = "not installed" + (f" (pip install 'convnn[{extra}]')" if extra else "")
        lines.append(f"  {pkg:<17} {version or missing}")
    lines.append("backends:")
    for name, plugin in BACKENDS.items():
        ok, why = backend_status(name, probe=True)  # imported here: an installed but broken framework says so
        state = "available" if ok else f"NOT available: {why}"
        lines.append(f"  {name:<6} {state}")
        trains = "trains ConvNN layers" if plugin.trains_convnn else "ConvNN ops forward only"
        lines.append(f"         {plugin.summary}")
        lines.append(f"         devices: {', '.join(plugin.devices)}; {trains}")
    lines.append("devices:")
    lines.extend("  " + d for d in _devices())
    cfg = ConvNNConfig()
    lines.append("dispatch:")
    lines.extend("  " + line for line in explain("convnn2d", cfg, probe=True).splitlines())
    lines.extend("  " + line for line in explain("convnn2d", cfg, purpose="train", probe=True).splitlines())
    return "\n".join(lines)


def _devices() -> list[str]:
    """The CPU, and whether a CUDA GPU is visible (the registry's probe, which imports nothing without one)."""
    import os

    from .registry import BACKENDS, cuda_visible

    from .thread_policy import describe

    out = [f"cpu: {os.cpu_count()} cores; thread pools: {describe()}"]
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
    return explain(args.op, cfg, args.backend, purpose=args.purpose, dtype=args.dtype, device=args.device,
                   probe=True)


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


class CommandParser(argparse.ArgumentParser):
    """argparse with a one-line error: `convnn <command>: error: <message>; see convnn <command> --help` (exit 2).

    Subcommand parsers are of the same class (argparse makes them so), so every level answers alike.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: info, explain, and every command registered under `convnn.commands`.

    A command whose package fails to import is named on stderr (with the error) and left out; the others work.
    """
    parser = CommandParser(
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


# ----------------------------------------------------------------------------- the backstop
TRACEBACK_ENV = ("CONVNN_TRACEBACK", "CONVNN_DEBUG")  # set either to 1 for the full traceback instead of one line
# What a user can cause and fix (a bad value, a missing file or package, a backend that cannot run here):
# one line naming it, exit 2. BackendUnavailable is an ImportError.
EXPECTED_ERRORS = (ValueError, TypeError, OSError, ImportError, NotImplementedError)
EXIT_ERROR, EXIT_INTERRUPTED = 2, 130


def tracebacks_wanted() -> bool:
    """Whether CONVNN_TRACEBACK=1 (or CONVNN_DEBUG=1) asks for full tracebacks."""
    import os

    return any(os.environ.get(var, "").strip() not in ("", "0") for var in TRACEBACK_ENV)


def command_name(args: argparse.Namespace) -> str:
    """'convnn bench layer' for parsed arguments: the command and any subcommand (a `*_command` field)."""
    parts = ["convnn"]
    if isinstance(getattr(args, "command", None), str):
        parts.append(args.command)
    parts += [v for k, v in sorted(vars(args).items()) if k.endswith("_command") and isinstance(v, str)]
    return " ".join(parts)


def error_line(err: BaseException) -> str:
    """One line for an error: its message (with the type where the message alone would not say it) and, where
    one exists, what to do."""
    from .registry import BackendUnavailable

    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (ValueError, TypeError, BackendUnavailable)):
        return text
    if isinstance(err, ModuleNotFoundError) and err.name:
        return f"{type(err).__name__}: {text}; install it (`convnn info` lists what each backend needs)"
    if isinstance(err, MemoryError):
        return f"out of memory ({type(err).__name__}: {text}); use smaller sizes (batch, shapes)"
    if isinstance(err, EXPECTED_ERRORS):
        return f"{type(err).__name__}: {text}"
    return (f"unexpected {type(err).__name__}: {text} (a bug in convnn or a backend: set "
            f"{TRACEBACK_ENV[0]}=1 for the traceback and report it)")


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """func(args), with every error ending as `convnn <command>: error: <one line>` on stderr.

    Exit 2 (as the train / eval commands): expected errors (EXPECTED_ERRORS, MemoryError) with their message,
    anything else as 'unexpected <type>' with how to get the traceback; KeyboardInterrupt 130.
    CONVNN_TRACEBACK=1 (or CONVNN_DEBUG=1) re-raises instead, for the full traceback.
    """
    name = command_name(args)
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        if tracebacks_wanted():
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # the backstop: each command converts what it can; nothing leaves as a traceback
        if tracebacks_wanted():
            raise
        print(f"{name}: error: {error_line(err)}", file=sys.stderr)
        return EXIT_ERROR


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `convnn` console script.

    Exit status: what the command returns (0 success); 2 for bad arguments and for any error the command
    raises (one line on stderr, `convnn <command>: error: ...`; an unexpected one says how to get the
    traceback); 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        print("convnn: error: give a command (e.g. convnn info); see convnn --help", file=sys.stderr)
        return EXIT_ERROR
    return run_command(func, args)


if __name__ == "__main__":
    sys.exit(main())
