"""The `convnn` command: `info` here; `conformance`, `bench`, `train` and `eval` from their packages when present."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform
import sys
from typing import Callable, Optional, Sequence

# subcommand -> module with register(subparsers); listed only when that module is installed
PLUGINS = (
    ("train", "models.cli"),
    ("eval", "models.cli"),
    ("conformance", "conformance.cli"),
    ("bench", "bench.cli"),
)


def _version(pkg: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def info_text() -> str:
    """What `convnn info` prints: versions, backends (available or why not, with the install hint), devices."""
    from .registry import BACKENDS, backend_status, explain

    from . import __version__

    lines = [f"convnn {__version__} on Python {platform.python_version()} ({platform.machine()}, {platform.system()})"]
    lines.append("packages:")
    for pkg in ("numpy", "array-api-compat", "torch", "jax", "jaxlib", "numba", "autograd", "optax", "triton"):
        lines.append(f"  {pkg:<17} {_version(pkg) or 'not installed'}")
    lines.append("backends:")
    for name, binfo in BACKENDS.items():
        ok, why = backend_status(name)
        state = "available" if ok else f"NOT available: {why}"
        lines.append(f"  {name:<6} {state}")
        lines.append(f"         {binfo.summary}")
    lines.append("devices:")
    lines.extend("  " + d for d in _devices())
    lines.append("dispatch:")
    lines.extend("  " + line for line in explain().splitlines())
    return "\n".join(lines)


def _devices() -> list[str]:
    import os

    out = [f"cpu: {os.cpu_count()} cores"]
    from .registry import backend_status

    if backend_status("torch")[0]:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                out.append(f"cuda:{i}: {torch.cuda.get_device_name(i)}")
        else:
            out.append("cuda: none visible to torch")
    if backend_status("jax")[0]:
        try:
            import jax

            out.append("jax: " + ", ".join(str(d) for d in jax.devices()))
        except Exception as err:  # a broken jax install is reported, not fatal for `info`
            out.append(f"jax: unusable ({err})")
    return out


def _cmd_info(args: argparse.Namespace) -> int:
    print(info_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand whose package is installed."""
    parser = argparse.ArgumentParser(
        prog="convnn",
        description="Convolutional Nearest Neighbors on numpy, numba, torch and jax.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="backends, versions, devices, and what is missing with how to install it")
    info.set_defaults(func=_cmd_info)
    registered: set[str] = set()
    for _name, module in PLUGINS:
        if module in registered:
            continue
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            continue
        importlib.import_module(module).register(sub)
        registered.add(module)
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
