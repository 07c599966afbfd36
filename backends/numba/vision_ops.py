"""The VGG vocabulary of the numba backend (conv2d, batch_norm, relu, pooling, linear) as HIPS autograd primitives.

`NumbaVisionOps` overrides the NumpyOps methods of the same name and semantics. Each op is one or
two primitives whose forward and VJP run numba kernels (vision_kernels.py, inside a parallel region
where BLAS is held to one thread) and BLAS GEMMs (outside, with BLAS's own threads), instead of
autograd tracing many elementwise NumPy ops. Inputs the kernels do not cover (other dtypes, mixed
dtypes, odd argument types) go to the NumpyOps method, which also raises its errors.
Gradients at ties follow torch: ReLU passes none at exactly 0; max-pool gives a window's gradient to its
first maximum (autograd's NumPy splits both evenly; inputs without ties get identical gradients).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import autograd.numpy as anp
from autograd.extend import Box, defvjp_argnums, primitive
from autograd.tracer import getval

from . import vision_kernels as vk
from .primitives import contiguous as _c
from .threads import parallel_region

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NO_BIAS = {dt: np.zeros(1, dtype=dt) for dt in FLOATS}


def _float_dtype(*arrays: Any) -> Optional[np.dtype]:
    """The one float32/float64 dtype every given ndarray (None skipped) shares, else None (not a kernel case)."""
    dtypes = set()
    for a in arrays:
        if a is None:
            continue
        v = getval(a)
        if not isinstance(v, np.ndarray):
            return None
        dtypes.add(v.dtype)
    if len(dtypes) != 1:
        return None
    dt = dtypes.pop()
    return dt if dt in FLOATS else None


def _per_channel(a: Any, c: int) -> bool:
    return a is None or tuple(np.shape(getval(a))) == (c,)


def blocks(n_items: int, per_item: int, min_block: int = 16384) -> int:
    """How many contiguous runs of items a kernel splits its loop into: each about min_block elements or more."""
    return max(1, min(n_items, (n_items * per_item) // min_block))


def _flat(a: Any, dtype: Optional[np.dtype] = None) -> np.ndarray:
    return _c(a, dtype).reshape(-1)


# ----------------------------------------------------------------------------- conv2d primitives
@primitive
def im2col(x: np.ndarray, kh: int, kw: int, stride: int, top: int, left: int, ho: int, wo: int) -> np.ndarray:
    """cols [C*kh*kw, B*Ho*Wo] of x [B, C, H, W] zero-padded by (top, left): the layout one GEMM convolves."""
    xc = _c(x)
    b, c, h, w = xc.shape
    cols = np.empty((c * kh * kw, b * ho * wo), dtype=xc.dtype)
    with parallel_region():
        vk.im2col(xc.reshape(-1), b, c, h, w, kh, kw, stride, top, left, ho, wo, cols.reshape(-1),
                  blocks(cols.shape[0], cols.shape[1]))
    return cols


def _im2col_vjp(argnums, ans, args, kwargs):
    x, kh, kw, stride, top, left, ho, wo = args

    def vjp(g: np.ndarray) -> tuple:
        b, c, h, w = np.shape(x)
        dx = np.empty((b, c, h, w), dtype=ans.dtype)
        with parallel_region():
            vk.col2im(_flat(g, ans.dtype), b, c, h, w, kh, kw, stride, top, left, ho, wo, dx.reshape(-1),
                      blocks(b * c, kh * kw * ho * wo))
        return (dx,)

    return vjp


defvjp_argnums(im2col, _im2col_vjp)


@primitive
def conv_gemm(cols: np.ndarray, w2: np.ndarray, bias: Optional[np.ndarray], batch: int, ho: int,
              wo: int) -> np.ndarray:
    """y [B, O, Ho, Wo] = w2 [O, CK] @ cols [CK, B*Ho*Wo] regrouped per image, plus bias [O]."""
    colsc, w2c = _c(cols), _c(w2)
    y2 = np.dot(w2c, colsc)  # BLAS with its own threads: outside any numba parallel region
    o = w2c.shape[0]
    out = np.empty((batch, o, ho, wo), dtype=colsc.dtype)
    has_bias = bias is not None
    with parallel_region():
        vk.rows_to_map(y2.reshape(-1), _c(bias) if has_bias else _NO_BIAS[colsc.dtype], has_bias, batch, o, ho * wo,
                       out.reshape(-1), blocks(batch * o, ho * wo))
    return out


def _conv_gemm_vjp(argnums, ans, args, kwargs):
    cols, w2, bias, batch, ho, wo = args

    def vjp(g: np.ndarray) -> tuple:
        dt = ans.dtype
        o = ans.shape[1]
        g2 = np.empty((o, batch * ho * wo), dtype=dt)
        dbias = np.empty(o, dtype=np.float64)
        with parallel_region():
            vk.map_to_rows(_flat(g, dt), batch, o, ho * wo, g2.reshape(-1), dbias, blocks(o, batch * ho * wo))
        grads = {}
        if 0 in argnums:
            grads[0] = np.dot(_c(w2).T, g2)
        if 1 in argnums:
            grads[1] = np.dot(g2, _c(cols).T)
        if 2 in argnums:
            grads[2] = dbias.astype(dt)
        return tuple(grads[n] for n in argnums)

    return vjp


defvjp_argnums(conv_gemm, _conv_gemm_vjp)


# ----------------------------------------------------------------------------- batch norm primitives
def _dims(x: Any) -> tuple[int, int, int]:
    """(B, C, P) of x [B, C, ...]: images, channels, pixels per map."""
    shape = np.shape(x)
    return shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))


def batch_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance [C] (float64) of x [B, C, ...]."""
    b, c, p = _dims(x)
    mean = np.empty(c, dtype=np.float64)
    var = np.empty(c, dtype=np.float64)
    with parallel_region():
        vk.channel_stats(_flat(x), b, c, p, mean, var, blocks(c, b * p))
    return mean, var


