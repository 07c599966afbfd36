"""The acceptance gate: every installed backend against the float64 spec on a CI subset of levels 1-3.

A backend that is not installed or not implemented is skipped with the reason; `convnn conformance`
runs the full case set.
"""
from __future__ import annotations

import re

import pytest

from convnn.registry import BACKENDS, backend_status
from convnn.conformance.results import PASS
from convnn.conformance.runner import load_entry, run_suite

DTYPES = ("float64", "float32")


def ci_subset(case) -> bool:
    """The tie cases, the first case of each identity, every sixth generated case and every twelfth gradient case
    (the CLI runs them all)."""
    if case.id.startswith("tie-"):
        return True
    if case.id.startswith("id-"):
        return "-0-" in case.id
    m = re.search(r"-(\d+)-", case.id)
    every = 12 if case.id.startswith("grad-") else 6  # gradients compile slowly on jit backends
    return m is None or int(m.group(1)) % every == 0


@pytest.fixture(scope="module", autouse=True)
def keep_jax_x64_setting():
    """The suite turns on 64-bit jax for float64 cases; restore the process-wide setting afterwards."""
    try:
        import jax
    except ImportError:
        yield
        return
    before = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", before)


def _entry(name: str):
    ok, why = backend_status(name)
    if not ok:
        pytest.skip(f"backend {name!r} not available: {why}")
    entry = load_entry(name, DTYPES)
    if not entry.available:
        pytest.skip(f"backend {name!r} not available: {entry.reason}")
    return entry


@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "numpy"])
def test_backend_conforms_on_levels_1_to_3(name):
    _check(name, ci_subset)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "numpy"])
def test_backend_conforms_on_the_whole_quick_set(name):
    _check(name, None)


def _check(name, case_filter) -> None:
    entry = _entry(name)
    report = run_suite([entry], levels=(1, 2, 3), dtypes=DTYPES, full=False, case_filter=case_filter)
    failures = [f"L{r.level} {r.case}: {r.status} {r.cell()} {r.detail}" for r in report.failures]
    assert not failures, f"{name} fails {len(failures)} conformance checks:\n" + "\n".join(failures[:25])
    assert any(r.status == PASS for r in report.results if r.level == 1)


MODEL_SMOKE = ("fwd-vit-convnn-float64", "fwd-vit-attention-float32", "step-vit-convnn-float64")


@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "numpy" and BACKENDS[n].trains_convnn])
def test_backend_model_forward_and_training_step(name):
    """Levels 4 and 5 on two small zoo models (the CLI and the slow test run every model and level 6); forward-only
    backends (onnx) have their own model-forward tests."""
    from convnn.conformance.model_levels import zoo

    if zoo() is None:
        pytest.skip("the model zoo (models.create_model) is absent")
    entry = _entry(name)
    report = run_suite([entry], levels=(4, 5), dtypes=DTYPES, full=False, case_filter=lambda c: c.id in MODEL_SMOKE)
    failures = [f"L{r.level} {r.case}: {r.status} {r.cell()} {r.detail}" for r in report.failures]
    assert not failures, "\n".join(failures)
    assert sum(r.status == PASS for r in report.results) == len(MODEL_SMOKE)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "numpy"])
def test_backend_model_levels_4_to_6(name):
    from convnn.conformance.model_levels import zoo

    if zoo() is None:
        pytest.skip("the model zoo (models.create_model) is absent")
    report = run_suite([_entry(name)], levels=(4, 5, 6), dtypes=DTYPES, full=False)
    failures = [f"L{r.level} {r.case}: {r.status} {r.cell()} {r.detail}" for r in report.failures]
    assert not failures, "\n".join(failures)


class _DeclaresBfloat16:
    """A backend that declares bfloat16 (and float32 only) in its capabilities."""

    def __init__(self, base):
        import dataclasses

        self._base = base
        self.name = f"{base.name}-bfloat16"
        self.capabilities = dataclasses.replace(base.capabilities, dtypes=("float32", "bfloat16"))

    def __getattr__(self, item):
        return getattr(self._base, item)


def test_bfloat16_cases_run_only_where_a_backend_declares_them():
    from convnn.conformance.dtypes import backend_dtypes
    from convnn.conformance.results import NOT_AVAILABLE
    from convnn.conformance.runner import BackendEntry

    numpy = load_entry("numpy", ("bfloat16",))
    assert "bfloat16" not in numpy.dtypes  # numpy declares none: n/a, not run
    wrapped = _DeclaresBfloat16(numpy.backend)
    assert backend_dtypes(wrapped) == ("float32", "bfloat16")
    pick = lambda c: c.id.startswith(("tie-", "id-conv3x3-0"))  # noqa: E731
    skipped = run_suite([numpy], levels=(1,), dtypes=("bfloat16",), full=False, case_filter=pick)
    assert {r.status for r in skipped.results} == {NOT_AVAILABLE} and "capabilities.dtypes" in skipped.results[0].detail
    ran = run_suite([BackendEntry(wrapped.name, wrapped, "declares bfloat16", ("bfloat16",))], levels=(1,),
                    dtypes=("bfloat16",), full=False, case_filter=pick)
    assert ran.results and all(r.dtype == "bfloat16" and "capabilities.dtypes" not in r.detail for r in ran.results)


def test_bfloat16_cases_pass_where_a_backend_declares_them():
    entries = [load_entry(n, ("bfloat16",)) for n in BACKENDS if backend_status(n)[0]]
    declaring = [e for e in entries if e.available and "bfloat16" in e.dtypes]
    if not declaring:
        pytest.skip("no backend here declares bfloat16 (torch does on CUDA)")
    report = run_suite(declaring, levels=(1, 3), dtypes=("bfloat16",), full=False,
                       case_filter=lambda c: c.id.startswith(("tie-", "id-conv3x3-0", "map-01", "att-05")))
    assert len(report.results) >= 10 and {r.dtype for r in report.results} == {"bfloat16"}
    assert not report.failures, [(r.case, r.detail) for r in report.failures]
