"""The numba backend's sequence-model vocabulary: LayerNorm, GELU, softmax, dense attention, dropout, cross-entropy.

Each op is one HIPS autograd primitive with its own fused VJP (numba kernels from sequence_kernels.py;
softmax's forward and cross-entropy on NumPy), in place of the dozen autograd NumPy nodes NumpyOps
traces. The kernels run on one numba thread (kernel_region). The VJPs keep the input dtype:
autograd's own `mean`/`max` VJPs turn a float32 gradient into float64, which made every GEMM of a
float32 backward pass run in double precision. Semantics, checks and random draws are NumpyOps';
inputs outside the fast path (other dtypes, mixed dtypes, other axes or shapes) go to NumpyOps.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional

import numba
import numpy as np
from autograd.extend import defvjp_argnums, primitive
from autograd.tracer import getval

from convnn.backends.common.numpy_ops import NumpyOps
from convnn.candidates import make_rng
from convnn.pipeline import PROJECTIONS

from . import sequence_kernels as sk
from .primitives import contiguous as _c
from .threads import parallel_region

FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_NO_MASK = np.ones((1, 1, 1), dtype=bool)


@contextlib.contextmanager
def kernel_region() -> Iterator[None]:
    """Run a sequence kernel on one numba thread, BLAS capped to one thread (threads.parallel_region).

    These ops sit between the GEMMs of every block. With numba's OpenMP pool, waking it after each GEMM
    puts its spinning workers against OpenBLAS's spinning workers on the same cores, which cost 2x per
    training step on 2 cores; with the workqueue pool, 2 threads measured the same as 1. One thread
    keeps the pool asleep.
    """
    with parallel_region():
        previous = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            yield
        finally:
            numba.set_num_threads(previous)


def _rows(a: Any) -> np.ndarray:
    """a as a contiguous [R, D] array over its last axis."""
    a = _c(a)
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def fast_dtype(*arrays: Any) -> Optional[np.dtype]:
    """The one float32/float64 dtype of the arrays (boxed or not), else None (NumpyOps handles them)."""
    dtypes = {np.asarray(getval(a)).dtype for a in arrays}
    if len(dtypes) != 1:
        return None
    dtype = dtypes.pop()
    return dtype if dtype in FAST_DTYPES else None


def _grads(argnums: tuple[int, ...], by_arg: dict[int, Any]) -> tuple[Any, ...]:
    """The VJP outputs autograd asked for, in argnums order."""
    return tuple(by_arg[n] for n in argnums)


# ----------------------------------------------------------------------------- LayerNorm
@primitive
def layer_norm_p(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis with gamma, beta [D], fused in one pass per row."""
    x2 = _rows(x)
    out = np.empty_like(x2)
    with kernel_region():
        sk.layer_norm_fwd(x2, _c(gamma), _c(beta), float(eps), sk.row_block(*x2.shape), out)
    return out.reshape(np.shape(x))


def _layer_norm_vjp(argnums, ans, args, kwargs):
    x, gamma, beta, eps = args

    def vjp(g: np.ndarray) -> tuple[Any, ...]:
        x2 = _rows(x)
        n, d = x2.shape
        rows = sk.row_block(n, d)
        blocks = (n + rows - 1) // rows
        dx = np.empty_like(x2)
        dgamma = np.zeros((blocks, d), dtype=np.float64)
        dbeta = np.zeros((blocks, d), dtype=np.float64)
        with kernel_region():
            sk.layer_norm_bwd(_c(g, x2.dtype).reshape(n, d), x2, _c(gamma), float(eps), rows, dx, dgamma, dbeta)
        return _grads(argnums, {0: dx.reshape(np.shape(x)), 1: dgamma.sum(axis=0).astype(x2.dtype),
                                2: dbeta.sum(axis=0).astype(x2.dtype)})

    return vjp


defvjp_argnums(layer_norm_p, _layer_norm_vjp)


