"""Running a case on a backend through its vocabulary: host data in, NumPy float64 out.

Only the contract of convnn_core/vocabulary.py is used: asarray / to_numpy, the ConvNN ops with
explicit `candidates=`, and value_and_grad for gradients (loss = sum(op(params) * cotangent)).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .dtypes import to_float64
from .oracle import PROJECTIONS, grad_params

ATTENTION_OPS = ("convnn_attention", "identity_attention_dense", "identity_attention_kvt")
MAP_OPS = {"convnn2d": "convnn2d", "identity_conv3x3": "convnn2d", "identity_conv1x1": "convnn2d", "convnn1d": "convnn1d"}


class NotAvailable(Exception):
    """The backend does not offer what a check needs (reported as n/a, never as passed)."""


def required_method(backend: Any, name: str) -> Callable[..., Any]:
    """backend.name if callable, else NotAvailable naming it."""
    fn = getattr(backend, name, None)
    if not callable(fn):
        raise NotAvailable(f"backend has no {name}")
    return fn


def op_name(case: Any) -> str:
    """The vocabulary method a case calls."""
    if case.op in ATTENTION_OPS:
        return "convnn_attention"
    return MAP_OPS.get(case.op, case.op)


def to_host(backend: Any, value: Any) -> np.ndarray:
    """A backend array as float64 NumPy (integers kept as int64)."""
    host = np.asarray(backend.to_numpy(value))
    return host.astype(np.int64) if host.dtype.kind in "iu" else to_float64(host)


def _call(backend: Any, case: Any, arrays: dict[str, Any], candidates: Any) -> Any:
    fn = required_method(backend, op_name(case))
    if case.op in ATTENTION_OPS:
        params = {k: arrays[k] for k in PROJECTIONS + ("taps",)}
        return fn(arrays["x"], params, case.cfg, heads=case.heads, candidates=candidates)
    if case.op == "select_neighbors":
        return fn(arrays["feats"], case.cfg, query_feats=arrays.get("query_feats"), candidates=candidates)
    return fn(arrays["x"], arrays["weight"], arrays.get("bias"), case.cfg, candidates=candidates)


def backend_arrays(backend: Any, inputs: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The case's float inputs as backend arrays of the dtype (None kept)."""
    return {k: (None if v is None else backend.asarray(v, dtype)) for k, v in inputs.items() if k != "candidates"}


def backend_forward(backend: Any, case: Any, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The backend's outputs for a case, as host arrays named like the oracle's."""
    arrays = backend_arrays(backend, inputs, case.dtype)
    out = _call(backend, case, arrays, inputs.get("candidates"))
    if case.op == "select_neighbors":
        idx, aff = out
        return {"indices": to_host(backend, idx), "affinities": to_host(backend, aff)}
    return {"y": to_host(backend, out)}


def _total(backend: Any, value: Any) -> Any:
    method = getattr(value, "sum", None)
    if callable(method):
        return method()
    return backend.xp.sum(value)


def backend_grads(backend: Any, case: Any, inputs: dict[str, Any], cot: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients from the backend's own value_and_grad of sum(op(params) * cotangent)."""
    vag = required_method(backend, "value_and_grad")
    names = list(grad_params(case, inputs))
    arrays = backend_arrays(backend, inputs, case.dtype)
    params = {k: arrays[k] for k in names}
    fixed = {k: v for k, v in arrays.items() if k not in params}
    cot_b = backend.asarray(cot, case.dtype)
    cand = inputs.get("candidates")

    def loss(p: dict[str, Any]) -> Any:
        merged = dict(fixed)
        merged.update(p)
        return _total(backend, _call(backend, case, merged, cand) * cot_b)

    value, grads = vag(loss)(params)
    return float(to_host(backend, value)), {k: to_host(backend, grads[k]) for k in names}


def finite_difference_forward_loss(backend: Any, case: Any, inputs: dict[str, Any],
                                   cot: np.ndarray) -> Callable[[dict[str, np.ndarray]], float]:
    """loss(params) = sum(backend forward * cotangent) on host float64 params (for finite differences)."""
    def loss(params: dict[str, np.ndarray]) -> float:
        merged = dict(inputs)
        merged.update(params)
        return float(np.sum(backend_forward(backend, case, merged)["y"] * cot))

    return loss
