"""Flax NNX modules over the jax backend: ConvNN2d, ConvNN1d, Branching2d and ConvNNAttention.

Arguments follow flax.nnx.Conv / nnx.MultiHeadAttention (in_features, out_features, use_bias, padding,
kernel_init, bias_init, dtype, param_dtype, precision, rngs, deterministic, dropout_rate); where nnx.Conv
takes kernel_size, the ConvNN layers take `k`, the number of neighbours. Layouts are flax's channels-last:
maps [B, H, W, C], sequences [B, L, C], tokens [B, N, D]. The modules transpose to the backend's
channels-first layout at the boundary and back, and run the same pipeline as
`convnn.get_backend("jax")`, so they jit, grad and vmap like any nnx layer.

Kernels use flax's (window, in, out) order: a full ConvNN kernel is [K, C_agg, O], a depthwise one
[K, C_agg]; `load_zoo_params` reads a zoo (torch-layout) layer subtree into them.

Sampled layers (sampling='random') draw their candidates per call from the `rng_collection` stream
(default 'dropout', as nnx.Dropout) while `deterministic` is False, and reuse one draw seeded by
`sample_seed` when it is True (`model.eval()`), so evaluation is repeatable.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

try:
    from flax import nnx
except ImportError as err:  # flax is an optional extra
    raise ImportError("convnn's Flax NNX modules need flax (flax.nnx); install it with "
                      "pip install 'convnn[flax]'") from err

import jax
import jax.numpy as jnp
import numpy as np

from convnn.config import ConvNNConfig, attention_config, layer_config

Initializer = Callable[..., Any]
_PROJECTIONS = (("wq", "query"), ("wk", "key"), ("wv", "value"), ("wo", "out"))


@functools.lru_cache(maxsize=None)
def jax_backend(precision: Optional[str] = "highest") -> Any:
    """The jax backend object the modules run on (one per matmul precision: 'default', 'high', 'highest')."""
    from convnn.registry import get_backend

    return get_backend("jax", precision=precision)


def _positive(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r} must be an int >= 1")
    return value


def _rng_stream(rngs: Any, collection: str, needed: bool) -> Any:
    """A forked stream for per-call draws (None when the layer never draws)."""
    if not needed:
        return nnx.data(None)
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"rngs={rngs!r} must be a flax.nnx.Rngs")
    try:
        return rngs[collection].fork()
    except KeyError as err:
        raise ValueError(f"rngs has no stream {collection!r} and no 'default' one; give nnx.Rngs("
                         f"{collection}=...) or choose rng_collection") from err


def _sample_seed(seed: Optional[int], rngs: Any, needed: bool) -> Optional[int]:
    """The evaluation draw's seed: as given, else drawn once from the params stream."""
    if not needed:
        return None
    if seed is None:
        return int(jax.random.randint(rngs.params(), (), 0, 2 ** 31 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"sample_seed={seed!r} must be an int >= 0 or None")
    return int(seed)


def _host(value: Any, field: str, shape: tuple[int, ...]) -> jnp.ndarray:
    arr = jnp.asarray(value)
    if tuple(arr.shape) != shape:
        raise ValueError(f"{field} has shape {tuple(arr.shape)}; this layer needs {shape}")
    return arr


def _assign(var: Any, value: Any) -> None:
    var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))


def _compute_dtype(dtype: Any, *arrays: Any) -> Any:
    return dtype if dtype is not None else jnp.result_type(*[a for a in arrays if a is not None])


