"""Backend registry: plugins found through entry points, availability, the one `auto` policy, `explain`.

A backend registers a `BackendPlugin` under the entry-point group `convnn.backends`; reading the
plugin imports no framework. `get_backend(name)` loads it; `auto` is decided in `resolve_auto`
alone, for a purpose ('op' or 'train') and whether the model has ConvNN layers.

Availability has two depths. `backend_status(name)` (and `available_backends()`) only looks the
required packages up (no import): "installed". `backend_status(name, probe=True)` also imports them,
so a framework that is installed but broken (a failing shared library, a version clash) is reported
as "installed but fails to import: ...". `resolve_auto` (so `get_backend('auto')` and the trainer),
`convnn explain` and `convnn info` probe: auto passes over a broken backend and says why (in the
choice's `passed_over`, in `explain`, and as a RuntimeWarning from `get_backend('auto')`); it never
picks a backend it has not seen import. `import convnn` imports no framework, and neither does
`explain()` by default (probe=False): its answer then says it comes from the installed packages
alone; `explain(probe=True)`, `convnn explain` and `convnn info` import what they name.
"""
from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from . import speed_figures
from .kernels import PathChoice, PathRequest

ENTRY_POINT_GROUP = "convnn.backends"


class BackendUnavailable(ImportError):
    """A backend was asked for by name but cannot run here (missing framework, device or broken install)."""


@dataclass(frozen=True)
class BackendPlugin:
    """What the registry knows of a backend before importing it.

    requires: import names the backend needs; extra: the pip extra that installs them; devices:
    'cpu' and/or 'cuda'; trains_convnn: whether it differentiates the ConvNN ops; loader: a
    zero-import callable `load(**options) -> backend object`; describe_path(request) -> PathChoice
    says which path an op takes without importing the framework; options: the keyword options
    `load` accepts; dtype_options: extra load options a dtype needs (jax: float64 needs x64=True);
    auto: whether the `auto` policy may pick it (onnx: no, it is a forward-only export check).
    """

    name: str
    requires: tuple[str, ...]
    extra: Optional[str]
    summary: str
    loader: Callable[..., Any]
    devices: tuple[str, ...] = ("cpu",)
    trains_convnn: bool = True
    describe_path: Optional[Callable[[PathRequest], PathChoice]] = field(default=None, compare=False)
    options: tuple[str, ...] = ()
    dtype_options: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    auto: bool = True  # False: `auto` never picks it (it runs only when asked for by name)

    def load(self, **options: Any) -> Any:
        """The backend object (imports the framework)."""
        return self.loader(**options)


# ----------------------------------------------------------------------------- the one auto policy
# Which installed backend `auto` takes, by purpose, on a machine without a CUDA GPU: the ranking of the shipped
# benchmark figures (convnn/cpu_figures.json, written with the README's tables by `convnn bench readme`).
# Without shipped figures this static order decides.
STATIC_CPU_POLICY: dict[str, tuple[tuple[str, ...], str]] = {
    "op": (("numba", "torch", "jax", "numpy"), "static order (no shipped benchmark figures)"),
    "train": (("torch", "jax", "numba", "numpy"), "static order (no shipped benchmark figures)"),
}
_FIGURES = speed_figures.load() or {}
# purpose -> (backend order, the figure that decided it); 'train' ranks by the ConvNN models' figure.
CPU_POLICY: dict[str, tuple[tuple[str, ...], str]] = {
    purpose: speed_figures.policy(purpose, fallback, _FIGURES) for purpose, fallback in STATIC_CPU_POLICY.items()}
# Training a model without ConvNN layers ranks by the plain models' figure (None: as CPU_POLICY['train']).
PLAIN_TRAIN_POLICY: Optional[tuple[tuple[str, ...], str]] = (
    speed_figures.policy("train_plain", STATIC_CPU_POLICY["train"], _FIGURES)
    if _FIGURES.get("train_plain", {}).get("values") else None)
GPU_POLICY = (("torch", "jax"), "a CUDA GPU is visible: torch runs the fused Triton kernels there")
PURPOSES = tuple(CPU_POLICY)


def _discover() -> dict[str, BackendPlugin]:
    from importlib.metadata import entry_points

    found: dict[str, BackendPlugin] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        plugin = ep.load()
        if not isinstance(plugin, BackendPlugin):
            raise TypeError(f"entry point {ep.name!r} in group {ENTRY_POINT_GROUP!r} gives "
                            f"{type(plugin).__name__}, not a convnn BackendPlugin")
        found[plugin.name] = plugin
    return found


