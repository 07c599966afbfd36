"""Run the suite: load the requested backends, plan the cases per level and dtype, collect one result per cell."""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

from convnn.kernels import Capabilities
from convnn.registry import BACKENDS, BackendUnavailable, backend_status, get_backend
from convnn.vocabulary import missing_ops

from . import cases as case_mod
from .dtypes import ALL_DTYPES, DEFAULT_DTYPES, backend_dtypes
from .levels import OracleCache, check_forward, check_gradients, check_identity
from .results import NOT_AVAILABLE, PASS, CheckResult
from .tolerances import table_rows

SHORT: dict[int, str] = {1: "op forward", 2: "op gradients", 3: "identities", 4: "model forward",
                         5: "training step", 6: "training curve"}
LEVELS: dict[int, str] = {
    1: "op forward (convnn2d, convnn1d, convnn_attention, select_neighbors; indices exact; tie rule)",
    2: "op gradients (x, weight, bias, attention projections and taps) vs torch autograd of the spec",
    3: "identities of SPEC.md section 6 vs a direct reference and the backend's own conv2d / attention",
    4: "model forward with shared parameters (VGG, ViT from the zoo)",
    5: "one training step (loss, gradient, clipping, AdamW)",
    6: "short training curve on the embedded CIFAR-10 sample",
}
ALL_LEVELS = tuple(LEVELS)


# Why a backend entry cannot run: its framework is not installed, it is installed but fails to import or load
# (a broken install, or a loader error), or it does not run on the device asked for.
MISSING, BROKEN, WRONG_DEVICE = "not installed", "broken", "not on the device"


@dataclass
class BackendEntry:
    """A backend as the suite sees it: loaded object or the reason it cannot run, and the dtypes it is checked in.

    cause: '' when loaded, else MISSING, BROKEN or WRONG_DEVICE (what decides whether the run can pass).
    """

    name: str
    backend: Any = None
    reason: str = "available"
    dtypes: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    cause: str = ""

    @property
    def available(self) -> bool:
        return self.backend is not None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "available": self.available, "reason": self.reason, "dtypes": list(self.dtypes),
                "options": {k: str(v) for k, v in self.options.items()}, "missing_vocabulary": self.missing,
                "cause": self.cause or None}


def parse_names(text: Optional[str]) -> list[str]:
    """'numpy,torch' -> ['numpy', 'torch']; None or 'all' -> every registered backend."""
    if text is None or text.strip() in ("", "all"):
        return list(BACKENDS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"--backends={text!r} is not allowed: {', '.join(unknown)} unknown; choose from "
                         f"{', '.join(BACKENDS)} (comma separated) or 'all'")
    return names


# ----------------------------------------------------------------------------- loading a backend (the one place)
def load_options_for(name: str, dtype: Optional[str]) -> dict[str, Any]:
    """The load options a backend needs to compute in `dtype`, as its plugin declares them (`dtype_options`).

    A plugin maps dtype names to options (jax: {'float64': {'x64': True}}); one without the field needs none.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if dtype is None:
        return {}
    declared = getattr(BACKENDS[name], "dtype_options", None) or {}
    return dict(declared.get(str(dtype), {}))


def device_kind(device: str) -> str:
    """'cuda:1' -> 'cuda', 'cpu' -> 'cpu'."""
    return str(device).split(":", 1)[0]


def takes_option(name: str, option: str) -> bool:
    """Whether a backend's loader takes a load option, from its plugin's `options` when the plugin declares them.

    Without that field a backend that runs on more than one device is taken to choose it through `device=`.
    """
    plugin = BACKENDS[name]
    declared = getattr(plugin, "options", None)
    if declared is not None:
        return option in declared
    return option == "device" and len(plugin.devices) > 1


def device_options(name: str, device: Optional[str]) -> dict[str, Any]:
    """The load options that put a backend on `device` (none for a backend that runs only there).

    Raises BackendUnavailable when the backend's plugin does not list the device: never a silent move elsewhere.
    """
    if device is None:
        return {}
    plugin = BACKENDS[name]
    if device_kind(device) not in plugin.devices:
        raise BackendUnavailable(f"backend {name!r} runs on {', '.join(plugin.devices)} only, not on "
                                 f"device={device!r}")
    return {"device": device} if takes_option(name, "device") else {}


def capabilities_of(backend: Any, name: str = "") -> Capabilities:
    """A loaded backend's Capabilities; TypeError naming the backend when it declares none."""
    caps = getattr(backend, "capabilities", None)
    if not isinstance(caps, Capabilities):
        raise TypeError(f"backend {name or getattr(backend, 'name', '?')!r} declares no capabilities (a "
                        f"convnn.kernels.Capabilities as backend.capabilities); got {type(caps).__name__}")
    return caps


def check_device(backend: Any, name: str, device: Optional[str]) -> None:
    """BackendUnavailable when a loaded backend does not run on the device it was asked for."""
    if device is None:
        return
    got = capabilities_of(backend, name).device
    if device_kind(got) != device_kind(device):
        raise BackendUnavailable(f"backend {name!r} loaded on {got!r}, not on the device={device!r} asked for")


