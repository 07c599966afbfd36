"""The NumPy backend (the spec itself) is green on levels 1-3, the oracle's own consistency check."""
from __future__ import annotations

import pytest

from convnn.conformance.results import NOT_AVAILABLE, PASS
from convnn.conformance.runner import load_entry, run_suite


@pytest.fixture(scope="module")
def report():
    entry = load_entry("numpy", ("float64", "float32"))
    assert entry.available, entry.reason
    return run_suite([entry], levels=(1, 2, 3), dtypes=("float64", "float32"), full=False)


def test_numpy_passes_levels_1_and_3(report):
    for level in (1, 3):
        cells = [r for r in report.results if r.level == level]
        assert cells and all(r.status == PASS for r in cells), [r for r in cells if r.status != PASS][:3]


def test_numpy_level_2_is_finite_differences_against_autograd(report):
    cells = [r for r in report.results if r.level == 2]
    f64 = [r for r in cells if r.dtype == "float64"]
    assert f64 and all(r.status == PASS for r in f64), [r for r in f64 if r.status != PASS][:3]
    assert all("finite differences" in r.detail for r in f64)
    # float32 gradients of a forward-only backend are not available, and never shown as passed
    assert all(r.status == NOT_AVAILABLE for r in cells if r.dtype == "float32")
    assert report.exit_code() == 0
