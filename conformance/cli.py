"""`convnn conformance`: run the suite on the installed backends, print the matrix, write JSON / Markdown."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .dtypes import ALL_DTYPES, DEFAULT_DTYPES
from .runner import ALL_LEVELS, LEVELS, load_entry, parse_names, plan_suite, run_suite


def parse_levels(text: str) -> tuple[int, ...]:
    """'3' -> (3,), '1,3' -> (1, 3), '1-3' -> (1, 2, 3), 'all' -> every level."""
    if text.strip() == "all":
        return ALL_LEVELS
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise ValueError(f"--level={text!r} is not allowed; give levels like 1, 1,3 or 1-3 (from 1 to 6)") from None
    bad = [lv for lv in out if lv not in LEVELS]
    if bad or not out:
        raise ValueError(f"--level={text!r} is not allowed; levels are {', '.join(map(str, LEVELS))}")
    return tuple(sorted(set(out)))


def parse_dtypes(text: str) -> tuple[str, ...]:
    """'float32,float64' -> the names; 'all' -> float64, float32, bfloat16, float16."""
    if text.strip() == "all":
        return ALL_DTYPES
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in ALL_DTYPES]
    if bad or not names:
        raise ValueError(f"--dtype={text!r} is not allowed; choose from {', '.join(ALL_DTYPES)} or 'all'")
    return names


def register(subparsers: Any) -> None:
    """Add the `conformance` subcommand."""
    p = subparsers.add_parser(
        "conformance",
        help="check every installed backend against the float64 spec (backend x case matrix)",
        description="Run the conformance suite: levels 1-3 check the ConvNN ops, their gradients and the "
                    "identities of SPEC.md section 6; levels 4-6 check zoo models (forward, one training step, "
                    "a short training curve). Backends that cannot run show as n/a, never as passed. "
                    "Exit status 0 only when at least one check ran and none failed; 1 when a check fails, a "
                    "backend named in --backends (or, with --device, every backend) cannot run, an installed "
                    "backend fails to load, or every cell is n/a; 2 on bad arguments (a --case that matches no "
                    "case included).",
    )
    p.add_argument("--backends", default="all", help="comma-separated backend names, or 'all' (default)")
    p.add_argument("--level", default="all", help="levels to run: 1..6, e.g. 1 or 1,3 or 1-3 (default: all)")
    p.add_argument("--dtype", default=",".join(DEFAULT_DTYPES),
                   help="dtypes: float64,float32 (default), bfloat16, float16 or 'all'; a backend is checked "
                        "only in the dtypes it declares")
    p.add_argument("--device", default=None,
                   help="the device every backend must run on (e.g. cuda); a backend that cannot is n/a, and the run "
                        "fails when a backend named in --backends (or every backend) cannot")
    p.add_argument("--quick", action="store_true", help="the smaller CI case set (the default is the full set)")
    p.add_argument("--case", default=None, help="run only cases whose id contains this text")
    p.add_argument("--report", default=None, metavar="OUT.md", help="write the Markdown report here")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the JSON report (every cell) here")
    p.add_argument("--failures-only", action="store_true", help="print only matrix rows with a failing cell")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=main)


def check_case_filter(text: str, everything: dict[Any, list[Any]], levels: tuple[int, ...],
                      dtypes: tuple[str, ...], full: bool) -> None:
    """ValueError naming the filter and example case ids when --case matches no case of the plan."""
    if any(text in c.id for cases in everything.values() for c in cases):
        return
    ids = [c.id for cases in everything.values() for c in cases]
    examples = ", ".join(ids[:: max(1, len(ids) // 4)][:4])
    raise ValueError(f"--case={text!r} matches no case of level(s) {', '.join(map(str, levels))} in "
                     f"{', '.join(dtypes)}{' (--quick set)' if not full else ''}; give part of a case id, e.g. "
                     f"{examples} (all ids: --report OUT.md)")


def main(args: argparse.Namespace) -> int:
    """Run the suite as the arguments say: 0 when it passed, 1 on a failure or when it did not check what was
    asked (SuiteReport.problems), 2 on bad arguments."""
    from .report import format_console, write_json, write_markdown

    try:
        names = parse_names(args.backends)
        levels = parse_levels(args.level)
        dtypes = parse_dtypes(args.dtype)
        plan = plan_suite(levels, dtypes, not args.quick)
        if args.case is not None:
            check_case_filter(args.case, plan, levels, dtypes, full=not args.quick)
    except ValueError as err:
        print(f"convnn conformance: error: {err}", file=sys.stderr)
        return 2
    entries = [load_entry(n, dtypes, args.device) for n in names]
    case_filter = (lambda c: args.case in c.id) if args.case else None
    report = run_suite(entries, levels, dtypes, full=not args.quick, progress=not args.no_progress,
                       case_filter=case_filter, explicit=args.backends.strip() not in ("", "all"),
                       device=args.device, plan=plan)
    print(format_console(report, failures_only=args.failures_only))
    if args.json:
        print(f"JSON report: {write_json(report, args.json)}")
    if args.report:
        print(f"Markdown report: {write_markdown(report, args.report)}")
    if report.problems and not report.failures:
        print(f"convnn conformance: not passed: {'; '.join(report.problems)}", file=sys.stderr)
    elif report.failures:
        print(f"convnn conformance: {len(report.failures)} check(s) failed; see FAILURES above"
              + (f"; also: {'; '.join(report.problems)}" if report.problems else ""), file=sys.stderr)
    return report.exit_code()
