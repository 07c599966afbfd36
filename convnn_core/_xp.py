"""Array API plumbing shared by the spec: namespace lookup, flat gathers and input checks."""
from __future__ import annotations

from typing import Any, Sequence

import array_api_compat


def namespace(*arrays: Any) -> Any:
    """The Array API namespace of the given arrays (None entries ignored)."""
    return array_api_compat.array_namespace(*[a for a in arrays if a is not None])


def is_traced(x: Any) -> bool:
    """True for values whose contents cannot be read now (jax tracers, torch fake/meta tensors)."""
    name = type(x).__name__
    module = type(x).__module__
    if module.startswith("jax") and "Tracer" in name:
        return True
    if "FakeTensor" in name or "FunctionalTensor" in name:
        return True
    device = getattr(x, "device", None)
    return str(device) == "meta"


def is_floating(xp: Any, x: Any) -> bool:
    """Whether x has a real floating dtype."""
    return xp.isdtype(x.dtype, "real floating")


def check_float_inputs(xp: Any, **arrays: Any) -> None:
    """All named arrays must be real floating and share one dtype (TypeError naming the field otherwise)."""
    first_name, first = None, None
    for name, arr in arrays.items():
        if arr is None:
            continue
        if not is_floating(xp, arr):
            raise TypeError(f"{name} has dtype {arr.dtype}; a real floating dtype is required")
        if first is None:
            first_name, first = name, arr
        elif arr.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {arr.dtype} but {first_name} has {first.dtype}; all inputs must share one dtype"
            )


def check_finite(xp: Any, name: str, x: Any) -> None:
    """Raise ValueError if x holds NaN or inf (skipped for traced values that cannot be read)."""
    if is_traced(x):
        return
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or inf values; neighbour selection needs finite inputs")


def check_ndim(name: str, x: Any, ndim: int, layout: str) -> None:
    """Raise ValueError if x does not have the expected rank."""
    if x.ndim != ndim:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {ndim} dims {layout}")


def take_rows(xp: Any, table: Any, index: Any) -> Any:
    """out[b, ...] = table[b, index[b, ...]] for a table [B, N, *rest] and integer index [B, *idx].

    Implemented as one flat `take` so it is differentiable in every namespace (no take_along_axis needed).
    """
    b, n = table.shape[0], table.shape[1]
    rest = tuple(table.shape[2:])
    flat = xp.reshape(table, (b * n,) + rest)
    offsets = xp.reshape(xp.arange(b, dtype=index.dtype, device=_device(index)) * n, (b,) + (1,) * (index.ndim - 1))
    flat_index = xp.reshape(index + offsets, (-1,))
    out = xp.take(flat, flat_index, axis=0)
    return xp.reshape(out, tuple(index.shape) + rest)


def take_last(xp: Any, table: Any, index: Any) -> Any:
    """out[..., m] = table[..., index[..., m]]: a gather along the last axis with matching leading dims."""
    lead = tuple(table.shape[:-1])
    rows = 1
    for d in lead:
        rows *= d
    s = table.shape[-1]
    m = index.shape[-1]
    flat = xp.reshape(table, (rows * s,))
    base = xp.reshape(xp.arange(rows, dtype=index.dtype, device=_device(index)) * s, (rows, 1))
    flat_index = xp.reshape(xp.reshape(index, (rows, m)) + base, (-1,))
    return xp.reshape(xp.take(flat, flat_index, axis=0), lead + (m,))


def _device(x: Any) -> Any:
    return array_api_compat.device(x)


def device(x: Any) -> Any:
    """The device an array lives on (Array API `device`)."""
    return array_api_compat.device(x)


def index_dtype(xp: Any) -> Any:
    """The integer dtype used for neighbour indices."""
    return xp.int64


def shape_str(shape: Sequence[int]) -> str:
    """Format a shape for messages."""
    return str(tuple(int(s) for s in shape))
