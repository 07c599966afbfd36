"""nn.Module drop-ins: ConvNN2d, ConvNN1d, Branching2d, ConvNNAttention and the baseline attentions.

Images are NCHW, token sequences [B, N, D]. Arguments are named like nn.Conv2d / nn.MultiheadAttention
where they mean the same. Sampled layers draw their candidates per call in training, on the device from
torch's global RNG (torch.randperm), as dropout masks are (torch.rand), so torch.manual_seed makes runs
repeatable; in evaluation they reuse one draw seeded per layer (the `sample_seed` buffer, saved in the
state_dict), the spec's draw for that seed, unless `resample=True`. Both draws trace under
torch.compile(fullgraph=True) (see arrays.py: GlobalRngKey, SeedTensorKey).

The ConvNN modules run the same pipeline (convnn.pipeline) on the same kernels (kernels.py) as the
functional ops of `convnn.get_backend("torch")`, with the same input checks: NaN or inf inputs are
refused with a ValueError wherever their values can be read (eager calls; under torch.compile the
values are not readable while tracing, so the compiled graph carries no check and no host sync).

Conventions shared with nn.Conv2d and friends: reset_parameters() re-draws the parameters as construction
does (from torch's global RNG; the `sample_seed` buffer is kept), extra_repr names the shape, k and the
options that differ from the defaults. return_indices=True (as nn.MaxPool2d's) makes forward return
(y, idx) with the int64 neighbour indices each output aggregated; ConvNNAttention takes a
key_padding_mask ([B, N] bool, True = padded, nn.MultiheadAttention's convention).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from convnn import pipeline
from convnn.config import ConvNNConfig, attention_config, layer_config

from convnn.selection import NotEnoughCandidates

from . import attention
from .arrays import GlobalRngKey, SeedTensorKey, TorchRngKey
from .kernels import RunOptions, TorchKernels
from .module_kernels import CallKernels



def _fresh_seed() -> int:
    """A seed drawn from torch's global RNG (so torch.manual_seed controls it)."""
    return int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))


def _device_kernels(deterministic: bool, fused: bool) -> dict:
    """The kernels a module runs on, one per device type (picked by the input's device in forward)."""
    options = RunOptions(deterministic=bool(deterministic), fused=bool(fused))
    return {kind: TorchKernels(kind, options) for kind in ("cpu", "cuda")}


class _Sampled(nn.Module):
    """Shared by the ConvNN modules: the per-layer eval seed, the choice of candidates per call and the kernels."""

    def _kernels(self, x: torch.Tensor, key_valid: Optional[torch.Tensor] = None) -> TorchKernels:
        base = self.device_kernels[x.device.type]
        if not self.return_indices and key_valid is None:
            return base
        return CallKernels(base, record=self.return_indices, key_valid=key_valid, owner=type(self).__name__)

    def _init_sampling(self, cfg: ConvNNConfig, resample: bool, seed: Optional[int]) -> None:
        self.resample = bool(resample)
        self.register_buffer("sample_seed", torch.tensor(_fresh_seed() if seed is None else int(seed)),
                             persistent=True)

    def _rng(self, cfg: ConvNNConfig) -> Optional[TorchRngKey]:
        if cfg.sampling != "random":
            return None
        if self.training or self.resample:
            return GlobalRngKey()  # a fresh draw per call from torch's global RNG, on the device
        return SeedTensorKey(self.sample_seed)  # the spec's draw for this layer's seed, read when the call runs


def _taps_parameters(module: nn.Module, cfg: ConvNNConfig, c_agg: int, out_channels: int, bias: bool,
                     factory: dict) -> None:
    """weight [O, C_agg, K] (full) or [C_agg, K] (depthwise) and bias [O], initialised by _init_taps."""
    k = cfg.k
    if cfg.taps == "full":
        module.weight = nn.Parameter(torch.empty((out_channels, c_agg, k), **factory))
    else:
        if out_channels != c_agg:
            raise ValueError(
                f"out_channels={out_channels} must equal the aggregated channels {c_agg} with taps='depthwise'"
            )
        module.weight = nn.Parameter(torch.empty((c_agg, k), **factory))
    if bias:
        module.bias = nn.Parameter(torch.empty((out_channels,), **factory))
    else:
        module.register_parameter("bias", None)
    _init_taps(module.weight, module.bias, cfg.taps, c_agg * k)