class _Sampler(nnx.Module):
    """What the ConvNN layers share: deterministic mode, the per-call rng, the taps and their loading."""

    config: ConvNNConfig

    def _init_taps(self, c_agg: int, out: int, use_bias: bool, kernel_init: Optional[Initializer],
                   bias_init: Initializer, param_dtype: Any, rngs: nnx.Rngs) -> None:
        k = self.config.k
        if self.config.taps == "full":
            init = kernel_init if kernel_init is not None else nnx.initializers.lecun_normal()
            self.kernel = nnx.Param(init(rngs.params(), (k, c_agg, out), param_dtype))
        else:
            if out != c_agg:
                raise ValueError(f"out_features={out} must equal the aggregated channels {c_agg} with "
                                 f"taps='depthwise'")
            init = kernel_init if kernel_init is not None else nnx.initializers.ones
            self.kernel = nnx.Param(init(rngs.params(), (k, c_agg), param_dtype))
        self.bias = nnx.Param(bias_init(rngs.params(), (out,), param_dtype)) if use_bias else nnx.data(None)

    def _init_sampling(self, deterministic: bool, rng_collection: str, sample_seed: Optional[int],
                       rngs: nnx.Rngs, draws: bool) -> None:
        random = self.config.sampling == "random"
        self.deterministic = bool(deterministic)
        self.rng_collection = rng_collection
        self.rngs = _rng_stream(rngs, rng_collection, draws)
        self.sample_seed = _sample_seed(sample_seed, rngs, random)

    def _call_rng(self, deterministic: Optional[bool], rngs: Any, draws: bool) -> Any:
        """A key for this call: from `rngs` or the layer's stream in training; the fixed seed in evaluation."""
        det = self.deterministic if deterministic is None else bool(deterministic)
        if det:
            return self.sample_seed if self.config.sampling == "random" else None
        if not draws:
            return None
        if isinstance(rngs, nnx.Rngs):
            return rngs[self.rng_collection]()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        if rngs is not None:
            return rngs  # a jax key
        if self.rngs is None:
            raise ValueError("deterministic=False needs rngs= at construction or in the call")
        return self.rngs()

    def _torch_weight(self) -> jnp.ndarray:
        """The kernel in the backend's layout: [O, C_agg, K] (full) or [C_agg, K] (depthwise)."""
        kernel = self.kernel.get_value()
        return jnp.transpose(kernel, (2, 1, 0)) if kernel.ndim == 3 else kernel.T

    def load_zoo_params(self, tree: Mapping[str, Any]) -> None:
        """Copy a zoo layer's {'weight' [O, C_agg, K] or [C_agg, K], 'bias' [O]} into the kernel (transposed)."""
        kernel = self.kernel.get_value()
        shape = (kernel.shape[2], kernel.shape[1], kernel.shape[0]) if kernel.ndim == 3 else kernel.shape[::-1]
        weight = _host(tree["weight"], "weight", tuple(shape))
        _assign(self.kernel, jnp.transpose(weight, (2, 1, 0)) if weight.ndim == 3 else weight.T)
        bias = tree.get("bias")
        if (bias is None) != (self.bias is None):
            raise ValueError(f"the zoo layer {'has no' if bias is None else 'has a'} bias but this layer "
                             f"{'has one' if bias is None else 'has none (use_bias=False)'}")
        if bias is not None:
            _assign(self.bias, _host(bias, "bias", tuple(self.bias.get_value().shape)))


class _ConvNNLayer(_Sampler):
    """ConvNN2d / ConvNN1d: the same layer on SPATIAL (2 or 1) channels-last axes, run by the backend op OP."""

    SPATIAL = 2
    OP = "convnn2d"
    LAYOUT = "maps [B, H, W, C]"

    def __init__(self, in_features: int, out_features: int, k: int = 9, *, padding: int = 1, use_bias: bool = True,
                 config: Optional[ConvNNConfig] = None, deterministic: bool = False,
                 rng_collection: str = "dropout", sample_seed: Optional[int] = None, dtype: Any = None,
                 param_dtype: Any = jnp.float32, precision: Optional[str] = "highest",
                 kernel_init: Optional[Initializer] = None, bias_init: Initializer = nnx.initializers.zeros,
                 rngs: nnx.Rngs, **options: Any) -> None:
        self.config = layer_config(k, padding, config, dict(options))
        self.in_features = _positive("in_features", in_features)
        self.out_features = _positive("out_features", out_features)
        self.dtype, self.precision = dtype, precision
        jax_backend(precision)  # refuse a bad precision now
        fold = self.config.shuffle_scale ** self.SPATIAL  # channels per output channel after the unshuffle
        c_agg = self.in_features * fold + (self.SPATIAL if self.config.aggregate_coords else 0)
        self._init_taps(c_agg, self.out_features * fold, use_bias, kernel_init, bias_init, param_dtype, rngs)
        self._init_sampling(deterministic, rng_collection, sample_seed, rngs, self.config.sampling == "random")

    def __call__(self, x: jax.Array, *, deterministic: Optional[bool] = None, rngs: Any = None) -> jax.Array:
        """y [B, *spatial, out_features] for x [B, *spatial, in_features]."""
        if x.ndim != self.SPATIAL + 2:
            raise ValueError(f"x has shape {tuple(x.shape)}; {type(self).__name__} takes channels-last {self.LAYOUT}")
        bias = None if self.bias is None else self.bias.get_value()
        dt = _compute_dtype(self.dtype, x, self.kernel.get_value())
        rng = self._call_rng(deterministic, rngs, self.config.sampling == "random")
        to_channels_first = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
        y = getattr(jax_backend(self.precision), self.OP)(
            jnp.transpose(x, to_channels_first).astype(dt), self._torch_weight().astype(dt),
            None if bias is None else bias.astype(dt), self.config, rng=rng)
        return jnp.transpose(y, (0,) + tuple(range(2, x.ndim)) + (1,))


