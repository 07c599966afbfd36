"""Validation of model options: unknown names and bad values raise errors naming the option and what is allowed."""
from __future__ import annotations

from typing import Any, Iterable, Optional


def check_known(model: str, options: dict[str, Any], allowed: Iterable[str]) -> None:
    """Refuse option names the model does not have."""
    allowed = sorted(allowed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"model {model!r} has no option(s) {unknown}; allowed: {', '.join(allowed)}")


def choice(model: str, field: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"model {model!r}: {field}={value!r} is not allowed; choose one of {', '.join(allowed)}")
    return value


def integer(model: str, field: str, value: Any, minimum: int, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"model {model!r}: {field}={value!r} must be an int {bound}")
    return int(value)


def number(model: str, field: str, value: Any, lo: float, hi: float, *, hi_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        ok = lo <= float(value) < hi if hi_open else lo <= float(value) <= hi
    if not ok:
        right = ")" if hi_open else "]"
        raise ValueError(f"model {model!r}: {field}={value!r} must be a number in [{lo}, {hi}{right}")
    return float(value)


def boolean(model: str, field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"model {model!r}: {field}={value!r} must be true or false")
    return value


def dtype(model: str, value: Any) -> str:
    return choice(model, "dtype", value, ("float32", "float64"))
