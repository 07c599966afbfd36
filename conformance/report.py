"""The report: a backend x case matrix on the console, and the same as Markdown and JSON files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from .results import NOT_AVAILABLE, PASS, CheckResult
from .runner import LEVELS, SHORT, SuiteReport
from .tolerances import table_rows

CELL = 24


def _index(report: SuiteReport) -> tuple[dict[int, list[str]], dict[tuple[str, int, str], CheckResult]]:
    rows: dict[int, list[str]] = {}
    cells: dict[tuple[str, int, str], CheckResult] = {}
    for r in report.results:
        cells[(r.backend, r.level, r.case)] = r
        if not r.case.startswith("*"):
            rows.setdefault(r.level, [])
            if r.case not in rows[r.level]:
                rows[r.level].append(r.case)
    return rows, cells


def _cell(cells: dict[tuple[str, int, str], CheckResult], backend: str, level: int, case: str) -> Optional[CheckResult]:
    hit = cells.get((backend, level, case))
    if hit is not None:
        return hit
    hit = cells.get((backend, level, "*"))
    if hit is not None:
        return hit
    dtype = case.rsplit("-", 1)[-1].split("/")[0]
    return cells.get((backend, level, f"*-{dtype}"))


def _summary_text(report: SuiteReport, backend: str, level: int) -> str:
    counts = report.summary().get(backend, {}).get(level, {})
    total = sum(counts.values())
    if not total:
        return "-"
    na = counts.get(NOT_AVAILABLE, 0)
    if na == total:
        return "n/a"
    passed = counts.get(PASS, 0)
    bad = total - passed - na
    text = f"{passed}/{total - na} pass"
    if bad:
        text += f", {bad} FAIL"
    if na:
        text += f", {na} n/a"
    return text


def backend_lines(report: SuiteReport) -> list[str]:
    """One line per backend: available (with dtypes) or why not."""
    out = []
    for b in report.backends:
        if b.available:
            out.append(f"{b.name}: {b.reason}; dtypes {', '.join(b.dtypes) or 'none'}"
                       + (f"; options {b.options}" if b.options else ""))
        else:
            out.append(f"{b.name}: NOT AVAILABLE: {b.reason}")
    return out


def tolerance_lines() -> list[tuple[str, str, str, str]]:
    """(dtype, rtol, atol, source) rows of the tolerance table."""
    return [(t.dtype if t.source.startswith(("DESIGN", "this")) else f"{t.dtype} (finite diff.)", f"{t.rtol:g}",
             f"{t.atol_scale:g} x max|oracle|", t.source) for t in table_rows()]


def format_console(report: SuiteReport, *, failures_only: bool = False, width: int = CELL) -> str:
    """The text the CLI prints: backends, tolerance table, the matrix per level, the summary, the failures."""
    names = [b.name for b in report.backends]
    rows, cells = _index(report)
    lines = ["ConvNN conformance: every backend against the float64 spec (oracle)"]
    lines += ["backends:"] + ["  " + s for s in backend_lines(report)]
    lines.append("tolerances: |got - oracle| <= atol + rtol * |oracle|")
    for dtype, rtol, atol, source in tolerance_lines():
        lines.append(f"  {dtype:<26} rtol {rtol:<6} atol {atol:<20} {source}")
    lines.append("cells: status  max|err| / allowed error at the worst element  (n/a = not available, never a pass)")
    first = max([34] + [len(c) + 2 for cases in rows.values() for c in cases])
    for level in report.levels:
        lines.append("")
        lines.append(f"Level {level}: {LEVELS[level]}")
        header = f"  {'case':<{first}}" + "".join(f"{n:<{width}}" for n in names)
        lines.append(header)
        for case in rows.get(level, []):
            line_cells = [_cell(cells, n, level, case) for n in names]
            if failures_only and all(c is None or not c.failed for c in line_cells):
                continue
            text = "".join(f"{(c.cell() if c else '-'):<{width}}" for c in line_cells)
            lines.append(f"  {case:<{first}}{text}")
        if not rows.get(level):
            lines.append("  (no cases ran)")
    lines.append("")
    lines.append("Summary (pass / checked, failures, not available):")
    lines.append(f"  {'level':<{first}}" + "".join(f"{n:<{width}}" for n in names))
    for level in report.levels:
        lines.append(f"  {f'{level} ' + SHORT[level]:<{first}}"
                     + "".join(f"{_summary_text(report, n, level):<{width}}" for n in names))
    fails = report.failures
    if fails:
        lines.append("")
        lines.append(f"FAILURES ({len(fails)}):")
        for r in fails[:200]:
            lines.append(f"  [{r.backend}] L{r.level} {r.case}: {r.status} {r.cell()} {r.detail}")
            if r.case in report.cases:
                lines.append(f"      case: {report.cases[r.case]}")
    if report.problems:
        lines.append("")
        lines.append("NOT CHECKED AS ASKED:")
        lines.extend(f"  {p}" for p in report.problems)
    lines.append("")
    lines.append(verdict_line(report))
    return "\n".join(lines)


def verdict_line(report: SuiteReport) -> str:
    """PASSED / NOT PASSED / FAILED with the cell counts (NOT PASSED: nothing failed, but see report.problems)."""
    fails = report.failures
    na = sum(r.status == NOT_AVAILABLE for r in report.results)
    text = (f"{report.verdict}: {len(report.results)} cells, {len(fails)} failing, {na} not available, "
            f"{report.seconds:.1f} s")
    if report.problems and not fails:
        text += f"; {report.problems[0]}" + (f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else "")
    return text


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_markdown(report: SuiteReport) -> str:
    """The Markdown report: backends, tolerance table, summary, per-level matrices, failures, case index."""
    names = [b.name for b in report.backends]
    rows, cells = _index(report)
    m = report.machine
    out = ["# ConvNN conformance report", "",
           f"Python {m.get('python')}, {m.get('platform')}, {m.get('cpus')} CPUs; "
           f"{'full' if report.full else 'quick'} case set; dtypes {', '.join(report.dtypes)}; "
           f"{report.seconds:.1f} s. Oracle: the spec (convnn_core) in float64 on NumPy; gradients by torch "
           "autograd of the spec, checked against finite differences.", "",
           "## Backends", ""]
    out += [f"- {_md_escape(s)}" for s in backend_lines(report)]
    out += ["", "## Tolerances", "", "An element passes when |got - oracle| <= atol + rtol * |oracle|.", "",
            "| dtype | rtol | atol | source |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in tolerance_lines()]
    out += ["", "## Summary", "", "| level | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for level in report.levels:
        out.append(f"| {level}: {SHORT[level]} | "
                   + " | ".join(_summary_text(report, n, level) for n in names) + " |")
    for level in report.levels:
        out += ["", f"## Level {level}: {_md_escape(LEVELS[level])}", "",
                "| case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for case in rows.get(level, []):
            line = [_cell(cells, n, level, case) for n in names]
            out.append(f"| `{case}` | " + " | ".join(_md_escape(c.cell() if c else "-") for c in line) + " |")
    fails = report.failures
    out += ["", "## Verdict", "", _md_escape(verdict_line(report))]
    if report.problems:
        out += ["", "Not checked as asked:", ""] + [f"- {_md_escape(p)}" for p in report.problems]
    out += ["", "## Failures", ""]
    if not fails:
        out.append("None.")
    for r in fails:
        out.append(f"- **{r.backend}** level {r.level} `{r.case}`: {r.status} {_md_escape(r.cell())}: "
                   f"{_md_escape(r.detail)}")
    out += ["", "## Cases", ""]
    out += [f"- `{cid}`: {_md_escape(desc)}" for cid, desc in sorted(report.cases.items())]
    return "\n".join(out) + "\n"


def write_json(report: SuiteReport, path: Any) -> Path:
    """Write the full report (every cell with its numbers) as JSON."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report.to_dict(), indent=1, default=str))
    return target


def write_markdown(report: SuiteReport, path: Any) -> Path:
    """Write the Markdown report."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(format_markdown(report))
    return target