def _init_taps(weight: torch.Tensor, bias: Optional[torch.Tensor], taps: str, fan_in: int) -> None:
    """Full taps as nn.Conv1d's weight (kaiming-uniform, a=sqrt(5)), depthwise taps ones, bias U(+-1/sqrt(fan_in))."""
    with torch.no_grad():
        if taps == "full":
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        else:
            weight.fill_(1.0)
        if bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            bias.uniform_(-bound, bound)


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be True or False")
    return value


_REPR_FIELDS = ("select", "metric", "sampling", "num_samples", "self_first", "order", "weighting", "self_logit",
                "taps", "padding", "aggregate_coords", "blend", "shuffle_scale")


def _cfg_repr(cfg: ConvNNConfig, default: ConvNNConfig) -> str:
    """'k=K' then the config fields that differ from the module's default config (as nn.Conv2d's repr)."""
    parts = [f"k={cfg.k}"]
    for name in _REPR_FIELDS:
        value = getattr(cfg, name)
        if value != getattr(default, name):
            parts.append(f"{name}={value!r}")
    return ", ".join(parts)


def _map_repr(module: "_Sampled", default_padding: int) -> str:
    cfg = module.config
    default = ConvNNConfig(k=cfg.k, padding=default_padding)
    text = f"{module.in_channels}, {module.out_channels}, {_cfg_repr(cfg, default)}"
    if module.bias is None:
        text += ", bias=False"
    if module.return_indices:
        text += ", return_indices=True"
    return text