class _Plugins(Mapping):
    """name -> BackendPlugin for every registered backend, read from entry points on first use."""

    def __init__(self) -> None:
        self._cache: Optional[dict[str, BackendPlugin]] = None

    def _all(self) -> dict[str, BackendPlugin]:
        if self._cache is None:
            self._cache = _discover()
        return self._cache

    def __getitem__(self, name: str) -> BackendPlugin:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        order = CPU_POLICY["op"][0]
        names = list(self._all())
        return iter(sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n)))

    def __len__(self) -> int:
        return len(self._all())

    def refresh(self) -> None:
        """Read the entry points again (after installing a backend in this process)."""
        self._cache = None


BACKENDS = _Plugins()


def _unknown(name: str) -> ValueError:
    return ValueError(f"backend={name!r} is unknown; choose one of {', '.join(BACKENDS)} or 'auto'")


BROKEN = "installed but fails to import"
UNPROBED = ("availability: from the installed packages, not imported (explain(..., probe=True) or `convnn explain` "
            "also checks that they import)")


def _install_hint(plugin: BackendPlugin, packages: list[str], reinstall: bool = False) -> str:
    flag = "--force-reinstall " if reinstall else ""
    return f"pip install {flag}'convnn[{plugin.extra}]'" if plugin.extra else f"pip install {flag}{' '.join(packages)}"


def import_failure(plugin: BackendPlugin) -> Optional[str]:
    """Why importing the plugin's required modules fails ('installed but fails to import: ...'), or None.

    Imports them in this process (importlib.import_module); only ImportError and OSError (a shared library
    that does not load) count as a broken install, anything else propagates.
    """
    for pkg in plugin.requires:
        try:
            importlib.import_module(pkg)
        except (ImportError, OSError) as err:
            return (f"{BROKEN}: {pkg}: {type(err).__name__}: {err}; repair it with "
                    f"{_install_hint(plugin, [pkg], reinstall=True)}")
    return None


def backend_status(name: str, probe: bool = False) -> tuple[bool, str]:
    """(can run, why not) for a backend.

    Without probe the required packages are only looked up (no framework is imported): True means
    "installed". With probe=True they are also imported, so an installed but broken framework is
    (False, "installed but fails to import: ...").
    """
    if name not in BACKENDS:
        raise _unknown(name)
    plugin = BACKENDS[name]
    missing = [pkg for pkg in plugin.requires if importlib.util.find_spec(pkg) is None]
    if missing:
        return False, f"missing {', '.join(missing)}; install with {_install_hint(plugin, missing)}"
    if probe:
        broken = import_failure(plugin)
        if broken is not None:
            return False, broken
        return True, "installed, imports"
    return True, "installed"


def available_backends(probe: bool = False) -> list[str]:
    """Names of the backends whose frameworks are installed (probe=True: and import)."""
    return [name for name in BACKENDS if backend_status(name, probe)[0]]


def cuda_visible() -> tuple[bool, str]:
    """Whether a CUDA GPU is usable by torch, found without importing torch when there is no NVIDIA device node."""
    if "torch" not in BACKENDS:
        return False, "no backend with CUDA support is registered"
    ok, why = backend_status("torch")
    if not ok:
        return False, why
    if not glob.glob("/dev/nvidia[0-9]*") and not os.environ.get("CONVNN_PROBE_CUDA"):
        return False, "this machine has no NVIDIA GPU"
    ok, why = backend_status("torch", probe=True)
    if not ok:
        return False, why
    import torch

    if torch.cuda.is_available():
        return True, f"CUDA device {torch.cuda.get_device_name(0)}"
    return False, "no CUDA GPU is visible to torch"


@dataclass(frozen=True)
class AutoChoice:
    """What `auto` picked, on which device, the policy line that decided it, and why each other backend lost."""

    name: str
    device: str
    reason: str
    passed_over: tuple[tuple[str, str], ...]