# ----------------------------------------------------------------------------- GELU
@primitive
def gelu_p(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, elementwise."""
    xc = _c(x)
    out = np.empty_like(xc)
    with kernel_region():
        sk.gelu_fwd(xc.reshape(-1), xc.dtype == np.float32, out.reshape(-1))
    return out


def _gelu_vjp(argnums, ans, args, kwargs):
    (x,) = args

    def vjp(g: np.ndarray) -> tuple[Any, ...]:
        xc = _c(x).reshape(-1)
        density = np.square(xc)
        density *= -0.5
        np.exp(density, out=density)  # NumPy's vector exp (numba's is scalar libm)
        out = np.empty_like(xc)
        with kernel_region():
            sk.gelu_bwd(xc, _c(g, xc.dtype).reshape(-1), density, xc.dtype == np.float32, out)
        return (out.reshape(np.shape(x)),)

    return vjp


defvjp_argnums(gelu_p, _gelu_vjp)


# ----------------------------------------------------------------------------- softmax
@primitive
def softmax_p(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (NumPy's vector exp; the VJP is one numba pass)."""
    e = np.subtract(x, np.max(x, axis=-1, keepdims=True))
    np.exp(e, out=e)
    e /= np.sum(e, axis=-1, keepdims=True)
    return e


def _softmax_vjp(argnums, ans, args, kwargs):
    def vjp(g: np.ndarray) -> tuple[Any, ...]:
        y = _rows(ans)
        out = np.empty_like(y)
        with kernel_region():
            sk.softmax_bwd(y, _c(g, y.dtype).reshape(y.shape), sk.row_block(*y.shape), out)
        return (out.reshape(np.shape(ans)),)

    return vjp


defvjp_argnums(softmax_p, _softmax_vjp)


# ----------------------------------------------------------------------------- dense attention
@primitive
def attention_p(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, mask: np.ndarray, has_mask: bool,
                keep: np.ndarray, has_keep: bool, drop_scale: Any) -> np.ndarray:
    """Per head: dropout(softmax(q k^T / sqrt(d_head) [masked])) v for q, k, v [B, N, D]."""
    qc = _c(q)
    out = np.empty_like(qc)
    with kernel_region():
        sk.attention_fwd(qc, _c(k, qc.dtype), _c(v, qc.dtype), heads, mask, has_mask, keep, has_keep,
                         drop_scale, out)
    return out


def _attention_vjp(argnums, ans, args, kwargs):
    q, k, v, heads, mask, has_mask, keep, has_keep, drop_scale = args

    def vjp(g: np.ndarray) -> tuple[Any, ...]:
        qc = _c(q)
        dq, dk, dv = np.empty_like(qc), np.empty_like(qc), np.empty_like(qc)
        with kernel_region():
            sk.attention_bwd(qc, _c(k, qc.dtype), _c(v, qc.dtype), heads, mask, has_mask, keep, has_keep,
                             drop_scale, _c(g, qc.dtype), dq, dk, dv)
        return _grads(argnums, {0: dq, 1: dk, 2: dv})

    return vjp


defvjp_argnums(attention_p, _attention_vjp)


def attention_mask(mask: Any, rows: int, n: int) -> np.ndarray:
    """A boolean mask broadcast to the scores [rows, N, N], kept as [1, N, N] when shared by every row."""
    m = np.broadcast_to(np.asarray(getval(mask), dtype=bool), (rows, n, n))
    return _c(m[:1] if m.strides[0] == 0 else m)


# ----------------------------------------------------------------------------- dropout
@primitive
def keep_scale_p(x: np.ndarray, keep: np.ndarray, scale: Any) -> np.ndarray:
    """x * scale where keep, else x * 0: inverted dropout with a drawn mask."""
    xc = _c(x)
    out = np.empty_like(xc)
    with kernel_region():
        sk.keep_scale(xc.reshape(-1), _c(keep).reshape(-1), scale, out.reshape(-1))
    return out


def _keep_scale_vjp(argnums, ans, args, kwargs):
    _, keep, scale = args
    return lambda g: (keep_scale_p(_c(g, scale.dtype), keep, scale),)


defvjp_argnums(keep_scale_p, _keep_scale_vjp)


def dropout_scale(dtype: np.dtype, p: float) -> Any:
    """1 / (1 - p) rounded exactly as NumpyOps' keep.astype(dtype) / (1 - p) rounds it."""
    return (np.ones((), dtype=dtype) / (1.0 - p))[()]


# ----------------------------------------------------------------------------- cross-entropy
@primitive
def cross_entropy_p(logits: np.ndarray, labels: np.ndarray) -> Any:
    """Mean over the batch of logsumexp(logits) - logits[label], in the logits' dtype."""
    m = np.max(logits, axis=1, keepdims=True)
    lse = np.log(np.sum(np.exp(logits - m), axis=1)) + m[:, 0]
    return np.mean(lse - logits[np.arange(logits.shape[0]), labels])


def _cross_entropy_vjp(argnums, ans, args, kwargs):
    logits, labels = args

    def vjp(g: Any) -> tuple[Any, ...]:
        z = np.exp(logits - np.max(logits, axis=1, keepdims=True))
        z /= np.sum(z, axis=1, keepdims=True)
        z[np.arange(logits.shape[0]), labels] -= 1.0
        return ((z * (np.asarray(g, dtype=logits.dtype) / logits.shape[0])).astype(logits.dtype, copy=False),)

    return vjp


defvjp_argnums(cross_entropy_p, _cross_entropy_vjp)


# ----------------------------------------------------------------------------- the mixin
class NumbaSequenceOps:
    """NumpyOps' sequence vocabulary on numba primitives; mixed in before NumpyOps (same signatures)."""

    _check_attention: Callable[..., int]
    linear: Callable[..., Any]

    def layer_norm(self, x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> Any:
        """LayerNorm over the last axis (biased variance), one fused primitive when gamma, beta are [D]."""
        d = x.shape[-1] if len(x.shape) else None
        if (fast_dtype(x, gamma, beta) is None or tuple(gamma.shape) != (d,) or tuple(beta.shape) != (d,)
                or not all(x.shape)):
            return NumpyOps.layer_norm(self, x, gamma, beta, eps)
        return layer_norm_p(x, gamma, beta, float(eps))

    def gelu(self, x: Any) -> Any:
        """Exact GELU x * Phi(x), one elementwise primitive."""
        if fast_dtype(x) is None:
            return NumpyOps.gelu(self, x)
        return gelu_p(x)

    def softmax(self, x: Any, axis: int = -1) -> Any:
        """Softmax along axis (the last axis on the kernels; any other through NumpyOps)."""
        ndim = len(x.shape)
        if fast_dtype(x) is None or ndim == 0 or axis not in (-1, ndim - 1) or not all(x.shape):
            return NumpyOps.softmax(self, x, axis)
        return softmax_p(x)

    def dropout(self, x: Any, p: float, rng: Any, *, train: bool) -> Any:
        """Inverted dropout with NumpyOps' mask draw; the scaling (and its VJP) one primitive."""
        dtype = fast_dtype(x)
        if dtype is None or not train or not (0.0 < float(p) < 1.0) or rng is None:
            return NumpyOps.dropout(self, x, p, rng, train=train)
        keep = make_rng(rng).random(tuple(x.shape)) >= p
        return keep_scale_p(x, keep, dropout_scale(dtype, p))

    def cross_entropy(self, logits: Any, labels: Any) -> Any:
        """Mean of logsumexp(logits) - logits[label] over the batch; the gradient stays in the logits' dtype."""
        labels = np.asarray(getval(labels)).astype(np.int64)
        if len(logits.shape) != 2 or labels.shape != (logits.shape[0],) or fast_dtype(logits) is None:
            return NumpyOps.cross_entropy(self, logits, labels)
        return cross_entropy_p(logits, labels)

    def masked_attention(self, x: Any, params: Mapping[str, Any], mask: Any = None, *, heads: int = 1,
                         dropout: float = 0.0, rng: Any = None, train: bool = False) -> Any:
        """softmax(q k^T / sqrt(d_head) [masked]) v per head, dropout on the probabilities, then wo."""
        self._check_attention(x, params, heads)
        if fast_dtype(x, *(params[name] for name in PROJECTIONS)) is None or not all(x.shape):
            return NumpyOps.masked_attention(self, x, params, mask, heads=heads, dropout=dropout, rng=rng,
                                             train=train)
        if not (0.0 <= float(dropout) < 1.0):
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        active = bool(train) and dropout > 0.0
        if active and rng is None:
            raise ValueError("dropout > 0 with train=True needs an rng= (int seed or numpy Generator)")
        b, n, _ = x.shape
        q = self.linear(x, params["wq"], None)
        k = self.linear(x, params["wk"], None)
        v = self.linear(x, params["wv"], None)
        dtype = fast_dtype(q)
        m = _NO_MASK if mask is None else attention_mask(mask, b * heads, n)
        keep = make_rng(rng).random((b * heads, n, n)) >= dropout if active else _NO_MASK
        scale = dropout_scale(dtype, dropout) if active else dtype.type(1.0)
        y = attention_p(q, k, v, heads, m, mask is not None, keep, active, scale)
        return self.linear(y, params["wo"], None)

    def multihead_attention(self, x: Any, params: Mapping[str, Any], **kw: Any) -> Any:
        """Dense multi-head self-attention with no-bias projections."""
        return self.masked_attention(x, params, None, **kw)