class ConvNN2d(_Sampled):
    """ConvNN on NCHW maps, a drop-in for nn.Conv2d(in, out, 3, padding=1) (K=9 has the same parameter count).

    Options are the ConvNNConfig fields (select, metric, sampling, num_samples, ...) or one `config=`.
    return_indices=True: forward returns (y, idx), idx int64 [B, H', W', K] (H' = H / shuffle_scale, W' likewise):
    the tokens output (i, j) aggregated, in the config's order, as row-major indices into the padded token map
    of (H' + 2 * padding) x (W' + 2 * padding) tokens (output (i, j) is token (i + padding, j + padding)).
    """

    def __init__(self, in_channels: int, out_channels: int, k: int = 9, *, padding: int = 1, bias: bool = True,
                 config: Optional[ConvNNConfig] = None, resample: bool = False, seed: Optional[int] = None,
                 deterministic: bool = False, fused: bool = True, return_indices: bool = False, device: Any = None,
                 dtype: Any = None, **options: Any) -> None:
        super().__init__()
        self.return_indices = _check_flag("return_indices", return_indices)
        self.config = layer_config(k, padding, config, dict(options))
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        s = self.config.shuffle_scale
        coords = 2 if self.config.aggregate_coords else 0
        c_agg = self.in_channels * s * s + coords
        self.device_kernels = _device_kernels(deterministic, fused)
        _taps_parameters(self, self.config, c_agg, self.out_channels * s * s, bias, {"device": device, "dtype": dtype})
        self._init_sampling(self.config, resample, seed)

    def forward(self, x: torch.Tensor) -> Any:
        """y [B, out_channels, H, W]; (y, idx [B, H', W', K]) with return_indices=True."""
        kernels = self._kernels(x)
        y = pipeline.convnn_nd(kernels, x, self.weight, self.bias, self.config, 2, rng=self._rng(self.config))
        if not self.return_indices:
            return y
        s = self.config.shuffle_scale
        return y, kernels.indices.reshape(x.shape[0], x.shape[2] // s, x.shape[3] // s, self.config.k)

    def reset_parameters(self) -> None:
        """Re-draw weight and bias as construction does (the eval `sample_seed` buffer is kept)."""
        s = self.config.shuffle_scale
        c_agg = self.in_channels * s * s + (2 if self.config.aggregate_coords else 0)
        _init_taps(self.weight, self.bias, self.config.taps, c_agg * self.config.k)

    def extra_repr(self) -> str:
        return _map_repr(self, 1)


class ConvNN1d(_Sampled):
    """ConvNN on [B, C, L] sequences, a drop-in for nn.Conv1d(in, out, K, padding=...).

    return_indices=True: forward returns (y, idx), idx int64 [B, L', K] (L' = L / shuffle_scale): indices into
    the padded sequence of L' + 2 * padding tokens (output i is token i + padding), in the config's order.
    """

    def __init__(self, in_channels: int, out_channels: int, k: int = 9, *, padding: int = 1, bias: bool = True,
                 config: Optional[ConvNNConfig] = None, resample: bool = False, seed: Optional[int] = None,
                 deterministic: bool = False, fused: bool = True, return_indices: bool = False, device: Any = None,
                 dtype: Any = None, **options: Any) -> None:
        super().__init__()
        self.return_indices = _check_flag("return_indices", return_indices)
        self.config = layer_config(k, padding, config, dict(options))
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        s = self.config.shuffle_scale
        c_agg = self.in_channels * s + (1 if self.config.aggregate_coords else 0)
        self.device_kernels = _device_kernels(deterministic, fused)
        _taps_parameters(self, self.config, c_agg, self.out_channels * s, bias, {"device": device, "dtype": dtype})
        self._init_sampling(self.config, resample, seed)

    def forward(self, x: torch.Tensor) -> Any:
        """y [B, out_channels, L]; (y, idx [B, L', K]) with return_indices=True."""
        kernels = self._kernels(x)
        y = pipeline.convnn_nd(kernels, x, self.weight, self.bias, self.config, 1, rng=self._rng(self.config))
        if not self.return_indices:
            return y
        return y, kernels.indices.reshape(x.shape[0], x.shape[2] // self.config.shuffle_scale, self.config.k)

    def reset_parameters(self) -> None:
        """Re-draw weight and bias as construction does (the eval `sample_seed` buffer is kept)."""
        c_agg = self.in_channels * self.config.shuffle_scale + (1 if self.config.aggregate_coords else 0)
        _init_taps(self.weight, self.bias, self.config.taps, c_agg * self.config.k)

    def extra_repr(self) -> str:
        return _map_repr(self, 1)


class Branching2d(nn.Module):
    """The paper's hybrid: ConvNN2d(in -> floor(ratio*out)) beside Conv2d(in -> rest, kernel_size, same padding),
    concatenated (ConvNN first) and mixed by a 1x1 Conv2d(out -> out) that is always present."""

    def __init__(self, in_channels: int, out_channels: int, ratio: float = 0.5, k: int = 9, *, kernel_size: int = 3,
                 padding: int = 1, bias: bool = True, device: Any = None, dtype: Any = None, **convnn_options: Any):
        super().__init__()
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio={ratio!r} must be a float in [0, 1]")
        self.ratio = float(ratio)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        c_nn = int(math.floor(self.ratio * self.out_channels))
        c_conv = self.out_channels - c_nn
        factory = {"device": device, "dtype": dtype}
        self.convnn = (ConvNN2d(in_channels, c_nn, k, padding=padding, bias=bias, **factory, **convnn_options)
                       if c_nn > 0 else None)
        self.conv = (nn.Conv2d(in_channels, c_conv, kernel_size, padding="same", bias=bias, **factory)
                     if c_conv > 0 else None)
        self.pointwise = nn.Conv2d(self.out_channels, self.out_channels, 1, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y [B, out_channels, H, W]."""
        parts = [m(x) for m in (self.convnn, self.conv) if m is not None]
        return self.pointwise(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))

    def reset_parameters(self) -> None:
        """Re-draw every branch's parameters as construction does."""
        for m in (self.convnn, self.conv, self.pointwise):
            if m is not None:
                m.reset_parameters()

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, ratio={self.ratio}"


class _AttentionBase(nn.Module):
    """Four no-bias projections q/k/v/out over the embedding width (torch Linear layout)."""

    def _init_projections(self, embed_dim: int, num_heads: int, dropout: float, factory: dict) -> None:
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r} must be a positive int that divides embed_dim={embed_dim}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        self.embed_dim, self.num_heads, self.dropout = int(embed_dim), int(num_heads), float(dropout)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, nn.Linear(embed_dim, embed_dim, bias=False, **factory))

    def reset_parameters(self) -> None:
        """Re-draw the projections as construction does (nn.Linear's initialisation)."""
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            getattr(self, name).reset_parameters()

    def _params(self) -> dict:
        return {"wq": self.q_proj.weight, "wk": self.k_proj.weight, "wv": self.v_proj.weight,
                "wo": self.out_proj.weight}

    def _dropout_kw(self) -> dict:
        active = self.training and self.dropout > 0.0
        return {"dropout": self.dropout, "train": active, "rng": GlobalRngKey() if active else None}


class ConvNNAttention(_AttentionBase, _Sampled):
    """ConvNN attention on [B, N, D] (any N, any head count): per head q_i picks K keys, softmax-weighted values,
    depthwise taps (ones at init) over the full width, dropout, out projection.

    forward(x, key_padding_mask=None): the mask [B, N] bool (True = padded) keeps padded tokens out of every
    query's neighbours; a query left with fewer valid candidates than it needs raises NotEnoughCandidates
    (a ValueError). Outputs at padded positions are computed from valid tokens only and carry no meaning.
    return_indices=True: forward returns (y, idx), idx int64 [B, num_heads, N, K], the keys each query chose.
    """

    def __init__(self, embed_dim: int, num_heads: int = 1, k: int = 9, *, sampling: str = "all",
                 num_samples: Optional[int] = None, metric: str = "dot", taps: str = "depthwise",
                 dropout: float = 0.0, config: Optional[ConvNNConfig] = None, resample: bool = False,
                 seed: Optional[int] = None, deterministic: bool = False, return_indices: bool = False,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        self.return_indices = _check_flag("return_indices", return_indices)
        factory = {"device": device, "dtype": dtype}
        self._init_projections(embed_dim, num_heads, dropout, factory)
        self.config = config if config is not None else attention_config(k, sampling=sampling,
                                                                        num_samples=num_samples, metric=metric,
                                                                        taps=taps)
        d, kk = self.embed_dim, self.config.k
        shape = (d, kk) if self.config.taps == "depthwise" else (d, d, kk)
        self.taps = nn.Parameter(torch.empty(shape, **factory))
        _init_taps(self.taps, None, self.config.taps, d * kk)
        self.device_kernels = _device_kernels(deterministic, True)
        self._init_sampling(self.config, resample, seed)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> Any:
        """y [B, N, D]; (y, idx [B, num_heads, N, K]) with return_indices=True."""
        params = dict(self._params(), taps=self.taps)
        kw = self._dropout_kw()
        rng = self._rng(self.config)
        if kw["rng"] is None:
            kw["rng"] = rng
        key_valid = None if key_padding_mask is None else ~_check_padding_mask(key_padding_mask, x)
        kernels = self._kernels(x, key_valid)
        y = pipeline.convnn_attention(kernels, x, params, self.config, heads=self.num_heads, **kw)
        return (y, kernels.indices) if self.return_indices else y

    def reset_parameters(self) -> None:
        """Re-draw the projections and the taps as construction does (the eval `sample_seed` buffer is kept)."""
        super().reset_parameters()
        _init_taps(self.taps, None, self.config.taps, self.embed_dim * self.config.k)

    def extra_repr(self) -> str:
        default = attention_config(self.config.k, sampling=self.config.sampling,
                                   num_samples=self.config.num_samples)
        text = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, {_cfg_repr(self.config, default)}"
        if self.config.sampling != "all":
            text += f", sampling={self.config.sampling!r}, num_samples={self.config.num_samples}"
        text += f", dropout={self.dropout}"
        return text + (", return_indices=True" if self.return_indices else "")


def _check_padding_mask(mask: Any, x: torch.Tensor) -> torch.Tensor:
    """key_padding_mask must be a bool tensor [B, N] matching x [B, N, D]."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"key_padding_mask must be a bool torch.Tensor [B, N] (True = padded), got "
                        f"{type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask has dtype {mask.dtype}; it must be torch.bool (True = padded)")
    if x.ndim != 3 or tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"key_padding_mask has shape {list(mask.shape)}; it must be [B, N] = {list(x.shape[:2])} "
                         f"for x of shape {list(x.shape)}")
    return mask.to(x.device)


class MultiHeadSelfAttention(_AttentionBase):
    """Dense multi-head self-attention with no-bias projections (the paper's baseline) on [B, N, D]."""

    def __init__(self, embed_dim: int, num_heads: int = 1, *, dropout: float = 0.0, device: Any = None,
                 dtype: Any = None):
        super().__init__()
        self._init_projections(embed_dim, num_heads, dropout, {"device": device, "dtype": dtype})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y [B, N, D]."""
        return attention.multihead_attention(x, self._params(), heads=self.num_heads, **self._dropout_kw())

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"


class KVTAttention(_AttentionBase):
    """KVT top-k attention: each query keeps its k largest scores (ties to the lower key index)."""

    def __init__(self, embed_dim: int, num_heads: int = 1, k: int = 9, *, dropout: float = 0.0, device: Any = None,
                 dtype: Any = None):
        super().__init__()
        self._init_projections(embed_dim, num_heads, dropout, {"device": device, "dtype": dtype})
        self.k = int(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y [B, N, D]."""
        return attention.kvt_attention(x, self._params(), self.k, heads=self.num_heads, **self._dropout_kw())

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, k={self.k}, dropout={self.dropout}"


class LocalAttention(_AttentionBase):
    """Local attention: each token attends to the tokens within `window` positions of the 1-D order."""

    def __init__(self, embed_dim: int, num_heads: int = 1, window: int = 64, *, dropout: float = 0.0,
                 device: Any = None, dtype: Any = None):
        super().__init__()
        self._init_projections(embed_dim, num_heads, dropout, {"device": device, "dtype": dtype})
        self.window = int(window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y [B, N, D]."""
        return attention.local_attention(x, self._params(), self.window, heads=self.num_heads, **self._dropout_kw())

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, window={self.window}, dropout={self.dropout}"


class SparseAttention(_AttentionBase):
    """Sparse attention over the token order: mode 'local' (|i-j| <= width/2) or 'strided' (|i-j| mod width = 0)."""

    def __init__(self, embed_dim: int, num_heads: int = 1, mode: str = "local", width: int = 49, *,
                 dropout: float = 0.0, device: Any = None, dtype: Any = None):
        super().__init__()
        if mode not in ("local", "strided"):
            raise ValueError(f"mode={mode!r} is not allowed; choose one of local, strided")
        self._init_projections(embed_dim, num_heads, dropout, {"device": device, "dtype": dtype})
        self.mode, self.width = mode, int(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y [B, N, D]."""
        return attention.sparse_attention(x, self._params(), self.mode, self.width, heads=self.num_heads,
                                          **self._dropout_kw())

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, mode={self.mode!r}, width={self.width}, "
                f"dropout={self.dropout}")


__all__ = ["ConvNN2d", "ConvNN1d", "Branching2d", "ConvNNAttention", "MultiHeadSelfAttention", "KVTAttention",
           "LocalAttention", "SparseAttention", "NotEnoughCandidates"]
