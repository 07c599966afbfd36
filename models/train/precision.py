"""Mixed precision for the trainer: bfloat16 compute with float32 master weights, optimizer state and checkpoints.

The parameters, the model state (BatchNorm statistics) and AdamW's moments stay float32; only the forward and
backward computation runs in bfloat16:

* torch: `torch.autocast(device, bfloat16)` around the forward (CPU and CUDA), as torch users know it.
* jax: the same policy applied through the backend vocabulary (jax has no autocast): the matmul-heavy ops
  (conv2d, linear, the attention baselines) compute in bfloat16; normalisations, softmax and the loss in float32.

On both, a ConvNN op (convnn2d, convnn1d, convnn_attention, select_neighbors) computes in bfloat16 where the
backend declares bfloat16 for the ConvNN ops on its device (torch on CUDA) and in float32 elsewhere (torch on the
CPU, jax), so neighbour selection is never scored in a dtype the backend does not support. Gradients reach the
float32 master weights through the casts, so the optimizer update is float32 throughout.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

from convnn.tree import tree_map
from convnn.vocabulary import ATTENTION_OPS, CONVNN_OPS

PRECISIONS = ("fp32", "bf16")
# the shipped backends with mixed-precision training (capabilities.mixed_precision), for error messages
BF16_TRAINERS = "torch or jax"
LOW_OPS = ("conv2d", "linear") + ATTENTION_OPS   # bfloat16 compute (jax; torch's autocast decides these itself)
FLOAT32_OPS = ("batch_norm", "layer_norm", "softmax", "cross_entropy")  # float32 compute on both


def check_precision(precision: str, backend: Any) -> None:
    """ValueError unless the loaded `backend` can train at `precision` (its capabilities.mixed_precision)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not allowed; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and getattr(backend.capabilities, "mixed_precision", None) is None:
        raise ValueError(f"precision='bf16' is not available on backend {backend.name!r} (it has no mixed-precision "
                         f"training); bf16 training runs on {BF16_TRAINERS} (--backend torch or --backend jax), or "
                         f"keep --precision fp32")


class MixedPrecision:
    """How one run computes: `backend(b)` is what the model is built on, `autocast()` wraps every forward."""

    def __init__(self, precision: str, backend: Any) -> None:
        check_precision(precision, backend)
        self.name = precision
        self.inner = backend
        self.enabled = precision == "bf16"

    def backend(self) -> Any:
        """The backend the model computes with: the backend itself in fp32, the casting view of it in bf16."""
        return _CastingBackend(self.inner) if self.enabled else self.inner

    def autocast(self) -> Any:
        """The backend's autocast to bfloat16 in bf16 where it has one; else a context that does nothing."""
        if not (self.enabled and _autocasts(self.inner)):
            return contextlib.nullcontext()
        return self.inner.autocast("bfloat16")

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn called under autocast() (the identity in fp32)."""
        if not self.enabled:
            return fn

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self.autocast():
                return fn(*args, **kwargs)

        return wrapped

    def keep_dtypes(self, new: Any, old: Any) -> Any:
        """`new` (a pytree such as the model state) cast leaf by leaf to the dtypes of `old` (float32 master)."""
        if not self.enabled:
            return new
        return tree_map(lambda n, o: _cast(n, _dtype_name(o)) if _is_float(n) else n, new, old)


def _autocasts(backend: Any) -> bool:
    """Whether the backend casts inside its ops by an autocast context (torch) rather than by the trainer."""
    return getattr(backend.capabilities, "mixed_precision", None) == "autocast"


# ----------------------------------------------------------------------------- casting
def _is_float(a: Any) -> bool:
    dtype = getattr(a, "dtype", None)
    if dtype is None or not hasattr(a, "shape"):
        return False
    return _dtype_name(a) in ("float16", "bfloat16", "float32", "float64")


def _dtype_name(a: Any) -> str:
    return str(a.dtype).rsplit(".", 1)[-1]


def _cast(a: Any, dtype: str) -> Any:
    """a in `dtype` (a name): torch's .to, jax's .astype; a no-op when it already is."""
    if _dtype_name(a) == dtype:
        return a
    if type(a).__module__.startswith("torch"):
        import torch

        return a.to(getattr(torch, dtype))
    return a.astype(dtype)


def _cast_tree(value: Any, dtype: str) -> Any:
    """Every floating array in value (arrays, dicts, lists, tuples) cast to dtype; anything else as it is."""
    if isinstance(value, dict):
        return {k: _cast_tree(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_cast_tree(v, dtype) for v in value)
    if _is_float(value) and not type(value).__module__.startswith("numpy"):
        return _cast(value, dtype)
    return value


def _first_float_dtype(args: tuple[Any, ...]) -> Optional[str]:
    for a in args:
        if _is_float(a):
            return _dtype_name(a)
    return None


class _CastingBackend:
    """A view of a backend whose ops cast their inputs to the dtype the bf16 policy gives them (module docstring);
    everything else is the backend's own."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._autocasts = _autocasts(inner)
        convnn_dtypes = getattr(inner.capabilities, "dtypes", ())
        self._convnn_dtype = "bfloat16" if "bfloat16" in convnn_dtypes else "float32"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in CONVNN_OPS:
            return self._convnn_op(attr)
        if name in FLOAT32_OPS:
            return _casting(attr, "float32")
        if name in LOW_OPS and not self._autocasts:
            return _casting(attr, "bfloat16")
        return attr

    def __repr__(self) -> str:
        return f"<bf16 mixed precision view of {self._inner!r}>"

    def _convnn_op(self, op: Callable[..., Any]) -> Callable[..., Any]:
        """The ConvNN op in its supported dtype, outside torch's autocast, the result back in the input's dtype."""
        dtype = self._convnn_dtype

        def run(*args: Any, **kwargs: Any) -> Any:
            back = _first_float_dtype(args)
            with self._no_autocast():
                out = op(*_cast_tree(args, dtype), **_cast_tree(kwargs, dtype))
            return _cast_tree(out, back) if back is not None else out

        return run

    def _no_autocast(self) -> Any:
        return self._inner.autocast(None) if self._autocasts else contextlib.nullcontext()


def _casting(op: Callable[..., Any], dtype: str) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        return op(*_cast_tree(args, dtype), **_cast_tree(kwargs, dtype))

    return run
