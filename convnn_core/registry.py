"""Backend registry: lazy loading by name, availability checks without imports, `auto` choice and `explain`."""
from __future__ import annotations

import glob
import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Optional


class BackendUnavailable(ImportError):
    """A backend was asked for by name but cannot run here (missing framework or not implemented)."""


@dataclass(frozen=True)
class BackendInfo:
    """What a backend needs: the module that implements it, the packages it imports, the install extra."""

    name: str
    module: str
    requires: tuple[str, ...]
    extra: Optional[str]
    summary: str


BACKENDS: dict[str, BackendInfo] = {
    "numpy": BackendInfo("numpy", "backends.numpy", ("numpy",), None,
                         "the spec on NumPy: the float64 oracle (forward only)"),
    "numba": BackendInfo("numba", "backends.numba", ("numba", "autograd", "threadpoolctl"), "numba",
                         "Numba-parallel CPU kernels with backward, training through HIPS autograd"),
    "torch": BackendInfo("torch", "backends.torch", ("torch",), "torch",
                         "PyTorch on CPU and CUDA, fused Triton kernel on CUDA, nn.Module drop-ins"),
    "jax": BackendInfo("jax", "backends.jax", ("jax", "optax"), "jax",
                       "pure jit-able JAX functions on CPU/GPU/TPU"),
}
AUTO_ORDER = ("torch", "numba", "numpy")


def _unknown(name: str) -> ValueError:
    return ValueError(f"backend={name!r} is unknown; choose one of {', '.join(BACKENDS)} or 'auto'")


def backend_status(name: str) -> tuple[bool, str]:
    """(can run, why not) for a backend, found without importing any framework."""
    if name not in BACKENDS:
        raise _unknown(name)
    info = BACKENDS[name]
    missing = [pkg for pkg in info.requires if importlib.util.find_spec(pkg) is None]
    if missing:
        extra = f"pip install 'convnn[{info.extra}]'" if info.extra else "pip install numpy"
        return False, f"missing {', '.join(missing)}; install with {extra}"
    try:
        spec = importlib.util.find_spec(info.module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        return False, f"not implemented in this version (no module {info.module})"
    return True, "installed"


def available_backends() -> list[str]:
    """Names of the backends whose frameworks are installed and which are implemented."""
    return [name for name in BACKENDS if backend_status(name)[0]]


def _cuda_available() -> tuple[bool, str]:
    ok, why = backend_status("torch")
    if not ok:
        return False, why
    if not glob.glob("/dev/nvidia[0-9]*") and not os.environ.get("CONVNN_PROBE_CUDA"):
        # no NVIDIA device node: skip importing torch just to learn that (set CONVNN_PROBE_CUDA=1 to force)
        return False, "installed, but this machine has no NVIDIA GPU (auto prefers torch only on a GPU)"
    import torch

    if torch.cuda.is_available():
        return True, f"CUDA device {torch.cuda.get_device_name(0)}"
    return False, "installed, but no CUDA GPU is visible (auto prefers torch only on a GPU)"


def resolve_auto() -> tuple[str, list[tuple[str, str]]]:
    """The backend 'auto' picks and, for each backend passed over, why."""
    passed: list[tuple[str, str]] = []
    cuda, why = _cuda_available()
    if cuda:
        return "torch", passed
    passed.append(("torch", why))
    for name in AUTO_ORDER[1:]:
        ok, why = backend_status(name)
        if ok:
            return name, passed
        passed.append((name, why))
    raise BackendUnavailable("no backend can run: " + "; ".join(f"{n}: {w}" for n, w in passed))


def get_backend(name: str = "auto", **options: Any) -> Any:
    """The backend object for `name` ('numpy', 'numba', 'torch', 'jax' or 'auto'), imported on first use.

    Raises BackendUnavailable naming the missing packages and the install extra; never falls back.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    if name == "auto":
        name, _ = resolve_auto()
    ok, why = backend_status(name)
    if not ok:
        raise BackendUnavailable(f"backend {name!r} cannot run: {why}")
    # load() runs on every call: it is cheap, and options with side effects (threads, x64) take effect each time
    return importlib.import_module(BACKENDS[name].module).load(**options)


def explain(op: str = "convnn2d", backend: str = "auto") -> str:
    """Which backend would run `op` and why each other backend was passed over (one line each)."""
    lines = []
    if backend == "auto":
        try:
            chosen, passed = resolve_auto()
        except BackendUnavailable as err:
            return f"{op}: nothing can run ({err})"
        lines.append(f"{op}: runs on {chosen!r} (auto order: torch with CUDA, then numba, then numpy)")
        for name, why in passed:
            lines.append(f"  passed over {name!r}: {why}")
        for name in BACKENDS:
            if name != chosen and name not in dict(passed):
                lines.append(f"  passed over {name!r}: lower in the auto order")
        return "\n".join(lines)
    ok, why = backend_status(backend)
    if ok:
        lines.append(f"{op}: runs on {backend!r} (asked for by name)")
    else:
        lines.append(f"{op}: {backend!r} cannot run: {why}")
    for name in BACKENDS:
        if name != backend:
            other_ok, other_why = backend_status(name)
            lines.append(f"  {name!r}: {'available, not asked for' if other_ok else other_why}")
    return "\n".join(lines)