def _affine(x: Any, mean: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(x - mean) * scale + shift per channel, in x's dtype."""
    b, c, p = _dims(x)
    xf = _flat(x)
    out = np.empty(np.shape(x), dtype=xf.dtype)
    with parallel_region():
        vk.channel_affine(xf, b, c, p, mean, scale, shift, out.reshape(-1), blocks(b * c, p))
    return out


def _channel_sums(g: Any, x: Any, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(flat g, flat x, sum of g, sum of g * (x - mean)) per channel (float64 sums)."""
    b, c, p = _dims(x)
    xf = _flat(x)
    gf = _flat(g, xf.dtype)
    sum_g = np.empty(c, dtype=np.float64)
    sum_gx = np.empty(c, dtype=np.float64)
    with parallel_region():
        vk.channel_sums(gf, xf, b, c, p, mean, sum_g, sum_gx, blocks(c, b * p))
    return gf, xf, sum_g, sum_gx


@primitive
def batch_norm_train(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                     invstd: np.ndarray) -> np.ndarray:
    """(x - mean) * invstd * gamma + beta per channel, where mean / invstd [C] (float64) are x's own batch
    statistics: a cache of functions of x, so the VJP in x runs through them."""
    return _affine(x, mean, invstd * _c(gamma), _c(beta, np.float64))


def _batch_norm_train_vjp(argnums, ans, args, kwargs):
    x, gamma, beta, mean, invstd = args

    def vjp(g: np.ndarray) -> tuple:
        gf, xf, sum_g, sum_gx = _channel_sums(g, x, mean)
        grads = {1: (sum_gx * invstd).astype(xf.dtype), 2: sum_g.astype(xf.dtype)}
        if 0 in argnums:
            b, c, p = _dims(x)
            dx = np.empty(np.shape(x), dtype=xf.dtype)
            with parallel_region():
                vk.batch_norm_train_dx(gf, xf, b, c, p, mean, invstd, _c(gamma, np.float64), sum_g, sum_gx,
                                       dx.reshape(-1), blocks(b * c, p))
            grads[0] = dx
        return tuple(grads[n] for n in argnums)

    return vjp


defvjp_argnums(batch_norm_train, _batch_norm_train_vjp)


@primitive
def channel_affine(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(x - mean) * scale + shift per channel of x [B, C, ...] (BatchNorm with the running statistics)."""
    return _affine(x, _c(mean), _c(scale), _c(shift))


def _channel_affine_vjp(argnums, ans, args, kwargs):
    x, mean, scale, shift = args

    def vjp(g: np.ndarray) -> tuple:
        scale_c = _c(scale)
        grads = {}
        if any(n in argnums for n in (1, 2, 3)):
            _, xf, sum_g, sum_gx = _channel_sums(g, x, _c(mean))
            grads.update({1: (-sum_g * scale_c).astype(xf.dtype), 2: sum_gx.astype(xf.dtype),
                          3: sum_g.astype(xf.dtype)})
        if 0 in argnums:
            b, c, p = _dims(x)
            dx = np.empty(np.shape(x), dtype=ans.dtype)
            with parallel_region():
                vk.channel_scale(_flat(g, ans.dtype), b, c, p, scale_c, dx.reshape(-1), blocks(b * c, p))
            grads[0] = dx
        return tuple(grads[n] for n in argnums)

    return vjp


defvjp_argnums(channel_affine, _channel_affine_vjp)


# ----------------------------------------------------------------------------- relu, pooling, linear primitives
@primitive
def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0) elementwise."""
    xc = _c(x)
    out = np.empty_like(xc)
    with parallel_region():
        vk.relu(xc.reshape(-1), out.reshape(-1), blocks(xc.size, 1, 65536))
    return out


def _relu_vjp(argnums, ans, args, kwargs):
    def vjp(g: np.ndarray) -> tuple:
        dx = np.empty_like(ans)
        with parallel_region():
            vk.relu_grad(_flat(g, ans.dtype), ans.reshape(-1), dx.reshape(-1), blocks(ans.size, 1, 65536))
        return (dx,)

    return vjp


defvjp_argnums(relu, _relu_vjp)


def max_pool(x: np.ndarray, size: int, keep_arg: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(max over size x size windows with stride size, in-map index of each window's first maximum or an
    empty placeholder when not keep_arg)."""
    xc = _c(x)
    b, c, h, w = xc.shape
    ho, wo = h // size, w // size
    out = np.empty((b, c, ho, wo), dtype=xc.dtype)
    arg = np.empty(out.shape if keep_arg else (1,), dtype=np.int64)
    with parallel_region():
        vk.max_pool(xc.reshape(-1), b * c, h, w, size, ho, wo, out.reshape(-1), arg.reshape(-1), keep_arg,
                    blocks(b * c, h * w))
    return out, arg


# the argmax of the latest traced max_pool2d forward, taken by its VJP maker (autograd builds the VJP node
# right after the forward returns, with the very same output array)
_POOL_ARG: dict[str, Any] = {}


@primitive
def max_pool2d(x: np.ndarray, size: int, keep_arg: bool) -> np.ndarray:
    """Max over size x size windows with stride size (floor); keep_arg: hold the argmax for the VJP."""
    out, arg = max_pool(x, size, keep_arg)
    if keep_arg:
        _POOL_ARG.update(out=out, arg=arg)
    return out


def _max_pool2d_vjp(argnums, ans, args, kwargs):
    x, size = args[:2]
    held, arg = _POOL_ARG.pop("out", None), _POOL_ARG.pop("arg", None)
    if held is not ans:
        arg = max_pool(x, size)[1]

    def vjp(g: np.ndarray) -> tuple:
        b, c, h, w = np.shape(x)
        dx = np.empty((b, c, h, w), dtype=ans.dtype)
        with parallel_region():
            vk.max_pool_grad(_flat(g, ans.dtype), arg.reshape(-1), b * c, h, w, ans.shape[2], ans.shape[3],
                             dx.reshape(-1), blocks(b * c, h * w))
        return (dx,)

    return vjp


defvjp_argnums(max_pool2d, _max_pool2d_vjp)


@primitive
def adaptive_avg_pool2d(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Mean over torch's adaptive bins: [B, C, H, W] -> [B, C, oh, ow]."""
    xc = _c(x)
    b, c, h, w = xc.shape
    out = np.empty((b, c, oh, ow), dtype=xc.dtype)
    with parallel_region():
        vk.adaptive_avg_pool(xc.reshape(-1), b * c, h, w, oh, ow, out.reshape(-1), blocks(b * c, h * w + oh * ow))
    return out


def _adaptive_avg_pool2d_vjp(argnums, ans, args, kwargs):
    x = args[0]

    def vjp(g: np.ndarray) -> tuple:
        b, c, h, w = np.shape(x)
        dx = np.empty((b, c, h, w), dtype=ans.dtype)
        with parallel_region():
            vk.adaptive_avg_pool_grad(_flat(g, ans.dtype), b * c, h, w, ans.shape[2], ans.shape[3],
                                      dx.reshape(-1), blocks(b * c, h * w + ans.shape[2] * ans.shape[3]))
        return (dx,)

    return vjp


defvjp_argnums(adaptive_avg_pool2d, _adaptive_avg_pool2d_vjp)


@primitive
def linear2d(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
    """x [N, D] @ weight.T [D, O] + bias, one BLAS GEMM."""
    y = np.dot(_c(x), _c(weight).T)
    if bias is not None:
        y += getval(bias)
    return y


def _linear2d_vjp(argnums, ans, args, kwargs):
    x, weight, bias = args

    def vjp(g: np.ndarray) -> tuple:
        gc = _c(g, ans.dtype)
        grads = {}
        if 0 in argnums:
            grads[0] = np.dot(gc, _c(weight))
        if 1 in argnums:
            grads[1] = np.dot(gc.T, _c(x))
        if 2 in argnums:
            grads[2] = gc.sum(axis=0)
        return tuple(grads[n] for n in argnums)

    return vjp


defvjp_argnums(linear2d, _linear2d_vjp)


# ----------------------------------------------------------------------------- the mixin
def conv_pads(weight_shape: tuple, stride: Any, padding: Any) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding, with NumpyOps.conv2d's checks and errors."""
    kh, kw = weight_shape[2], weight_shape[3]
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride={stride!r} must be an int >= 1")
    if padding == "same":
        if stride != 1:
            raise ValueError("padding='same' needs stride=1")
        return (kh - 1) // 2, kh - 1 - (kh - 1) // 2, (kw - 1) // 2, kw - 1 - (kw - 1) // 2
    if isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        return (padding,) * 4
    raise ValueError(f"padding={padding!r} must be an int >= 0 or 'same'")


class NumbaVisionOps:
    """conv2d, batch_norm, relu, max_pool2d, adaptive_avg_pool2d and linear on numba kernels and BLAS.

    Mixed before NumpyOps: same signatures and semantics, and anything outside the kernels' cases
    (dtypes other than one shared float32/float64, unusual shapes) is handed to NumpyOps.
    """

    def conv2d(self, x: Any, weight: Any, bias: Optional[Any], *, stride: int = 1,
               padding: Union[int, str] = 0) -> Any:
        """Cross-correlation on NCHW: im2col in numba, one GEMM over the whole batch, bias fused."""
        if (_float_dtype(x, weight, bias) is None or np.ndim(getval(x)) != 4 or np.ndim(getval(weight)) != 4
                or not _per_channel(bias, np.shape(getval(weight))[0])):
            return super().conv2d(x, weight, bias, stride=stride, padding=padding)
        b, c, h, w = x.shape
        o, ci, kh, kw = weight.shape
        if ci != c:
            raise ValueError(f"weight has {ci} input channels but x has {c} (x shape {tuple(x.shape)})")
        top, bottom, left, right = conv_pads(weight.shape, stride, padding)
        hp, wp = h + top + bottom, w + left + right
        ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {hp}x{wp}")
        cols = im2col(x, kh, kw, stride, top, left, ho, wo)
        return conv_gemm(cols, anp.reshape(weight, (o, ci * kh * kw)), bias, b, ho, wo)

    def linear(self, x: Any, weight: Any, bias: Optional[Any]) -> Any:
        """x @ weight.T + bias over the last axis, leading axes folded into one GEMM."""
        if (_float_dtype(x, weight, bias) is None or np.ndim(getval(x)) < 1 or np.ndim(getval(weight)) != 2
                or not _per_channel(bias, np.shape(getval(weight))[0])):
            return super().linear(x, weight, bias)
        lead = tuple(x.shape[:-1])
        x2 = x if len(lead) == 1 else anp.reshape(x, (-1, x.shape[-1]))
        y = linear2d(x2, weight, bias)
        return y if len(lead) == 1 else anp.reshape(y, lead + (y.shape[-1],))

    def batch_norm(self, x: Any, gamma: Any, beta: Any, state: Mapping[str, Any], *, train: bool,
                   momentum: float = 0.1, eps: float = 1e-5) -> tuple[Any, dict]:
        """BatchNorm2d: batch statistics in training (running stats updated with the unbiased var), else running."""
        c = np.shape(getval(x))[1] if np.ndim(getval(x)) == 4 else -1
        try:
            run_mean, run_var = state["mean"], state["var"]
        except (TypeError, KeyError):
            return super().batch_norm(x, gamma, beta, state, train=train, momentum=momentum, eps=eps)
        if (c < 0 or _float_dtype(x, gamma, beta, run_mean, run_var) is None
                or not all(_per_channel(a, c) for a in (gamma, beta, run_mean, run_var))):
            return super().batch_norm(x, gamma, beta, state, train=train, momentum=momentum, eps=eps)
        if not train:
            scale = gamma / anp.sqrt(run_var + eps)
            return channel_affine(x, run_mean, scale, beta), dict(state)
        mean, var = batch_stats(getval(x))
        y = batch_norm_train(x, gamma, beta, mean, 1.0 / np.sqrt(var + eps))
        b, _, p = _dims(x)
        dt = getval(x).dtype
        return y, self._running_update(state, mean.astype(dt), var.astype(dt), b * p, momentum)

    @staticmethod
    def _running_update(state: Mapping[str, Any], mean_v: np.ndarray, var_v: np.ndarray, n: int,
                        momentum: float) -> dict:
        """The running statistics after one training batch (NumpyOps' formula and dtypes)."""
        unbiased = var_v * (n / max(n - 1, 1))
        run_mean, run_var = np.asarray(getval(state["mean"])), np.asarray(getval(state["var"]))
        return {
            "mean": ((1.0 - momentum) * run_mean + momentum * mean_v).astype(run_mean.dtype),
            "var": ((1.0 - momentum) * run_var + momentum * unbiased).astype(run_var.dtype),
        }

    def relu(self, x: Any) -> Any:
        """max(x, 0) elementwise (no gradient at exactly 0, as torch)."""
        if _float_dtype(x) is None:
            return super().relu(x)
        return relu(x)

    def max_pool2d(self, x: Any, size: int = 2) -> Any:
        """Max over size x size windows with stride size, no padding (floor)."""
        shape = np.shape(getval(x))
        if (_float_dtype(x) is None or len(shape) != 4 or isinstance(size, bool) or not isinstance(size, int)
                or size < 1 or shape[2] < size or shape[3] < size):
            return super().max_pool2d(x, size)
        return max_pool2d(x, size, isinstance(x, Box))

    def adaptive_avg_pool2d(self, x: Any, output_size: Sequence[int]) -> Any:
        """Average over torch's bins: rows floor(i*H/oh) .. ceil((i+1)*H/oh)."""
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if (_float_dtype(x) is None or np.ndim(getval(x)) != 4 or len(size) != 2
                or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in size)):
            return super().adaptive_avg_pool2d(x, output_size)
        return adaptive_avg_pool2d(x, int(size[0]), int(size[1]))