def backend_load_options(name: str, dtypes: Sequence[str] = (), device: Optional[str] = None,
                         **extra: Any) -> dict[str, Any]:
    """Every load option for a backend that must run in `dtypes` on `device`, plus `extra` as given."""
    options: dict[str, Any] = {}
    for dtype in dtypes:
        options.update(load_options_for(name, dtype))
    options.update(device_options(name, device))
    options.update(extra)
    return options


def load_backend(name: str, *, dtypes: Sequence[str] = (), device: Optional[str] = None, **extra: Any) -> Any:
    """get_backend(name) with the options its dtypes and device need, checked to run on that device.

    Errors propagate (BackendUnavailable, or the loader's own ValueError / TypeError / RuntimeError); no
    option is dropped and retried.
    """
    backend = get_backend(name, **backend_load_options(name, dtypes, device, **extra))
    capabilities_of(backend, name)
    check_device(backend, name, device)
    return backend


LOAD_ERRORS = (ImportError, ValueError, TypeError, RuntimeError, OSError)


def load_entry(name: str, dtypes: Sequence[str], device: Optional[str] = None) -> BackendEntry:
    """Load one backend for the suite; a backend that cannot run (here, or on `device`) is an entry saying why.

    A backend that rejects the device is unavailable with its error, never loaded without it. The entry's
    cause says which: not installed, broken (installed but fails to import or load) or not on the device.
    """
    ok, why = backend_status(name)
    if not ok:
        return BackendEntry(name, reason=why, cause=MISSING)
    ok, why = backend_status(name, probe=True)
    if not ok:
        return BackendEntry(name, reason=why, cause=BROKEN)
    options: dict[str, Any] = {}
    failed = WRONG_DEVICE if device is not None else BROKEN
    try:
        options = backend_load_options(name, dtypes, device)
        backend = load_backend(name, dtypes=dtypes, device=device)
    except BackendUnavailable as err:
        return BackendEntry(name, reason=f"cannot load: {err}", options=options, cause=failed)
    except LOAD_ERRORS as err:  # the loader refused (a bad option, a missing device): reported with its error
        return BackendEntry(name, reason=f"failed to load: {type(err).__name__}: {err}", options=options,
                            cause=failed)
    declared = backend_dtypes(backend)
    picked = tuple(d for d in dtypes if d in declared)
    return BackendEntry(name, backend, "available", picked, options, missing_ops(backend))


def plan_cases(level: int, dtype: str, full: bool) -> list[Any]:
    """The cases of one level and dtype (levels 1-3 here; 4-6 in model_levels)."""
    if level == 1:
        return case_mod.level1_cases((dtype,), full)
    if level == 2:
        return case_mod.level2_cases((dtype,), full)
    if level == 3:
        return case_mod.level3_cases((dtype,))
    from .model_levels import model_cases

    return model_cases(level, dtype, full)


def checker(level: int) -> Callable[..., list[CheckResult]]:
    """The check function of a level: (backend, name, case, cache) -> results."""
    if level == 1:
        return check_forward
    if level == 2:
        return check_gradients
    if level == 3:
        return check_identity
    from .model_levels import check_model

    return check_model


@dataclass
class SuiteReport:
    """Everything a run produced: the cells, the backends, the plan, the tolerances and the machine."""

    results: list[CheckResult]
    backends: list[BackendEntry]
    levels: tuple[int, ...]
    dtypes: tuple[str, ...]
    full: bool
    cases: dict[str, str]
    seconds: float
    machine: dict[str, str]
    problems: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.failed]

    @property
    def passed(self) -> bool:
        """Nothing failed and nothing kept the run from counting as checked (see suite_problems)."""
        return not self.failures and not self.problems

    @property
    def verdict(self) -> str:
        """FAILED (a check failed), NOT PASSED (nothing failed, but the run did not check what was asked: see
        problems), or PASSED."""
        if self.failures:
            return "FAILED"
        return "NOT PASSED" if self.problems else "PASSED"

    def exit_code(self) -> int:
        """0 when the run passed; 1 on a failure or a problem (a single n/a cell is neither)."""
        return 0 if self.passed else 1

    def summary(self) -> dict[str, dict[int, dict[str, int]]]:
        """backend -> level -> status -> count."""
        out: dict[str, dict[int, dict[str, int]]] = {}
        for r in self.results:
            cell = out.setdefault(r.backend, {}).setdefault(r.level, {})
            cell[r.status] = cell.get(r.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": {str(k): LEVELS[k] for k in self.levels},
            "dtypes": list(self.dtypes),
            "full": self.full,
            "seconds": round(self.seconds, 2),
            "machine": self.machine,
            "tolerances": [t.to_dict() for t in table_rows()],
            "backends": [b.to_dict() for b in self.backends],
            "summary": {b: {str(lv): c for lv, c in d.items()} for b, d in self.summary().items()},
            "cases": self.cases,
            "results": [r.to_dict() for r in self.results],
            "problems": list(self.problems),
            "verdict": self.verdict,
            "passed": self.passed,
        }


