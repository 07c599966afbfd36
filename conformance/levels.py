"""Levels 1-3: op forward, op gradients and the identities of SPEC.md section 6, one backend x case at a time."""
from __future__ import annotations

import time
import traceback
from typing import Any, Callable

import numpy as np

from .cases import Case, make_inputs
from .execute import (NotAvailable, backend_arrays, backend_forward, backend_grads, finite_difference_forward_loss,
                      op_name, required_method, to_host)
from .oracle import (PROJECTIONS, conv2d_reference, cotangent, finite_difference_grads, grad_params,
                     oracle_forward, softmax_attention_reference, torch_autograd_grads)
from .results import ERROR, NOT_AVAILABLE, CheckResult
from .tolerances import FINITE_DIFFERENCE, Comparison, compare, compare_exact, merge, tolerance_for

FD_ENTRIES = 24  # entries per parameter checked by finite differences (a fixed spread, to bound the cost)


class OracleCache:
    """Oracle results per case id, computed once and shared by every backend."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, str], Any] = {}

    def get(self, kind: str, case: Case, make: Callable[[], Any]) -> Any:
        key = (kind, case.id)
        if key not in self._store:
            self._store[key] = make()
        return self._store[key]


def guarded(backend_name: str, case: Case, fn: Callable[[], list[CheckResult]]) -> list[CheckResult]:
    """Run a check; a missing capability is n/a, any other exception is an ERROR cell with its message."""
    start = time.perf_counter()
    try:
        results = fn()
    except NotAvailable as why:
        return [CheckResult(backend_name, case.level, case.id, NOT_AVAILABLE, case.dtype, detail=str(why))]
    except NotImplementedError as why:
        return [CheckResult(backend_name, case.level, case.id, NOT_AVAILABLE, case.dtype,
                            detail=f"not implemented: {why}")]
    except Exception as err:  # a crash in a backend is a failure with its message, not a crash of the suite
        tb = traceback.extract_tb(err.__traceback__)[-1]
        where = f" at {tb.filename.rsplit('/', 1)[-1]}:{tb.lineno}"
        return [CheckResult(backend_name, case.level, case.id, ERROR, case.dtype,
                            detail=f"{type(err).__name__}: {err}{where}")]
    took = time.perf_counter() - start
    for r in results:
        r.seconds = took / max(1, len(results))
    return results


# ----------------------------------------------------------------------------- level 1
def check_forward(backend: Any, name: str, case: Case, cache: OracleCache) -> list[CheckResult]:
    """Level 1: the backend's op output against the float64 oracle (indices exactly)."""
    inputs = make_inputs(case)
    want = cache.get("forward", case, lambda: oracle_forward(case, inputs))
    tol = tolerance_for(case.dtype)

    def run() -> list[CheckResult]:
        got = backend_forward(backend, case, inputs)
        if case.op != "select_neighbors":
            return [CheckResult.from_comparison(name, 1, case.id, case.dtype, compare(got["y"], want["y"], tol))]
        parts = [("indices", compare_exact(got["indices"], want["indices"])),
                 ("affinities", compare(got["affinities"], want["affinities"], tol))]
        if case.expected_indices is not None:
            expected = np.asarray(case.expected_indices)[None]
            oracle_ok = compare_exact(want["indices"], expected)
            if not oracle_ok.passed:
                parts.append(("oracle vs hand-written lower-index rule", oracle_ok))
            parts.append(("indices vs lower-index rule", compare_exact(got["indices"], expected)))
        return [CheckResult.from_comparison(name, 1, case.id, case.dtype, merge(parts))]

    return guarded(name, case, run)


# ----------------------------------------------------------------------------- level 2
def _fd_entries(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in params.items():
        n = v.size
        out[k] = np.unique(np.linspace(0, n - 1, min(n, FD_ENTRIES)).astype(np.int64))
    return out


def finite_difference_subset(loss: Callable[[dict[str, np.ndarray]], float], params: dict[str, np.ndarray],
                             entries: dict[str, np.ndarray], step: float = 1e-6) -> dict[str, np.ndarray]:
    """Central differences for the chosen flat entries of each parameter."""
    out = {}
    for name, idx in entries.items():
        vals = np.zeros(idx.shape[0])
        for j, i in enumerate(idx):
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name].reshape(-1)[i] += step
            minus[name].reshape(-1)[i] -= step
            vals[j] = (loss(plus) - loss(minus)) / (2.0 * step)
        out[name] = vals
    return out


def oracle_grads(case: Case, inputs: dict[str, Any], cache: OracleCache) -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
    """(cotangent, loss, gradients) of the spec by torch autograd in float64 (cached per case)."""
    def make() -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
        y = oracle_forward(case, inputs)["y"]
        cot = cotangent(case, y.shape)
        loss, grads = torch_autograd_grads(case, inputs, cot)
        return cot, loss, grads

    return cache.get("grads", case, make)