class ConvNN2d(_ConvNNLayer):
    """ConvNN on channels-last maps [B, H, W, C] -> [B, H, W, out_features], like nnx.Conv(in, out, (3, 3)).

    Options are the ConvNNConfig fields (select, metric, sampling, num_samples, ...) or one `config=`.
    The kernel is [K, C_agg, O] (lecun_normal, as nnx.Conv) or [K, C_agg] with taps='depthwise' (ones).
    """


class ConvNN1d(_ConvNNLayer):
    """ConvNN on channels-last sequences [B, L, C] -> [B, L, out_features], like nnx.Conv(in, out, (K,))."""

    SPATIAL = 1
    OP = "convnn1d"
    LAYOUT = "sequences [B, L, C]"


def _conv_from_zoo(conv: nnx.Conv, tree: Mapping[str, Any], field: str) -> None:
    """Copy a zoo Conv2d {'weight' OIHW, 'bias'} into an nnx.Conv (kernel HWIO)."""
    kh, kw, ci, co = conv.kernel.get_value().shape
    weight = _host(tree["weight"], f"{field}.weight", (co, ci, kh, kw))
    _assign(conv.kernel, jnp.transpose(weight, (2, 3, 1, 0)))
    if conv.bias is not None:
        _assign(conv.bias, _host(tree["bias"], f"{field}.bias", (co,)))


class Branching2d(nnx.Module):
    """The paper's hybrid on [B, H, W, C]: ConvNN2d(in -> floor(ratio*out)) beside nnx.Conv(in -> rest,
    kernel_size, 'SAME'), concatenated (ConvNN first) and mixed by a 1x1 nnx.Conv(out -> out)."""

    def __init__(self, in_features: int, out_features: int, ratio: float = 0.5, k: int = 9, *,
                 kernel_size: int = 3, padding: int = 1, use_bias: bool = True, deterministic: bool = False,
                 dtype: Any = None, param_dtype: Any = jnp.float32, precision: Optional[str] = "highest",
                 rngs: nnx.Rngs, **convnn_options: Any) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio={ratio!r} must be a float in [0, 1]")
        self.ratio = float(ratio)
        self.in_features = _positive("in_features", in_features)
        self.out_features = _positive("out_features", out_features)
        c_nn = int(np.floor(self.ratio * self.out_features))
        c_conv = self.out_features - c_nn
        lax_precision = jax_backend(precision).options.lax_precision
        common = {"use_bias": use_bias, "dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.convnn = (ConvNN2d(in_features, c_nn, k, padding=padding, deterministic=deterministic,
                                precision=precision, **common, **convnn_options) if c_nn > 0 else None)
        self.conv = (nnx.Conv(in_features, c_conv, (kernel_size, kernel_size), padding="SAME",
                              precision=lax_precision, **common) if c_conv > 0 else None)
        self.pointwise = nnx.Conv(out_features, out_features, (1, 1), padding="VALID", precision=lax_precision,
                                  **common)

    def __call__(self, x: jax.Array, *, deterministic: Optional[bool] = None, rngs: Any = None) -> jax.Array:
        """y [B, H, W, out_features]."""
        parts = []
        if self.convnn is not None:
            parts.append(self.convnn(x, deterministic=deterministic, rngs=rngs))
        if self.conv is not None:
            parts.append(self.conv(x))
        return self.pointwise(parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1))

    def load_zoo_params(self, tree: Mapping[str, Any]) -> None:
        """Copy a zoo branching layer {'convnn', 'conv', 'pointwise'} (torch layouts) into this module."""
        if self.convnn is not None:
            self.convnn.load_zoo_params(tree["convnn"])
        if self.conv is not None:
            _conv_from_zoo(self.conv, tree["conv"], "conv")
        _conv_from_zoo(self.pointwise, tree["pointwise"], "pointwise")


