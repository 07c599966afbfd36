"""The per-dtype tolerance table of DESIGN.md and the elementwise comparison every check uses.

An element passes when |got - want| <= atol + rtol * |want|, with atol = atol_scale * max|want|
(the absolute part is relative to the output's scale, so tiny entries of a large output do not fail
on rounding noise).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """rtol and the scale-relative atol for one dtype, with where the numbers come from."""

    dtype: str
    rtol: float
    atol_scale: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance("float64", 1e-9, 1e-9, "DESIGN.md (rtol 1e-9)"),
    "float32": Tolerance("float32", 1e-4, 1e-5, "DESIGN.md (rtol 1e-4, atol 1e-5 x output scale)"),
    "bfloat16": Tolerance("bfloat16", 2e-2, 2e-2, "DESIGN.md (rtol 2e-2)"),
    "float16": Tolerance("float16", 5e-3, 5e-3, "this suite (not fixed by DESIGN.md): ~5 ulp of fp16"),
}

# Finite differences approximate the oracle's own gradient; their truncation error sets this bound.
FINITE_DIFFERENCE = Tolerance("float64", 1e-6, 1e-6, "central differences, step 1e-6 (truncation error)")

# Minimum gap between the last selected and the first rejected affinity (and between ranked slots),
# relative to the affinity scale, for an input to count as free of ties in that dtype.
SELECTION_MARGIN: dict[str, float] = {"float64": 1e-7, "float32": 2e-3, "bfloat16": 1.5e-1, "float16": 5e-2}


def tolerance_for(dtype: str) -> Tolerance:
    """The table row for a dtype name (ValueError naming the allowed ones otherwise)."""
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype={dtype!r} has no tolerance; allowed: {', '.join(TOLERANCES)}")
    return TOLERANCES[dtype]


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing one array with its oracle."""

    passed: bool
    max_abs_err: float  # max |got - want|
    allowed: float  # atol + rtol * |want| at the element closest to failing
    worst_ratio: float  # max |got - want| / (atol + rtol |want|); <= 1 passes
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(got: Any, want: Any, tol: Tolerance) -> Comparison:
    """Elementwise comparison of got against want (both converted to float64 NumPy)."""
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        return Comparison(False, float("inf"), 0.0, float("inf"), f"shape {g.shape} != oracle shape {w.shape}")
    if g.size == 0:
        return Comparison(True, 0.0, 0.0, 0.0, "empty")
    if not np.all(np.isfinite(g)):
        return Comparison(False, float("inf"), 0.0, float("inf"), "non-finite values in the result")
    scale = float(np.max(np.abs(w)))
    atol = tol.atol_scale * scale
    err = np.abs(g - w)
    allowed = atol + tol.rtol * np.abs(w)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(allowed > 0, err / np.where(allowed > 0, allowed, 1.0), np.where(err > 0, np.inf, 0.0))
    worst = int(np.argmax(ratio))
    worst_ratio = float(ratio.reshape(-1)[worst])
    return Comparison(
        passed=bool(worst_ratio <= 1.0),
        max_abs_err=float(np.max(err)),
        allowed=float(allowed.reshape(-1)[worst]),
        worst_ratio=worst_ratio,
    )


def compare_exact(got: Any, want: Any, what: str = "indices") -> Comparison:
    """Exact equality (neighbour indices); the error is the number of differing entries."""
    g = np.asarray(got)
    w = np.asarray(want)
    if g.shape != w.shape:
        return Comparison(False, float("inf"), 0.0, float("inf"), f"{what}: shape {g.shape} != oracle {w.shape}")
    bad = int(np.count_nonzero(g.astype(np.int64) != w.astype(np.int64)))
    detail = "" if bad == 0 else f"{bad} of {w.size} {what} differ"
    if bad:
        first = np.argwhere(g != w)[0]
        detail += f"; first at {tuple(int(i) for i in first)}: got {g[tuple(first)]}, oracle {w[tuple(first)]}"
    return Comparison(bad == 0, float(bad), 0.0, float(bad), detail)


def merge(parts: list[tuple[str, Comparison]]) -> Comparison:
    """One comparison from several named ones: fails if any fails; reports the worst part."""
    if not parts:
        return Comparison(True, 0.0, 0.0, 0.0, "nothing compared")
    name, worst = max(parts, key=lambda p: p[1].worst_ratio)
    failed = [n for n, c in parts if not c.passed]
    detail = f"worst: {name}"
    if failed:
        detail = "failed: " + ", ".join(failed) + (f" ({worst.detail})" if worst.detail else "")
    elif worst.detail:
        detail += f" ({worst.detail})"
    return Comparison(not failed, worst.max_abs_err, worst.allowed, worst.worst_ratio, detail)


def table_rows(extra: Optional[list[Tolerance]] = None) -> list[Tolerance]:
    """The rows the report prints: every dtype, then the finite-difference bound."""
    return list(TOLERANCES.values()) + [FINITE_DIFFERENCE] + list(extra or [])