def check_gradients(backend: Any, name: str, case: Case, cache: OracleCache) -> list[CheckResult]:
    """Level 2: the backend's value_and_grad against torch autograd of the spec.

    A backend whose capabilities declare the case's ConvNN op forward only (the NumPy oracle) is checked the
    other way round: central finite differences of its float64 forward against the same autograd gradients;
    in other dtypes its gradients are n/a, never passed.
    """
    inputs = make_inputs(case)
    op = op_name(case)

    def run() -> list[CheckResult]:
        cot, want_loss, want = oracle_grads(case, inputs, cache)
        caps = backend.capabilities
        if caps.trainable and op in caps.differentiable:
            got_loss, got = backend_grads(backend, case, inputs, cot)
            tol = tolerance_for(case.dtype)
            parts = [(f"d/d{k}", compare(got[k], want[k], tol)) for k in want]
            parts.append(("loss", compare(np.asarray(got_loss), np.asarray(want_loss), tol)))
            return [CheckResult.from_comparison(name, 2, case.id, case.dtype, merge(parts),
                                                detail="value_and_grad vs torch autograd of the spec")]
        why = f"the backend declares {op} forward only (capabilities.differentiable)"
        if case.dtype != "float64":
            raise NotAvailable(f"no gradient through the ConvNN ops ({why}); finite differences run in float64 only")
        params = grad_params(case, inputs)
        entries = _fd_entries(params)
        fd = finite_difference_subset(finite_difference_forward_loss(backend, case, inputs, cot), params, entries)
        parts = []
        for k, idx in entries.items():
            parts.append((f"d/d{k}", compare(fd[k], want[k].reshape(-1)[idx], FINITE_DIFFERENCE)))
        return [CheckResult.from_comparison(name, 2, case.id, case.dtype, merge(parts),
                                            detail=f"finite differences of the forward vs torch autograd of the "
                                                   f"spec ({why})")]

    return guarded(name, case, run)


# ----------------------------------------------------------------------------- level 3
def _identity_reference(case: Case, inputs: dict[str, Any]) -> np.ndarray:
    """What the identity says the ConvNN output equals, from the direct float64 reference."""
    s = case.shape
    if case.op == "identity_conv3x3":
        w4 = inputs["weight"].reshape(s["O"], s["C"], 3, 3)
        return conv2d_reference(inputs["x"], w4, inputs["bias"], 1)
    if case.op == "identity_conv1x1":
        w4 = inputs["weight"].reshape(s["O"], s["C"], 1, 1)
        return conv2d_reference(inputs["x"], w4, inputs["bias"], 0)
    params = {k: inputs[k] for k in PROJECTIONS}
    k = None if case.op == "identity_attention_dense" else case.cfg.k
    return softmax_attention_reference(inputs["x"], params, case.heads, k)


def _own_baseline(backend: Any, case: Case, inputs: dict[str, Any]) -> np.ndarray:
    """The backend's own conv2d / softmax attention on the same data."""
    s = case.shape
    arrays = backend_arrays(backend, inputs, case.dtype)
    if case.op in ("identity_conv3x3", "identity_conv1x1"):
        ks = 3 if case.op == "identity_conv3x3" else 1
        conv2d = required_method(backend, "conv2d")
        w4 = backend.asarray(inputs["weight"].reshape(s["O"], s["C"], ks, ks), case.dtype)
        return to_host(backend, conv2d(arrays["x"], w4, arrays["bias"], stride=1, padding=ks // 2))
    params = {k: arrays[k] for k in PROJECTIONS}
    if case.op == "identity_attention_dense":
        return to_host(backend, required_method(backend, "multihead_attention")(arrays["x"], params, heads=case.heads))
    fn = required_method(backend, "kvt_attention")
    return to_host(backend, fn(arrays["x"], params, case.cfg.k, heads=case.heads))


def check_identity(backend: Any, name: str, case: Case, cache: OracleCache) -> list[CheckResult]:
    """Level 3: the backend's ConvNN op equals (a) the direct reference and (b) the backend's own baseline op."""
    inputs = make_inputs(case)
    tol = tolerance_for(case.dtype)
    reference = cache.get("identity", case, lambda: _identity_reference(case, inputs))
    sub_own = Case(**{**case.__dict__, "id": case.id + "/own-baseline"})

    def vs_reference() -> list[CheckResult]:
        got = backend_forward(backend, case, inputs)["y"]
        return [CheckResult.from_comparison(name, 3, case.id, case.dtype, compare(got, reference, tol),
                                            detail="ConvNN op vs direct float64 reference")]

    def vs_own() -> list[CheckResult]:
        own = _own_baseline(backend, case, inputs)
        got = backend_forward(backend, case, inputs)["y"]
        return [CheckResult.from_comparison(name, 3, sub_own.id, case.dtype, compare(got, own, tol),
                                            detail="ConvNN op vs the backend's own baseline op")]

    return guarded(name, case, vs_reference) + guarded(name, sub_own, vs_own)


def oracle_self_check(case: Case) -> Comparison:
    """torch autograd of the spec against full central finite differences of the NumPy spec (small cases)."""
    inputs = make_inputs(case)
    y = oracle_forward(case, inputs)["y"]
    cot = cotangent(case, y.shape)
    _, want = torch_autograd_grads(case, inputs, cot)

    def loss(params: dict[str, np.ndarray]) -> float:
        merged = dict(inputs)
        merged.update(params)
        return float(np.sum(oracle_forward(case, merged)["y"] * cot))

    fd = finite_difference_grads(loss, grad_params(case, inputs))
    return merge([(f"d/d{k}", compare(fd[k], want[k], FINITE_DIFFERENCE)) for k in want])
