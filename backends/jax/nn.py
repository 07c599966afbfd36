"""The zoo's other layers on jax arrays, with torch.nn.functional semantics and defaults."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .arrays import as_key


def conv2d(x: jnp.ndarray, weight: jnp.ndarray, bias: Optional[jnp.ndarray], *, stride: int = 1,
           padding: Union[int, str] = 0, precision: Any = None) -> jnp.ndarray:
    """Cross-correlation on NCHW with OIHW weights; padding an int or 'same' (stride 1)."""
    o, ci, kh, kw = weight.shape
    if ci != x.shape[1]:
        raise ValueError(f"weight has {ci} input channels but x has {x.shape[1]} (x shape {tuple(x.shape)})")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride={stride!r} must be an int >= 1")
    if padding == "same":
        if stride != 1:
            raise ValueError("padding='same' needs stride=1")
        pads = [((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2)]
    elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        pads = [(padding, padding), (padding, padding)]
    else:
        raise ValueError(f"padding={padding!r} must be an int >= 0 or 'same'")
    hp, wp = x.shape[2] + sum(pads[0]), x.shape[3] + sum(pads[1])
    if hp < kh or wp < kw:
        raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {hp}x{wp}")
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    if patches_win(ci, ho, wo):
        y = _patch_conv(x, weight, stride, pads, ho, wo, precision)
    else:
        y = lax.conv_general_dilated(x, weight, (stride, stride), pads, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                     precision=precision)
    return y if bias is None else y + bias[None, :, None, None]


def patches_win(in_channels: int, out_h: int, out_w: int) -> bool:
    """Whether the patch-matrix product beats XLA's CPU convolution: on maps of at most 16 outputs (XLA took
    826 ms for VGG-11's 512->512 conv at 2x2, B=32, where the product takes 11 ms) and on 1-4 input channels
    (the RGB stem: 5 against 17 ms); XLA's own convolution wins on the maps between (measured on 2 cores)."""
    return out_h * out_w <= 16 or in_channels <= 4


def _patch_conv(x: jnp.ndarray, weight: jnp.ndarray, stride: int, pads: list, ho: int, wo: int,
                precision: Any) -> jnp.ndarray:
    """The convolution as one product of the kh*kw shifted (strided) views with the weights."""
    o, ci, kh, kw = weight.shape
    xp = jnp.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
    views = [xp[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
             for i in range(kh) for j in range(kw)]
    cols = jnp.stack(views, axis=2)  # [B, C, kh*kw, Ho, Wo]
    return jnp.einsum("bckhw,ock->bohw", cols, weight.reshape(o, ci, kh * kw), precision=precision)


def linear(x: jnp.ndarray, weight: jnp.ndarray, bias: Optional[jnp.ndarray], *, precision: Any = None) -> jnp.ndarray:
    """x @ weight.T + bias over the last axis."""
    y = jnp.matmul(x, weight.T, precision=precision)
    return y if bias is None else y + bias


def batch_norm(x: jnp.ndarray, gamma: jnp.ndarray, beta: jnp.ndarray, state: Mapping[str, jnp.ndarray], *,
               train: bool, momentum: float = 0.1, eps: float = 1e-5) -> tuple[jnp.ndarray, dict]:
    """BatchNorm2d: batch statistics (biased var) in training with the running state updated by the unbiased
    var, as torch does; the running statistics otherwise."""
    shape = (1, x.shape[1], 1, 1)
    if train:
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean = jnp.mean(x, axis=(0, 2, 3))
        centred = x - mean.reshape(shape)
        var = jnp.mean(centred * centred, axis=(0, 2, 3))
        y = centred / jnp.sqrt(var.reshape(shape) + eps)
        unbiased = lax.stop_gradient(var) * (n / max(n - 1, 1))
        new_state = {
            "mean": ((1.0 - momentum) * state["mean"] + momentum * lax.stop_gradient(mean)).astype(state["mean"].dtype),
            "var": ((1.0 - momentum) * state["var"] + momentum * unbiased).astype(state["var"].dtype),
        }
    else:
        y = (x - state["mean"].reshape(shape)) / jnp.sqrt(state["var"].reshape(shape) + eps)
        new_state = dict(state)
    return y * gamma.reshape(shape) + beta.reshape(shape), new_state


def layer_norm(x: jnp.ndarray, gamma: jnp.ndarray, beta: jnp.ndarray, eps: float = 1e-5) -> jnp.ndarray:
    """LayerNorm over the last axis (biased variance)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return centred / jnp.sqrt(var + eps) * gamma + beta


def relu(x: jnp.ndarray) -> jnp.ndarray:
    """max(x, 0)."""
    return jax.nn.relu(x)


def gelu(x: jnp.ndarray) -> jnp.ndarray:
    """Exact (erf) GELU, torch's default."""
    return jax.nn.gelu(x, approximate=False)


def max_pool2d(x: jnp.ndarray, size: int = 2) -> jnp.ndarray:
    """Max over size x size windows with stride size, no padding (floor)."""
    b, c, h, w = x.shape
    if h // size < 1 or w // size < 1:
        raise ValueError(f"max_pool2d size={size} is larger than the map {h}x{w}")
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, size, size), (1, 1, size, size), "VALID")


def _bin_matrix(n_in: int, n_out: int, dtype: Any) -> np.ndarray:
    """[n_out, n_in] averaging weights of torch's adaptive bins: floor(i*n/o) .. ceil((i+1)*n/o)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m.astype(dtype)


def adaptive_avg_pool2d(x: jnp.ndarray, output_size: Union[int, Sequence[int]]) -> jnp.ndarray:
    """Average over torch's bins (overlapping when the size does not divide), as two small matmuls."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    oh, ow = int(output_size[0]), int(output_size[1])
    b, c, h, w = x.shape
    if h % oh == 0 and w % ow == 0:
        return jnp.mean(x.reshape(b, c, oh, h // oh, ow, w // ow), axis=(3, 5))
    rows = jnp.asarray(_bin_matrix(h, oh, x.dtype))
    cols = jnp.asarray(_bin_matrix(w, ow, x.dtype))
    return jnp.einsum("ih,bchw,jw->bcij", rows, x, cols, precision=lax.Precision.HIGHEST)


def dropout(x: jnp.ndarray, p: float, rng: Any, *, train: bool) -> jnp.ndarray:
    """Inverted dropout in training (keep with probability 1 - p, scale 1 / (1 - p)), identity otherwise."""
    if not (0.0 <= float(p) < 1.0):
        raise ValueError(f"dropout p={p!r} must be in [0, 1)")
    if not train or p == 0.0:
        return x
    if rng is None:
        raise ValueError("dropout with train=True and p > 0 needs an rng (a jax key or an int seed)")
    keep = jax.random.bernoulli(as_key(rng), 1.0 - p, x.shape)
    return jnp.where(keep, x / (1.0 - p), jnp.zeros((), x.dtype))


def softmax(x: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """Numerically stable softmax."""
    return jax.nn.softmax(x, axis=axis)


def cross_entropy(logits: jnp.ndarray, labels: Any) -> jnp.ndarray:
    """Mean of logsumexp(logits) - logits[label] over the batch."""
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"cross_entropy needs logits [B, classes] and labels [B]; got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    lse = jax.nn.logsumexp(logits, axis=1)
    picked = jnp.take_along_axis(logits, labels.astype(jnp.int32)[:, None], axis=1)[:, 0]
    return jnp.mean(lse - picked)
