"""The non-ConvNN vocabulary (NN, baseline attention, array and training ops) written with one NumPy-like module.

`NumpyOps(numpy)` runs on plain NumPy arrays; `NumpyOps(autograd.numpy)` is the same code traced by
HIPS autograd, so a backend whose ConvNN kernels are autograd primitives (numba) trains with it.
Semantics follow torch.nn.functional (see convnn_core/vocabulary.py).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import array_api_compat.numpy
import numpy as np

from convnn.attention import band_mask as spec_band_mask
from convnn.candidates import make_rng
from convnn.pipeline import PROJECTIONS
from convnn.tree import tree_leaves, tree_map, tree_with_leaves
from convnn.vocabulary import check_adamw_hyperparameters

AUTOGRAD_HINT = "pip install 'convnn[numba]'"
DTYPES = ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")


def _value(x: Any) -> Any:
    """The plain value inside an autograd box (the array itself when not traced)."""
    while hasattr(x, "_value") and type(x).__module__.startswith("autograd"):
        x = x._value
    return x


def _import_autograd() -> Any:
    try:
        import autograd
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"training on NumPy arrays needs HIPS autograd, which is not installed; install it with {AUTOGRAD_HINT}"
        ) from err
    return autograd


def _im2col(x: np.ndarray, kh: int, kw: int, stride: int, ho: int, wo: int) -> np.ndarray:
    """[B, C, Hp, Wp] -> [B, C*kh*kw, Ho*Wo], column (c, i, j) holding x[c, s*y + i, s*x + j]."""
    b, c = x.shape[:2]
    cols = np.empty((b, c, kh * kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i * kw + j] = x[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
    return cols.reshape(b, c * kh * kw, ho * wo)


def _col2im(dcols: np.ndarray, shape: tuple[int, ...], kh: int, kw: int, stride: int, ho: int, wo: int) -> np.ndarray:
    """The transpose of _im2col: overlapping windows add up."""
    b, c = shape[:2]
    d = dcols.reshape(b, c, kh * kw, ho, wo)
    dx = np.zeros(shape, dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] += d[:, :, i * kw + j]
    return dx


def _patch_matmul(x: np.ndarray, w2: np.ndarray, kh: int, kw: int, stride: int, ho: int, wo: int) -> np.ndarray:
    """w2 [O, C*kh*kw] applied to every window of x: [B, O, Ho*Wo]."""
    return np.matmul(w2, _im2col(x, kh, kw, stride, ho, wo))


def _traced_patch_matmul() -> Any:
    """_patch_matmul as an autograd primitive with explicit VJPs (autograd's own slice VJP scatters with ufunc.at,
    which is many times slower than the col2im loop)."""
    try:
        from autograd.extend import defvjp, primitive
    except ImportError:
        return None
    prim = primitive(_patch_matmul)

    def vjp_x(ans: Any, x: Any, w2: Any, kh: int, kw: int, stride: int, ho: int, wo: int) -> Any:
        return lambda g: _col2im(np.matmul(w2.T, g), x.shape, kh, kw, stride, ho, wo)

    def vjp_w(ans: Any, x: Any, w2: Any, kh: int, kw: int, stride: int, ho: int, wo: int) -> Any:
        def grad(g: Any) -> Any:
            cols = _im2col(x, kh, kw, stride, ho, wo)
            return np.matmul(g, cols.transpose(0, 2, 1)).sum(axis=0).astype(w2.dtype, copy=False)
        return grad

    defvjp(prim, vjp_x, vjp_w)
    return prim


_PATCH_MATMUL_TRACED = _traced_patch_matmul()



def host_rng(seed: int) -> np.random.Generator:
    """A NumPy Generator (PCG64) seeded with an int `seed` (the host RNG of the NumPy-array backends)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed={seed!r} must be an int")
    return np.random.default_rng(int(seed))


