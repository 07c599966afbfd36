"""Time and measure one contender into a report row; errors become a row with the message, never a crash."""
from __future__ import annotations

import traceback
from typing import Any, Callable, Optional

from .runners import Contender
from .timing import PeakMemory, time_call

PHASES = ("fwd", "fwdbwd")
MIB = 2.0**20


def error_text(err: BaseException) -> str:
    """One line naming the exception and where it came from."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {message[:300]}{where}"


def measure_contender(contender: Contender, *, repeats: int, warmup: int,
                      memory: Optional[PeakMemory]) -> dict[str, Any]:
    """Timings (median, first call, CV, all samples) and peak memory of the forward and forward+backward calls."""
    row: dict[str, Any] = {
        "impl": contender.name, "role": contender.role, "device": contender.device, "mode": contender.mode,
        "status": "ok", "notes": list(contender.notes), **contender.extra,
    }
    if memory is not None and not contender.memory_measurable:
        memory = None
        row["notes"].append("peak memory not measured (allocations invisible to the meter on this device)")
    calls: dict[str, Optional[Callable[[], Any]]] = {"fwd": contender.forward, "fwdbwd": contender.forward_backward}
    for phase in PHASES:
        fn = calls[phase]
        row[f"{phase}_ms"] = None
        row[f"{phase}_peak_mib"] = None
        if fn is None:
            continue
        try:
            timing = time_call(fn, repeats=repeats, warmup=warmup)
            row[f"{phase}_ms"] = timing.median_ms
            row[f"{phase}_first_ms"] = timing.first_ms
            row[f"{phase}_cv"] = timing.cv
            row[f"{phase}_times_ms"] = timing.times_ms
            if memory is not None:
                peak = memory.measure(fn)
                row[f"{phase}_peak_mib"] = None if peak is None else peak / MIB
        except Exception as err:  # an error row naming the exception (status 'error'); the benchmark goes on
            row["status"] = "error"
            row["notes"].append(f"{phase}: {error_text(err)}")
    return row


def failed_row(name: str, role: str, device: str, err: BaseException, mode: str = "eager") -> dict[str, Any]:
    """The row of a contender that could not even be built."""
    return {"impl": name, "role": role, "device": device, "mode": mode, "status": "error",
            "notes": [error_text(err)], "fwd_ms": None, "fwdbwd_ms": None,
            "fwd_peak_mib": None, "fwdbwd_peak_mib": None}
