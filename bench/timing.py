"""Medians of repeated calls after warm-up, and the peak memory one call adds (method named in the report)."""
from __future__ import annotations

import ctypes
import gc
import statistics
import time
import tracemalloc
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

CLEAR_REFS = "/proc/self/clear_refs"
STATUS = "/proc/self/status"


@dataclass
class Timing:
    """Wall times of one callable in milliseconds: the first call (compile included), then the timed ones."""

    first_ms: float
    times_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def cv(self) -> float:
        """Coefficient of variation of the timed calls (0 with fewer than two)."""
        if len(self.times_ms) < 2:
            return 0.0
        return statistics.stdev(self.times_ms) / max(statistics.mean(self.times_ms), 1e-12)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(median_ms=self.median_ms, cv=self.cv)
        return out


def time_call(fn: Callable[[], Any], *, repeats: int, warmup: int) -> Timing:
    """Call fn once (timed as first_ms), `warmup - 1` more untimed times, then `repeats` timed times.

    fn must block until its work is done (the callers wrap device syncs into it).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be >= 1")
    if warmup < 0:
        raise ValueError(f"warmup={warmup!r} must be >= 0")
    t0 = time.perf_counter()
    fn()
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(max(warmup - 1, 0)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return Timing(first_ms=first, times_ms=times)


# ----------------------------------------------------------------------------- peak memory
def _status_kib(field: str) -> int:
    with open(STATUS, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in {STATUS}")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _can_reset_peak_rss() -> bool:
    try:
        with open(CLEAR_REFS, "w", encoding="utf-8") as fh:
            fh.write("5")
        _status_kib("VmHWM")
        return True
    except OSError:
        return False


class PeakMemory:
    """Measures the peak memory one call adds above what was in use when it started.

    cuda: torch.cuda.max_memory_allocated after reset_peak_memory_stats.
    cpu (Linux): the kernel's resident-set high-water mark (VmHWM), reset through /proc/self/clear_refs
    after malloc_trim returns freed heap pages, minus the resident set at the start; this sees every
    allocator (NumPy, numba, torch, XLA) alike. Elsewhere: tracemalloc (NumPy allocations only).
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        if device.startswith("cuda"):
            self.method = "torch.cuda.max_memory_allocated above the allocation at call start"
        elif _can_reset_peak_rss():
            self.method = ("resident-set high-water mark (VmHWM, reset via /proc/self/clear_refs after "
                           "malloc_trim) above the resident set at call start")
        else:
            self.method = "tracemalloc peak (NumPy allocations only)"

    def measure(self, fn: Callable[[], Any]) -> Optional[int]:
        """Bytes of peak memory one call of fn adds (None when it cannot be measured)."""
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            result = fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            del result
            return int(peak)
        if self.method.startswith("resident"):
            _malloc_trim()
            with open(CLEAR_REFS, "w", encoding="utf-8") as fh:
                fh.write("5")
            base = _status_kib("VmRSS")
            result = fn()
            peak = _status_kib("VmHWM") - base
            del result
            return max(peak, 0) * 1024
        tracemalloc.start()
        try:
            result = fn()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        del result
        return int(peak)