def split_host_rng(key: np.random.Generator, n: int) -> tuple[np.random.Generator, ...]:
    """n independent Generators seeded from draws of `key` (advances key)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an int >= 1")
    seeds = make_rng(key).integers(0, 2 ** 63 - 1, size=n, dtype=np.int64)
    return tuple(np.random.default_rng(int(s)) for s in seeds)

class AdamW:
    """torch.optim.AdamW on a pytree: decoupled decay p *= 1 - lr*wd on every leaf, then the Adam step.

    State is a pytree {'step': int64 scalar array, 'm': like params, 'v': like params}.
    """

    def __init__(self, np_like: Any, lr: float, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        check_adamw_hyperparameters(lr, weight_decay, betas)
        b1, b2 = betas
        self.np = np_like
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)

    def init(self, params: Any) -> dict:
        """Zero moments shaped like params and step 0."""
        zeros = tree_map(lambda p: np.zeros(np.shape(_value(p)), dtype=np.asarray(_value(p)).dtype), params)
        return {"step": np.asarray(0, dtype=np.int64), "m": zeros,
                "v": tree_map(lambda z: z.copy(), zeros)}

    def step_coefficients(self, state: Mapping[str, Any]) -> tuple[int, float, float]:
        """(the new step count, lr / (1 - b1^step), sqrt(1 - b2^step)): the bias corrections of this step."""
        b1, b2 = self.betas
        step = int(state["step"]) + 1
        return step, self.lr / (1.0 - b1 ** step), math.sqrt(1.0 - b2 ** step)

    def update(self, grads: Any, state: Mapping[str, Any], params: Any) -> tuple[Any, dict]:
        """One AdamW step; returns (new params, new state)."""
        b1, b2 = self.betas
        lr, wd, eps = self.lr, self.weight_decay, self.eps
        step, step_size, bc2_sqrt = self.step_coefficients(state)

        def moment1(g: Any, m: Any) -> Any:
            g = np.asarray(_value(g))
            return (b1 * m + (1.0 - b1) * g).astype(m.dtype, copy=False)

        def moment2(g: Any, v: Any) -> Any:
            g = np.asarray(_value(g))
            return (b2 * v + (1.0 - b2) * (g * g)).astype(v.dtype, copy=False)

        def param(p: Any, m: Any, v: Any) -> Any:
            p = np.asarray(_value(p))
            out = p * (1.0 - lr * wd) - step_size * m / (np.sqrt(v) / bc2_sqrt + eps)
            return out.astype(p.dtype, copy=False)

        m_new = tree_map(moment1, grads, state["m"])
        v_new = tree_map(moment2, grads, state["v"])
        new_params = tree_map(param, params, m_new, v_new)
        return new_params, {"step": np.asarray(step, dtype=np.int64), "m": m_new, "v": v_new}


class NumpyOps:
    """Every non-ConvNN op of the vocabulary on arrays of `np_like` (numpy or autograd.numpy)."""

    def __init__(self, np_like: Any = np) -> None:
        self.np = np_like
        self.traced = getattr(np_like, "__name__", "").startswith("autograd")
        self._erf_fn: Any = None

    def _erf(self, x: Any) -> Any:
        """The error function: autograd's (differentiable) when traced, else SciPy's, else math.erf per element."""
        if self._erf_fn is None:
            try:
                if self.traced:
                    from autograd.scipy.special import erf
                else:
                    from scipy.special import erf
            except ImportError:  # plain NumPy without SciPy: exact but slow
                if self.traced:
                    raise ImportError("the exact GELU under autograd needs scipy; install it with "
                                      f"{AUTOGRAD_HINT}") from None
                scalar = np.frompyfunc(math.erf, 1, 1)

                def erf(v: Any) -> Any:
                    return scalar(v).astype(np.asarray(v).dtype)
            self._erf_fn = erf
        return self._erf_fn(x)

    # ------------------------------------------------------------------ layers
    def conv2d(self, x: Any, weight: Any, bias: Optional[Any], *, stride: int = 1,
               padding: Union[int, str] = 0) -> Any:
        """Cross-correlation on NCHW (im2col + matmul); padding an int or 'same' (stride 1)."""
        np_ = self.np
        b, c, h, w = x.shape
        o, ci, kh, kw = weight.shape
        if ci != c:
            raise ValueError(f"weight has {ci} input channels but x has {c} (x shape {tuple(x.shape)})")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride={stride!r} must be an int >= 1")
        if padding == "same":
            if stride != 1:
                raise ValueError("padding='same' needs stride=1")
            pads = ((kh - 1) // 2, kh - 1 - (kh - 1) // 2, (kw - 1) // 2, kw - 1 - (kw - 1) // 2)
        elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
            pads = (padding,) * 4
        else:
            raise ValueError(f"padding={padding!r} must be an int >= 0 or 'same'")
        if any(pads):
            x = self._pad_hw(x, pads)
        hp, wp = x.shape[2], x.shape[3]
        ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {hp}x{wp}")
        w2 = np_.reshape(weight, (o, ci * kh * kw))
        # 1x1 and non-overlapping (patchify) kernels: one 2-D matmul over [B*Ho*Wo, C*kh*kw] rows
        if kh == kw == 1 and stride == 1:
            rows = np_.reshape(np_.transpose(x, (0, 2, 3, 1)), (b * hp * wp, c))
            y = self._rows_to_map(np_.matmul(rows, np_.transpose(w2)), b, ho, wo)
        elif kh == stride and kw == stride and hp == ho * kh and wp == wo * kw:
            patches = np_.transpose(np_.reshape(x, (b, c, ho, kh, wo, kw)), (0, 2, 4, 1, 3, 5))
            rows = np_.reshape(patches, (b * ho * wo, c * kh * kw))
            y = self._rows_to_map(np_.matmul(rows, np_.transpose(w2)), b, ho, wo)
        else:
            patch_matmul = _PATCH_MATMUL_TRACED if self.traced else _patch_matmul
            y = patch_matmul(x, w2, kh, kw, stride, ho, wo)
        y = np_.reshape(y, (b, o, ho, wo))
        if bias is not None:
            y = y + np_.reshape(bias, (1, o, 1, 1))
        return y

    def _rows_to_map(self, rows: Any, b: int, ho: int, wo: int) -> Any:
        """[B*Ho*Wo, O] -> [B, O, Ho*Wo]."""
        o = rows.shape[-1]
        return self.np.reshape(self.np.transpose(self.np.reshape(rows, (b, ho * wo, o)), (0, 2, 1)), (b, o, ho * wo))

    def _pad_hw(self, x: Any, pads: tuple[int, int, int, int]) -> Any:
        np_ = self.np
        top, bottom, left, right = pads
        b, c, h, w = x.shape
        parts = []
        if top:
            parts.append(np.zeros((b, c, top, w), dtype=_value(x).dtype))
        parts.append(x)
        if bottom:
            parts.append(np.zeros((b, c, bottom, w), dtype=_value(x).dtype))
        x = np_.concatenate(parts, axis=2) if len(parts) > 1 else x
        hp = x.shape[2]
        parts = []
        if left:
            parts.append(np.zeros((b, c, hp, left), dtype=_value(x).dtype))
        parts.append(x)
        if right:
            parts.append(np.zeros((b, c, hp, right), dtype=_value(x).dtype))
        return np_.concatenate(parts, axis=3) if len(parts) > 1 else x

    def linear(self, x: Any, weight: Any, bias: Optional[Any]) -> Any:
        """x @ weight.T + bias over the last axis (leading axes folded into one: autograd's VJP of a
        broadcast 3-D @ 2-D matmul is an order of magnitude slower than the 2-D one)."""
        np_ = self.np
        lead = tuple(x.shape[:-1])
        if len(lead) != 1:
            x = np_.reshape(x, (-1, x.shape[-1]))
        y = np_.matmul(x, np_.transpose(weight))
        if bias is not None:
            y = y + bias
        return y if len(lead) == 1 else np_.reshape(y, lead + (y.shape[-1],))

    def batch_norm(self, x: Any, gamma: Any, beta: Any, state: Mapping[str, Any], *, train: bool,
                   momentum: float = 0.1, eps: float = 1e-5) -> tuple[Any, dict]:
        """BatchNorm2d: batch statistics in training (running stats updated with the unbiased var), else running."""
        np_ = self.np
        c = x.shape[1]
        shape = (1, c, 1, 1)
        if train:
            n = x.shape[0] * x.shape[2] * x.shape[3]
            mean = np_.mean(x, axis=(0, 2, 3))
            centred = x - np_.reshape(mean, shape)
            var = np_.mean(centred * centred, axis=(0, 2, 3))
            y = centred / np_.sqrt(np_.reshape(var, shape) + eps)
            mean_v, var_v = np.asarray(_value(mean)), np.asarray(_value(var))
            unbiased = var_v * (n / max(n - 1, 1))
            run_mean, run_var = np.asarray(_value(state["mean"])), np.asarray(_value(state["var"]))
            new_state = {
                "mean": ((1.0 - momentum) * run_mean + momentum * mean_v).astype(run_mean.dtype),
                "var": ((1.0 - momentum) * run_var + momentum * unbiased).astype(run_var.dtype),
            }
        else:
            y = (x - np_.reshape(state["mean"], shape)) / np_.sqrt(np_.reshape(state["var"], shape) + eps)
            new_state = dict(state)
        return y * np_.reshape(gamma, shape) + np_.reshape(beta, shape), new_state

    def layer_norm(self, x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> Any:
        """LayerNorm over the last axis (biased variance)."""
        np_ = self.np
        mean = np_.mean(x, axis=-1, keepdims=True)
        centred = x - mean
        var = np_.mean(centred * centred, axis=-1, keepdims=True)
        return centred / np_.sqrt(var + eps) * gamma + beta

    def relu(self, x: Any) -> Any:
        return self.np.maximum(x, 0.0)

    def gelu(self, x: Any) -> Any:
        """Exact GELU: x * Phi(x) with the error function."""
        return 0.5 * x * (1.0 + self._erf(x / math.sqrt(2.0)))

    def max_pool2d(self, x: Any, size: int = 2) -> Any:
        """Max over size x size windows with stride size, no padding (floor)."""
        b, c, h, w = x.shape
        ho, wo = h // size, w // size
        if ho < 1 or wo < 1:
            raise ValueError(f"max_pool2d size={size} is larger than the map {h}x{w}")
        if (h, w) != (ho * size, wo * size):
            x = x[:, :, :ho * size, :wo * size]
        x = self.np.reshape(x, (b, c, ho, size, wo, size))
        return self.np.max(self.np.max(x, axis=5), axis=3)

    def adaptive_avg_pool2d(self, x: Any, output_size: Sequence[int]) -> Any:
        """Average over torch's bins: rows floor(i*H/oh) .. ceil((i+1)*H/oh)."""
        np_ = self.np
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        oh, ow = int(output_size[0]), int(output_size[1])
        b, c, h, w = x.shape
        if h % oh == 0 and w % ow == 0:
            return np_.mean(np_.reshape(x, (b, c, oh, h // oh, ow, w // ow)), axis=(3, 5))
        if h == 1 and w == 1:
            return np_.broadcast_to(x, (b, c, oh, ow)) + 0.0
        rows = []
        for i in range(oh):
            r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
            cols = []
            for j in range(ow):
                c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
                cols.append(np_.mean(x[:, :, r0:r1, c0:c1], axis=(2, 3)))
            rows.append(np_.stack(cols, axis=-1))
        return np_.stack(rows, axis=-2)

    def dropout(self, x: Any, p: float, rng: Any, *, train: bool) -> Any:
        """Inverted dropout: keep with probability 1-p and scale by 1/(1-p); identity outside training."""
        if not (0.0 <= float(p) < 1.0):
            raise ValueError(f"dropout p={p!r} must be in [0, 1)")
        if not train or p == 0.0:
            return x
        if rng is None:
            raise ValueError("dropout with train=True and p > 0 needs an rng (numpy Generator or int seed)")
        keep = make_rng(rng).random(tuple(x.shape)) >= p
        return x * (keep.astype(_value(x).dtype) / (1.0 - p))

    def softmax(self, x: Any, axis: int = -1) -> Any:
        np_ = self.np
        e = np_.exp(x - np_.max(x, axis=axis, keepdims=True))
        return e / np_.sum(e, axis=axis, keepdims=True)

    def cross_entropy(self, logits: Any, labels: Any) -> Any:
        """Mean of logsumexp(logits) - logits[label] over the batch."""
        np_ = self.np
        labels = np.asarray(_value(labels)).astype(np.int64)
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise ValueError(f"cross_entropy needs logits [B, classes] and labels [B]; got {tuple(logits.shape)} "
                             f"and {tuple(labels.shape)}")
        m = np_.max(logits, axis=1, keepdims=True)
        lse = np_.log(np_.sum(np_.exp(logits - m), axis=1)) + m[:, 0]
        picked = logits[np.arange(logits.shape[0]), labels]
        return np_.mean(lse - picked)

    # ------------------------------------------------------------------ baseline attentions
    def _check_attention(self, x: Any, params: Mapping[str, Any], heads: int) -> int:
        try:  # a dict, or autograd's DictBox when the params themselves are differentiated
            missing = [k for k in PROJECTIONS if k not in params]
        except TypeError:
            missing = list(PROJECTIONS)
        if missing:
            raise ValueError(f"params is missing {missing}; attention needs {', '.join(PROJECTIONS)}")
        if x.ndim != 3:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected 3 dims [B, N, D]")
        d = x.shape[-1]
        for name in PROJECTIONS:
            if tuple(params[name].shape) != (d, d):
                raise ValueError(f"params[{name!r}] has shape {tuple(params[name].shape)}; expected [{d}, {d}]")
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or d % heads:
            raise ValueError(f"heads={heads!r} must be a positive int that divides the width D={d}")
        return d

    def _split_heads(self, t: Any, heads: int) -> Any:
        b, n, d = t.shape
        t = self.np.transpose(self.np.reshape(t, (b, n, heads, d // heads)), (0, 2, 1, 3))
        return self.np.reshape(t, (b * heads, n, d // heads))

    def _merge_heads(self, t: Any, heads: int) -> Any:
        bh, n, dh = t.shape
        t = self.np.transpose(self.np.reshape(t, (bh // heads, heads, n, dh)), (0, 2, 1, 3))
        return self.np.reshape(t, (bh // heads, n, heads * dh))

    def masked_attention(self, x: Any, params: Mapping[str, Any], mask: Any = None, *, heads: int = 1,
                         dropout: float = 0.0, rng: Any = None, train: bool = False) -> Any:
        """softmax(q k^T / sqrt(d_head) [masked]) v per head, dropout on the probabilities, then wo."""
        np_ = self.np
        self._check_attention(x, params, heads)
        if not (0.0 <= float(dropout) < 1.0):
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        active = bool(train) and dropout > 0.0
        if active and rng is None:
            raise ValueError("dropout > 0 with train=True needs an rng= (int seed or numpy Generator)")
        qh = self._split_heads(self.linear(x, params["wq"], None), heads)
        kh = self._split_heads(self.linear(x, params["wk"], None), heads)
        vh = self._split_heads(self.linear(x, params["wv"], None), heads)
        scores = np_.matmul(qh, np_.transpose(kh, (0, 2, 1))) / math.sqrt(qh.shape[-1])
        if mask is not None:
            scores = np_.where(np.asarray(_value(mask), dtype=bool), scores, -np.inf)
        probs = self.softmax(scores, axis=-1)
        if active:
            keep = make_rng(rng).random(tuple(probs.shape)) >= dropout
            probs = probs * (keep.astype(_value(probs).dtype) / (1.0 - dropout))
        return self.linear(self._merge_heads(np_.matmul(probs, vh), heads), params["wo"], None)

    def multihead_attention(self, x: Any, params: Mapping[str, Any], **kw: Any) -> Any:
        """Dense multi-head self-attention with no-bias projections."""
        return self.masked_attention(x, params, None, **kw)

    def kvt_attention(self, x: Any, params: Mapping[str, Any], k: int, *, heads: int = 1, **kw: Any) -> Any:
        """Top-k attention: per query keep the k largest q.k scores (ties to the lower key index)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be an int >= 1")
        self._check_attention(x, params, heads)
        n = x.shape[1]
        if k > n:
            raise ValueError(f"k={k} is larger than the number of keys N={n}")
        xv = np.asarray(_value(x))
        q = self._host_heads(xv @ np.asarray(_value(params["wq"])).T, heads)
        kk = self._host_heads(xv @ np.asarray(_value(params["wk"])).T, heads)
        scores = q @ np.transpose(kk, (0, 2, 1))
        order = np.argsort(-scores, axis=-1, kind="stable")
        ranks = np.argsort(order, axis=-1, kind="stable")
        return self.masked_attention(x, params, ranks < k, heads=heads, **kw)

    @staticmethod
    def _host_heads(t: np.ndarray, heads: int) -> np.ndarray:
        b, n, d = t.shape
        return t.reshape(b, n, heads, d // heads).transpose(0, 2, 1, 3).reshape(b * heads, n, d // heads)

    @staticmethod
    def band_mask(n: int, *, kind: str, width: int) -> np.ndarray:
        """[N, N] masks over the token order: the spec's band_mask on NumPy."""
        return spec_band_mask(array_api_compat.numpy, n, np.empty(0), kind=kind, width=width)

    def local_attention(self, x: Any, params: Mapping[str, Any], window: int, **kw: Any) -> Any:
        """Each token attends to tokens within `window` positions of the 1-D token order."""
        return self.masked_attention(x, params, self.band_mask(x.shape[1], kind="window", width=window), **kw)

    def sparse_attention(self, x: Any, params: Mapping[str, Any], mode: str, width: int, **kw: Any) -> Any:
        """Sparse attention: 'local' band |i-j| <= width/2 or 'strided' |i-j| mod width == 0."""
        if mode not in ("local", "strided"):
            raise ValueError(f"mode={mode!r} is not allowed; choose one of local, strided")
        return self.masked_attention(x, params, self.band_mask(x.shape[1], kind=mode, width=width), **kw)

    # ------------------------------------------------------------------ arrays and randomness
    def asarray(self, value: Any, dtype: Optional[str] = None) -> Any:
        """A NumPy array (dtype given as a string such as 'float32', or None to keep)."""
        if dtype is None:
            return np.asarray(_value(value))
        if not isinstance(dtype, str) or dtype not in DTYPES:
            dtype = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
            if dtype not in DTYPES:
                raise ValueError(f"dtype={dtype!r} is not allowed; choose one of {', '.join(DTYPES)} or None")
        return np.asarray(_value(value), dtype=np.dtype(dtype))

    def to_numpy(self, value: Any) -> np.ndarray:
        """A host NumPy copy."""
        return np.array(_value(value), copy=True)

    def make_rng(self, seed: int) -> np.random.Generator:
        """A NumPy Generator (PCG64) seeded with `seed`."""
        return host_rng(seed)

    def split_rng(self, key: np.random.Generator, n: int) -> tuple[np.random.Generator, ...]:
        """n independent Generators seeded from draws of `key` (advances key; its state is checkpointable)."""
        return split_host_rng(key, n)

    # ------------------------------------------------------------------ training
    def value_and_grad(self, fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
        """g(params, *args) -> (value, grads) or ((value, aux), grads), by HIPS autograd.

        Every leaf is its own root of the trace, and fn sees the leaves rebuilt into plain containers:
        each traced dict lookup would otherwise cost a zeroed copy of its whole subtree in the backward
        pass (about a sixth of a VGG training step).
        """
        _import_autograd()
        from .autograd_leaves import value_and_grad_leaves

        def wrapped(params: Any, *args: Any, **kwargs: Any) -> Any:
            holder: dict[str, Any] = {}

            def scalar(leaves: Any) -> Any:
                out = fn(tree_with_leaves(params, leaves), *args, **kwargs)
                if has_aux:
                    out, holder["aux"] = out
                return out

            value, leaf_grads = value_and_grad_leaves(scalar, tree_leaves(params))
            grads = tree_with_leaves(params, leaf_grads)
            if has_aux:
                aux = tree_map(_value, holder["aux"])
                return (value, aux), grads
            return value, grads

        return wrapped

    def adamw(self, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8) -> AdamW:
        """torch.optim.AdamW semantics on NumPy pytrees."""
        return AdamW(self.np, lr, weight_decay, betas, eps)

    def clip_grad_norm(self, grads: Any, max_norm: float) -> tuple[Any, Any]:
        """Scale every gradient by min(1, max_norm / (global L2 norm + 1e-6)), as torch does."""
        leaves = [np.asarray(_value(g)) for g in tree_leaves(grads)]
        total = math.sqrt(sum(float(np.sum(np.square(g.astype(np.float64)))) for g in leaves))
        coef = min(1.0, float(max_norm) / (total + 1e-6))
        if coef < 1.0:
            grads = tree_map(lambda g: (np.asarray(_value(g)) * coef).astype(np.asarray(_value(g)).dtype), grads)
        return grads, np.asarray(total)

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """NumPy has no compiler: fn itself."""
        return fn
