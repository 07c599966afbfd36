"""Cross-backend conformance: every backend's ConvNN ops, gradients, identities and zoo models against the
float64 spec (the oracle), over a generated case matrix, with one tolerance table (DESIGN.md).

`convnn conformance` runs it (see conformance/cli.py); `run_suite` is the programmatic entry point.
"""
from .runner import LEVELS, BackendEntry, SuiteReport, load_entry, run_suite
from .tolerances import TOLERANCES, Tolerance, compare

__all__ = ["LEVELS", "BackendEntry", "SuiteReport", "Tolerance", "TOLERANCES", "compare", "load_entry", "run_suite"]
