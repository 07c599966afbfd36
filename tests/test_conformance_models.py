"""Levels 4-6 (zoo models): shared-parameter forward, one training step, a short curve; and that they can fail."""
from __future__ import annotations

import pytest

from convnn.conformance import model_levels
from convnn.conformance.faults import fault_entry
from convnn.conformance.results import NOT_AVAILABLE, PASS
from convnn.conformance.runner import BackendEntry, load_entry, run_suite

pytestmark = pytest.mark.skipif(model_levels.zoo() is None, reason="the model zoo (models.create_model) is absent")


@pytest.fixture(scope="module")
def numpy_report():
    return run_suite([load_entry("numpy", ("float64", "float32"))], levels=(4, 5), dtypes=("float64", "float32"),
                     full=False)


def test_numpy_model_forward_passes_in_both_dtypes(numpy_report):
    cells = [r for r in numpy_report.results if r.level == 4]
    assert {r.dtype for r in cells} == {"float64", "float32"}
    assert cells and all(r.status == PASS for r in cells), [r for r in cells if r.status != PASS][:3]


def test_numpy_training_step_passes_where_it_can_train(numpy_report):
    cells = [r for r in numpy_report.results if r.level == 5]
    trains = [r for r in cells if "convnn" not in r.case]
    assert trains and all(r.status == PASS for r in trains), trains
    # the oracle's ConvNN ops are forward only: those steps are n/a, never passed
    assert all(r.status == NOT_AVAILABLE for r in cells if "convnn" in r.case)


def test_model_levels_are_not_available_without_the_zoo(monkeypatch):
    monkeypatch.setattr(model_levels, "zoo", lambda: None)
    report = run_suite([load_entry("numpy", ("float64",))], levels=(4,), dtypes=("float64",), full=False)
    assert report.results and {r.status for r in report.results} == {NOT_AVAILABLE}
    assert "model zoo" in report.results[0].detail


def test_a_dropped_bias_is_caught_at_model_level():
    report = run_suite([fault_entry("dropped-bias", ("float64",))], levels=(4,), dtypes=("float64",), full=False,
                       case_filter=lambda c: "vgg11-convnn" in c.id)
    assert report.failures and report.exit_code() == 1


class _ScaledGradient:
    """A trainable backend whose value_and_grad returns 1.01 x the gradient (a planted level-5 fault)."""

    def __init__(self, base):
        self._base = base
        self.name = "fault:scaled-gradient"

    def __getattr__(self, item):
        return getattr(self._base, item)

    def value_and_grad(self, fn, has_aux=False):
        inner = self._base.value_and_grad(fn, has_aux=has_aux)

        def wrapped(params, *args, **kwargs):
            value, grads = inner(params, *args, **kwargs)
            from convnn.tree import tree_map

            return value, tree_map(lambda g: g * 1.01, grads)

        return wrapped


def _trainable_entry(dtypes):
    for name in ("torch", "numba", "jax"):
        entry = load_entry(name, dtypes)
        if entry.available:
            return entry
    pytest.skip("no trainable backend (torch, numba or jax) is installed")


def test_a_wrong_gradient_is_caught_by_the_training_step():
    base = _trainable_entry(("float64",))
    fake = BackendEntry("fault:scaled-gradient", _ScaledGradient(base.backend), "planted fault", ("float64",))
    report = run_suite([fake], levels=(5,), dtypes=("float64",), full=False,
                       case_filter=lambda c: c.id == "step-vit-attention-float64")
    assert [r.status for r in report.results] == ["FAIL"], report.results
    assert "d/du" in report.results[0].detail
