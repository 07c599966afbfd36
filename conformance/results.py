"""One check's outcome (backend x case) and the statuses the matrix shows."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from .tolerances import Comparison

PASS, FAIL, ERROR, NOT_AVAILABLE = "pass", "FAIL", "ERROR", "n/a"
FAILING = (FAIL, ERROR)


@dataclass
class CheckResult:
    """A cell of the matrix: which backend, level and case, the status, the error against the tolerance."""

    backend: str
    level: int
    case: str
    status: str
    dtype: str = ""
    max_abs_err: Optional[float] = None
    allowed: Optional[float] = None
    worst_ratio: Optional[float] = None
    detail: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_comparison(cls, backend: str, level: int, case: str, dtype: str, cmp: Comparison,
                        detail: str = "", seconds: float = 0.0) -> "CheckResult":
        """PASS or FAIL from a comparison, keeping its numbers."""
        text = "; ".join(t for t in (detail, cmp.detail) if t)
        return cls(backend, level, case, PASS if cmp.passed else FAIL, dtype, cmp.max_abs_err, cmp.allowed,
                   cmp.worst_ratio, text, seconds)

    def cell(self) -> str:
        """Short matrix cell: status, max abs error / allowed error at the worst element."""
        if self.status == NOT_AVAILABLE:
            return "n/a"
        if self.status == ERROR:
            return "ERROR"
        if self.max_abs_err is None:
            return self.status
        if self.level == 6:  # training curve: mean loss of the last steps / the bound it must stay under
            return f"{self.status} loss {self.max_abs_err:.3f}<{self.allowed:.3f}"
        if self.allowed == 0.0 and self.max_abs_err == 0.0:
            return f"{self.status} exact"
        if self.allowed == 0.0:
            return f"{self.status} {int(self.max_abs_err)} idx"
        return f"{self.status} {self.max_abs_err:.1e}/{self.allowed:.0e}"