def machine_info() -> dict[str, str]:
    """Platform facts for the report header."""
    import os

    return {"python": platform.python_version(), "platform": f"{platform.system()} {platform.machine()}",
            "cpus": str(os.cpu_count())}


def plan_suite(levels: Iterable[int], dtypes: Sequence[str], full: bool,
               case_filter: Optional[Callable[[Any], bool]] = None) -> dict[tuple[int, str], list[Any]]:
    """(level, dtype) -> the cases to run, after the filter; ValueError for a level or dtype that does not exist."""
    for lv in levels:
        if lv not in LEVELS:
            raise ValueError(f"level={lv!r} is not allowed; choose from {', '.join(map(str, LEVELS))}")
    for d in dtypes:
        if d not in ALL_DTYPES:
            raise ValueError(f"dtype={d!r} is not allowed; choose from {', '.join(ALL_DTYPES)}")
    planned: dict[tuple[int, str], list[Any]] = {}
    for lv in levels:
        for d in dtypes:
            found = plan_cases(lv, d, full)
            planned[(lv, d)] = [c for c in found if case_filter is None or case_filter(c)]
    return planned


def suite_problems(entries: Sequence[BackendEntry], results: Sequence[CheckResult], planned_cases: int, *,
                   explicit: bool = True, device: Optional[str] = None) -> list[str]:
    """Why a run with no failing cell still cannot count as passed (empty when it can).

    explicit: the entries were asked for by name (then each must run); otherwise (every registered backend)
    one that is not installed, or does not run on `device`, is only n/a, but a broken install is a problem
    and so is a run where no backend can run. A run in which no cell passed checked nothing.
    """
    where = f" on device={device!r}" if device else ""
    out: list[str] = []
    down = [e for e in entries if not e.available]
    if explicit:
        out += [f"backend {e.name!r} was asked for{where} but cannot run: {e.reason}" for e in down]
    else:
        out += [f"backend {e.name!r} is installed but cannot load: {e.reason}" for e in down if e.cause == BROKEN]
        if entries and len(down) == len(entries):
            out.append(f"no backend can run{where}: " + "; ".join(f"{e.name}: {e.reason}" for e in down))
    if not entries:
        out.append("no backend was given to check")
    elif planned_cases == 0:
        out.append("no case was selected (the case filter matches none of the chosen levels and dtypes)")
    elif not any(r.status == PASS or r.failed for r in results) and not out:
        out.append("nothing was checked: every cell is n/a (" + "; ".join(sorted({r.detail for r in results}))[:300]
                   + ")")
    return out


def run_suite(entries: Sequence[BackendEntry], levels: Iterable[int] = ALL_LEVELS,
              dtypes: Sequence[str] = DEFAULT_DTYPES, *, full: bool = True, progress: bool = False,
              case_filter: Optional[Callable[[Any], bool]] = None, explicit: bool = True,
              device: Optional[str] = None, plan: Optional[dict[tuple[int, str], list[Any]]] = None) -> SuiteReport:
    """Every check of the chosen levels for every entry; unavailable backends and dtypes give n/a cells.

    The report's problems (suite_problems) say why a run without failures still did not pass: explicit=True
    (the default) treats every entry as asked for by name; device is only named in those reasons. plan: the
    cases from plan_suite(levels, dtypes, full), when the caller has them already (the filter still applies).
    """
    start = time.perf_counter()
    levels = tuple(sorted(set(levels)))
    cache = OracleCache()
    if plan is None:
        planned = plan_suite(levels, dtypes, full, case_filter)
    else:
        planned = {(lv, d): [c for c in plan.get((lv, d), []) if case_filter is None or case_filter(c)]
                   for lv in levels for d in dtypes}
    work: list[tuple[BackendEntry, int, Any]] = []
    results: list[CheckResult] = []
    for entry in entries:
        for lv in levels:
            if not entry.available:
                results.append(CheckResult(entry.name, lv, "*", NOT_AVAILABLE, detail=entry.reason))
                continue
            for d in dtypes:
                if d not in entry.dtypes and not (lv == 4 and d == "bfloat16"):  # 4: bf16 mixed precision
                    results.append(CheckResult(entry.name, lv, f"*-{d}", NOT_AVAILABLE, d,
                                               detail=f"backend does not declare {d} (capabilities.dtypes)"))
                    continue
                work.extend((entry, lv, c) for c in planned[(lv, d)])
    bar = _progress(len(work)) if progress else None
    for entry, lv, case in work:
        if bar is not None:
            bar.set_description(f"{entry.name} L{lv} {case.id}"[:48])
        results.extend(checker(lv)(entry.backend, entry.name, case, cache))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    descriptions = {c.id: c.describe() + (f" [{c.note}]" if c.note else "")
                    for cs in planned.values() for c in cs}
    problems = suite_problems(entries, results, sum(len(cs) for cs in planned.values()), explicit=explicit,
                              device=device)
    return SuiteReport(results, list(entries), levels, tuple(dtypes), full, descriptions,
                       time.perf_counter() - start, machine_info(), problems)


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # progress is optional
        return None
    return tqdm(total=total, unit="check", file=sys.stderr, leave=False)