class ConvNNAttention(_Sampler):
    """ConvNN attention on tokens [B, N, D], like nnx.MultiHeadAttention(num_heads, in_features): per head each
    query picks K keys, softmax-weighted values, taps (depthwise ones at init), dropout, out projection.

    Projections are bias-free nnx.Linear(D, D) named query, key, value and out; `taps` is [K, D]
    (depthwise) or [K, D, D] (full).
    """

    def __init__(self, num_heads: int, in_features: int, k: int = 9, *, sampling: str = "all",
                 num_samples: Optional[int] = None, metric: str = "dot", taps: str = "depthwise",
                 config: Optional[ConvNNConfig] = None, dropout_rate: float = 0.0, deterministic: bool = False,
                 rng_collection: str = "dropout", sample_seed: Optional[int] = None, dtype: Any = None,
                 param_dtype: Any = jnp.float32, precision: Optional[str] = "highest",
                 kernel_init: Initializer = nnx.initializers.lecun_normal(), rngs: nnx.Rngs) -> None:
        self.num_heads = _positive("num_heads", num_heads)
        self.in_features = _positive("in_features", in_features)
        if self.in_features % self.num_heads:
            raise ValueError(f"num_heads={num_heads} must divide in_features={in_features}")
        if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float)) or \
                not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate={dropout_rate!r} must be a float in [0, 1)")
        self.dropout_rate = float(dropout_rate)
        if config is not None and not isinstance(config, ConvNNConfig):
            raise TypeError(f"config={config!r} must be a ConvNNConfig")
        self.config = config if config is not None else attention_config(k, sampling=sampling,
                                                                         num_samples=num_samples, metric=metric,
                                                                         taps=taps)
        self.dtype, self.precision = dtype, precision
        lax_precision = jax_backend(precision).options.lax_precision
        d, kk = self.in_features, self.config.k
        for _, name in _PROJECTIONS:
            setattr(self, name, nnx.Linear(d, d, use_bias=False, kernel_init=kernel_init, param_dtype=param_dtype,
                                           precision=lax_precision, rngs=rngs))
        if self.config.taps == "depthwise":
            self.taps = nnx.Param(jnp.ones((kk, d), param_dtype))
        else:
            self.taps = nnx.Param(kernel_init(rngs.params(), (kk, d, d), param_dtype))
        self._init_sampling(deterministic, rng_collection, sample_seed, rngs,
                            self.config.sampling == "random" or self.dropout_rate > 0.0)

    def zoo_params(self) -> dict[str, jax.Array]:
        """The backend's params dict: wq/wk/wv/wo [D, D] (torch Linear layout) and taps [D, K] or [D, D, K]."""
        params = {w: getattr(self, name).kernel.get_value().T for w, name in _PROJECTIONS}
        taps = self.taps.get_value()
        params["taps"] = taps.T if taps.ndim == 2 else jnp.transpose(taps, (2, 1, 0))
        return params

    def __call__(self, x: jax.Array, *, deterministic: Optional[bool] = None, rngs: Any = None) -> jax.Array:
        """y [B, N, D] for tokens x [B, N, D]."""
        det = self.deterministic if deterministic is None else bool(deterministic)
        draws = self.config.sampling == "random" or self.dropout_rate > 0.0
        rng = self._call_rng(deterministic, rngs, draws)
        params = self.zoo_params()
        dt = _compute_dtype(self.dtype, x, params["wq"])
        params = {name: value.astype(dt) for name, value in params.items()}
        return jax_backend(self.precision).convnn_attention(
            x.astype(dt), params, self.config, heads=self.num_heads, dropout=self.dropout_rate, rng=rng,
            train=not det)

    def load_zoo_params(self, tree: Mapping[str, Any]) -> None:
        """Copy a zoo attention subtree {'wq', 'wk', 'wv', 'wo' [D, D], 'taps' [D, K] or [D, D, K]} in."""
        d = self.in_features
        for w, name in _PROJECTIONS:
            _assign(getattr(self, name).kernel, _host(tree[w], w, (d, d)).T)
        taps = self.taps.get_value()
        want = (taps.shape[1], taps.shape[0]) if taps.ndim == 2 else (taps.shape[2], taps.shape[1], taps.shape[0])
        given = _host(tree["taps"], "taps", want)
        _assign(self.taps, given.T if given.ndim == 2 else jnp.transpose(given, (2, 1, 0)))


__all__ = ["ConvNN2d", "ConvNN1d", "Branching2d", "ConvNNAttention", "jax_backend"]