def resolve_auto(purpose: str = "op", *, uses_convnn: bool = True, probe: bool = True) -> AutoChoice:
    """The one `auto` policy: torch (then jax) on a visible CUDA GPU, else the CPU order of CPU_POLICY[purpose]:
    the shipped benchmark's ranking (convnn/cpu_figures.json; training a model without ConvNN layers ranks by
    PLAIN_TRAIN_POLICY), or the static order when no figures ship.

    For purpose='train' with ConvNN layers a backend that runs them forward only is passed over. With
    probe (the default) each backend is imported before it is chosen: one installed but broken is passed
    over with the reason ('installed but fails to import: ...') in passed_over, never chosen; backends after
    the chosen one are not imported. probe=False decides from the installed packages alone.
    """
    if purpose not in CPU_POLICY:
        raise ValueError(f"purpose={purpose!r} is not allowed; choose one of {', '.join(PURPOSES)}")
    passed: list[tuple[str, str]] = []
    cuda, cuda_why = cuda_visible()
    if cuda:
        order, reason, device = GPU_POLICY[0], GPU_POLICY[1], "cuda"
        order = order + tuple(n for n in CPU_POLICY[purpose][0] if n not in order)
    else:
        order, reason = CPU_POLICY[purpose]
        if purpose == "train" and not uses_convnn and PLAIN_TRAIN_POLICY is not None:
            order, reason = PLAIN_TRAIN_POLICY
        device = "cpu"
        reason = f"no CUDA GPU ({cuda_why}); {reason}"
    chosen: Optional[str] = None
    for name in list(order) + [n for n in BACKENDS if n not in order]:
        if name not in BACKENDS:
            continue
        if chosen is not None:
            passed.append((name, "lower in the auto order"))
            continue
        plugin = BACKENDS[name]
        if not plugin.auto:
            passed.append((name, "never chosen by auto (ask for it by name)"))
            continue
        ok, why = backend_status(name, probe)
        if ok and device not in plugin.devices:
            ok, why = False, f"does not run on {device}"
        if ok and purpose == "train" and uses_convnn and not plugin.trains_convnn:
            ok, why = False, "runs the ConvNN ops forward only (cannot train ConvNN layers)"
        if ok:
            chosen = name
        else:
            passed.append((name, why))
    if chosen is None:
        raise BackendUnavailable("no backend can run: " + "; ".join(f"{n}: {w}" for n, w in passed))
    if device == "cuda" and "cuda" not in BACKENDS[chosen].devices:
        device = "cpu"
    return AutoChoice(chosen, device, reason, tuple(passed))


def get_backend(name: str = "auto", **options: Any) -> Any:
    """The backend object for `name` (a registered backend or 'auto'), imported on first use.

    Raises BackendUnavailable naming the missing packages and the install extra, or the import error of a
    broken install; never falls back to another backend.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    if name == "auto":
        choice = resolve_auto("op")
        name = choice.name
        broken = [f"{n} ({w})" for n, w in choice.passed_over if w.startswith(BROKEN)]
        if broken:
            warnings.warn(f"convnn: backend 'auto' picked {name!r}, passing over the broken backend(s) "
                          f"{'; '.join(broken)}", RuntimeWarning, stacklevel=2)
        if choice.device == "cuda" and "device" not in options:
            options = {**options, "device": "cuda"}
    ok, why = backend_status(name)
    if not ok:
        raise BackendUnavailable(f"backend {name!r} cannot run: {why}")
    try:
        return BACKENDS[name].load(**options)
    except ImportError as err:
        if isinstance(err, BackendUnavailable):
            raise
        raise BackendUnavailable(f"backend {name!r} is installed but fails to import: "
                                 f"{type(err).__name__}: {err}") from err


def explain(op: str = "convnn2d", config: Any = None, backend: str = "auto", *, purpose: str = "op",
            dtype: str = "float32", device: Optional[str] = None, probe: bool = False) -> str:
    """Which backend and which path would run `op` for `config`, and why each alternative was passed over.

    probe=False (the default) imports no framework: the answer comes from the installed packages alone and
    says so (a framework that is installed but broken is not seen). probe=True imports the backends it
    weighs (see resolve_auto), so it names the backend `get_backend` would load, and a broken one as broken.
    """
    lines = []
    if backend == "auto":
        try:
            choice = resolve_auto(purpose, probe=probe)
        except BackendUnavailable as err:
            return f"{op}: nothing can run ({err})"
        name, dev = choice.name, device or choice.device
        lines.append(f"{op}: runs on {name!r} ({dev}); auto policy for {purpose!r}: {choice.reason}")
        passed = list(choice.passed_over)
        if not probe:
            lines.append(f"  {UNPROBED}")
    else:
        if backend not in BACKENDS:
            raise _unknown(backend)
        ok, why = backend_status(backend, probe)
        if not ok:
            return f"{op}: {backend!r} cannot run: {why}"
        name, dev = backend, device or "cpu"
        lines.append(f"{op}: runs on {name!r} ({dev}); asked for by name")
        if not probe:
            lines.append(f"  {UNPROBED}")
        passed = [(n, "installed, not asked for" if backend_status(n)[0] else backend_status(n)[1])
                  for n in BACKENDS if n != backend]
    plugin = BACKENDS[name]
    if plugin.describe_path is not None and config is not None:
        path = plugin.describe_path(PathRequest(op, config, dtype, dev))
        lines.append(f"  path: {path.path}")
        for other, why in path.passed_over:
            lines.append(f"  path passed over {other}: {why}")
    for other, why in passed:
        lines.append(f"  backend passed over {other!r}: {why}")
    return "\n".join(lines)
