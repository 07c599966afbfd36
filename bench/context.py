"""What every bench command does first: fix threads, pick the backends (and say why others are skipped), measure the machine."""
from __future__ import annotations

import datetime as _dt
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from convnn.conformance.oracle import ORACLE_BACKEND as ORACLE

from .runners import COMPILE_MODES, BackendRunner


@dataclass
class CommonOptions:
    """Options shared by `convnn bench layer | model | sweep`."""

    backends: Optional[list[str]] = None  # None: every installed backend
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    threads: Optional[int] = None
    out: Path = Path("reports/bench")
    oracle: bool = False  # time the numpy oracle on full-size shapes too
    compile: str = "auto"
    memory: bool = True
    quick: bool = False

    def validate(self) -> None:
        """ValueError naming the option for any bad value, and for --device cuda without a usable CUDA GPU
        (checked here, before any backend is loaded or anything is measured)."""
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r} is not allowed; choose cpu or cuda")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile={self.compile!r} is not allowed; choose one of {', '.join(COMPILE_MODES)}")
        check_int("repeats", self.repeats, 1)
        check_int("warmup", self.warmup, 0)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        if self.backends is not None:
            check_backend_names(self.backends)
        if self.device == "cuda":
            check_cuda()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out"] = str(self.out)
        return out


def check_int(name: str, value: Any, least: int) -> int:
    """value as an int >= least, else ValueError naming the option (--name) and what is allowed."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"--{name.replace('_', '-')}={value!r} is not allowed; give an int >= {least}")
    return value


def check_backend_names(names: list[str]) -> None:
    """ValueError naming the unknown entries of --backends and the registered backends."""
    from convnn.registry import BACKENDS

    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"--backends: {', '.join(map(repr, unknown))} unknown; choose from {', '.join(BACKENDS)} "
                         f"(comma separated)")


def check_cuda() -> None:
    """ValueError for --device cuda where no CUDA GPU is usable (registry.cuda_visible), before any work."""
    from convnn.registry import cuda_visible

    ok, why = cuda_visible()
    if not ok:
        raise ValueError(f"--device cuda was asked for, but no CUDA GPU is usable here ({why}); use --device cpu")


@dataclass
class BenchContext:
    """The opened backends of a run, those skipped with the reason, the machine and the header of the report."""

    options: CommonOptions
    runners: dict[str, BackendRunner] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)

    def skip(self, backend: str, reason: str) -> None:
        self.skipped.append({"backend": backend, "reason": reason})


def choose_backends(options: CommonOptions, ctx: BenchContext) -> list[str]:
    """The backends to run: asked for (or all known), minus those not installed, not on the device, or the oracle."""
    from convnn.registry import BACKENDS, backend_status

    names = options.backends or list(BACKENDS)
    check_backend_names(names)
    chosen = []
    for name in names:
        ok, why = backend_status(name)
        if not ok:
            ctx.skip(name, why)
        elif options.device not in BACKENDS[name].devices:
            ctx.skip(name, f"runs on {', '.join(BACKENDS[name].devices)} only (device={options.device})")
        elif name == ORACLE and not (options.oracle or options.quick or options.backends):
            ctx.skip(name, f"the float64 reference oracle, not a contender; pass --oracle (or --backends {ORACLE}) "
                           f"to time it")
        else:
            chosen.append(name)
    return chosen


def open_context(options: CommonOptions, command: str, argv: Optional[list[str]] = None) -> BenchContext:
    """Fix threads, measure the machine and open every chosen backend (failures become skips with the reason)."""
    from convnn.conformance.runner import LOAD_ERRORS
    from convnn.registry import BackendUnavailable

    from .machine import measure_machine
    from .measure import error_text
    from .threads import fix_thread_count

    options.validate()
    ctx = BenchContext(options)
    threads = fix_thread_count(options.threads) if options.device == "cpu" else {"threads": "n/a (cuda)"}
    for name in choose_backends(options, ctx):
        try:
            ctx.runners[name] = BackendRunner(name, options.device, options.compile,
                                                  threads.get("threads") if options.device == "cpu" else None)
        except LOAD_ERRORS as err:  # the backend refused to load here (device, options, install): a skip with why
            ctx.skip(name, error_text(err))
    if options.backends:  # asked for by name: each must run, or the run stops here, before anything is measured
        refused = [s for s in ctx.skipped if s["backend"] in options.backends]
        if refused:
            raise BackendUnavailable("; ".join(f"backend {s['backend']!r} was asked for (--backends) but cannot "
                                               f"run on {options.device}: {s['reason']}" for s in refused))
    if options.device == "cpu":  # libraries the backends loaded just now: cap their pools too
        threads = fix_thread_count(options.threads)
    machine = measure_machine(options.device, quick=options.quick)
    machine["threads"] = threads
    ctx.header = {
        "kind": command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "convnn bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else [command])),
        "machine": machine,
        "settings": options.to_dict(),
        "backends": list(ctx.runners),
        "skipped": ctx.skipped,
    }
    return ctx
