"""The suite can fail: planted faults in fake backends (wrapping the NumPy oracle) must each be reported."""
from __future__ import annotations

import pytest

from convnn.conformance.faults import FAULTS, fault_entry
from convnn.conformance.report import format_console
from convnn.conformance.runner import run_suite


@pytest.fixture(scope="module")
def reports():
    return {f: run_suite([fault_entry(f)], levels=(1, 3), dtypes=("float64", "float32"), full=False)
            for f in FAULTS}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_planted_fault_is_reported_as_failing(reports, fault):
    report = reports[fault]
    assert report.failures, f"the suite missed the planted fault {fault!r}"
    assert report.exit_code() == 1
    text = format_console(report)
    assert "FAILED" in text and "FAIL" in text


def test_wrong_tie_rule_is_caught_by_the_tie_cases_only(reports):
    report = reports["tie-rule"]
    failing = {r.case for r in report.failures}
    assert failing, "wrong tie rule not caught"
    assert all(case.startswith("tie-") for case in failing), failing  # tie-free cases cannot see the rule
    assert any(case.startswith("tie-dot-rank") for case in failing)


def test_dropped_bias_fails_the_map_ops_and_the_conv_identities(reports):
    failing = {r.case for r in reports["dropped-bias"].failures}
    assert any(c.startswith("map-") for c in failing)
    assert any(c.startswith("id-conv3x3") for c in failing)
    assert not any(c.startswith(("att-", "sel-")) for c in failing)  # attention and selection carry no bias


def test_transposed_weight_fails_maps_and_attention(reports):
    failing = {r.case for r in reports["transposed-weight"].failures}
    assert any(c.startswith("map-") for c in failing)
    assert any(c.startswith("att-") for c in failing)
    assert any(c.startswith("id-conv3x3") for c in failing)


def test_missing_self_slot_fails_self_first_cases(reports):
    report = reports["missing-self-slot"]
    failing = {r.case for r in report.failures}
    assert any(c.startswith("att-") for c in failing)
    assert any(c.startswith("map-") for c in failing)
    assert any(c.startswith("tie-dot-self") for c in failing)


def test_unknown_fault_name_is_refused():
    with pytest.raises(ValueError, match="fault='nope'"):
        fault_entry("nope")
