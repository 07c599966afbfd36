"""JaxBackend: the pipeline's ConvNN ops on the jax kernels, and the rest of the vocabulary as jax functions."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from convnn.backend_base import PipelineOps
from convnn.kernels import Capabilities
from convnn.vocabulary import ATTENTION_OPS, CONVNN_OPS

from . import arrays, attention, nn, training
from .kernels import JaxKernels, device_kind
from .neighbors import PRECISIONS, EngineOptions

DEVICES = ("cpu", "cuda")


def _jax_device(device: Optional[str]) -> Optional[Any]:
    """The jax device behind a device name ('cpu', 'cuda', 'cuda:1'; None: jax's default placement)."""
    if device is None:
        return None
    kind, _, index = str(device).partition(":")
    if kind not in DEVICES or (index and not index.isdigit()):
        raise ValueError(f"device={device!r} is not allowed; choose one of {', '.join(DEVICES)} (or 'cuda:N') or None")
    platform = "cpu" if kind == "cpu" else "gpu"
    try:
        found = jax.devices(platform)
    except RuntimeError as err:
        raise ValueError(f"device={device!r}: jax has no {platform} device here ({err})") from err
    if int(index or 0) >= len(found):
        raise ValueError(f"device={device!r}: jax sees {len(found)} {platform} device(s)")
    return found[int(index or 0)]


class JaxBackend(PipelineOps):
    """ConvNN ops (the one pipeline, jitted per plan), baseline attentions, layers, arrays/RNG and training on jax
    arrays; every op is pure.

    Options (given to convnn.get_backend('jax', ...)):
      x64: bool = False            turn on jax_enable_x64 (process-wide) so float64 arrays exist
      precision: str = 'highest'   matmul precision of the ops ('default', 'high', 'highest');
                                   'highest' keeps float32 exact on GPUs that would use TF32
      block_elements: int | None   budget (elements) of the largest per-block temporary; samples
                                   and query rows are processed in blocks of this size. None:
                                   2**20 on CPUs (cache-sized), 2**26 on GPUs/TPUs
      check_inputs: bool = True    refuse NaN/inf inputs where their values can be read (not under a trace)
      device: 'cpu' | 'cuda' | None  where `place` and `asarray` commit arrays (None: jax's default device)
    """

    name = "jax"
    xp = jnp
    trainable_convnn = True

    def __init__(self, *, x64: bool = False, precision: Optional[str] = "highest",
                 block_elements: Optional[int] = None, check_inputs: bool = True,
                 device: Optional[str] = None) -> None:
        if not isinstance(x64, bool):
            raise TypeError(f"x64={x64!r} must be True or False")
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not allowed; choose one of {', '.join(PRECISIONS)} or None")
        if block_elements is not None and (isinstance(block_elements, bool) or not isinstance(block_elements, int)
                                           or block_elements < 1):
            raise ValueError(f"block_elements={block_elements!r} must be an int >= 1 or None")
        if not isinstance(check_inputs, bool):
            raise TypeError(f"check_inputs={check_inputs!r} must be True or False")
        self._device = _jax_device(device)
        if x64:
            jax.config.update("jax_enable_x64", True)
        self.options = EngineOptions(precision=precision, block_elements=block_elements)
        self._precision = self.options.lax_precision
        kind = device_kind() if device is None else str(device).partition(":")[0]
        self.kernels = JaxKernels(self.options, device=kind, check_inputs=check_inputs)

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """What this backend can do now (float64 and int64 exist only while 64-bit jax is on, a process-wide switch)."""
        device = self.kernels.device
        return Capabilities(
            dtypes=self.kernels.dtypes, devices=DEVICES, device=device,
            differentiable=CONVNN_OPS + ATTENTION_OPS, trainable=True, compiles=True, compile_by_default=True,
            int64_labels=arrays.x64_enabled(), memory=None if device == "cuda" else "host", mixed_precision="cast",
            data_parallel="devices",
        )

    def __repr__(self) -> str:
        return (f"<convnn backend 'jax' on {self.kernels.device} (x64={arrays.x64_enabled()}, "
                f"precision={self.options.precision!r})>")

    # -- device
    def synchronize(self, value: Any) -> Any:
        """Block until the device work behind value (a pytree) is done; returns value."""
        return jax.block_until_ready(value)

    def place(self, tree: Any) -> Any:
        """Commit a pytree of arrays to the backend's device (as jit outputs are)."""
        return jax.device_put(tree, self._device if self._device is not None else jax.devices()[0])

    # -- baseline attentions
    def masked_attention(self, x: Any, params: Mapping[str, Any], mask: Any = None, **kw: Any) -> jnp.ndarray:
        """Dense attention with an optional boolean mask."""
        return attention.masked_attention(x, params, mask, opts=self.options, **kw)

    def multihead_attention(self, x: Any, params: Mapping[str, Any], **kw: Any) -> jnp.ndarray:
        """Dense multi-head self-attention."""
        return attention.masked_attention(x, params, None, opts=self.options, **kw)

    def kvt_attention(self, x: Any, params: Mapping[str, Any], k: int, **kw: Any) -> jnp.ndarray:
        """Top-k attention (ties to the lower key index)."""
        return attention.kvt_attention(x, params, k, opts=self.options, **kw)

    def local_attention(self, x: Any, params: Mapping[str, Any], window: int, **kw: Any) -> jnp.ndarray:
        """Local attention over the token order."""
        return attention.local_attention(x, params, window, opts=self.options, **kw)

    def sparse_attention(self, x: Any, params: Mapping[str, Any], mode: str, width: int, **kw: Any) -> jnp.ndarray:
        """Sparse (local or strided) attention."""
        return attention.sparse_attention(x, params, mode, width, opts=self.options, **kw)

    # -- layers
    def conv2d(self, x: Any, weight: Any, bias: Optional[Any], *, stride: int = 1,
               padding: Union[int, str] = 0) -> jnp.ndarray:
        """Cross-correlation on NCHW (lax.conv_general_dilated)."""
        return nn.conv2d(x, weight, bias, stride=stride, padding=padding, precision=self._precision)

    def linear(self, x: Any, weight: Any, bias: Optional[Any]) -> jnp.ndarray:
        """x @ weight.T + bias."""
        return nn.linear(x, weight, bias, precision=self._precision)

    batch_norm = staticmethod(nn.batch_norm)
    layer_norm = staticmethod(nn.layer_norm)
    relu = staticmethod(nn.relu)
    gelu = staticmethod(nn.gelu)
    max_pool2d = staticmethod(nn.max_pool2d)
    adaptive_avg_pool2d = staticmethod(nn.adaptive_avg_pool2d)
    dropout = staticmethod(nn.dropout)
    softmax = staticmethod(nn.softmax)
    cross_entropy = staticmethod(nn.cross_entropy)

    # -- arrays and randomness
    def asarray(self, value: Any, dtype: Optional[str] = None) -> jnp.ndarray:
        """A jax array from a host value; dtype a name such as 'float32' (64-bit ones need x64 enabled)."""
        out = arrays.asarray(value, dtype)
        return out if self._device is None else jax.device_put(out, self._device)

    to_numpy = staticmethod(arrays.to_numpy)
    make_rng = staticmethod(arrays.make_rng)
    split_rng = staticmethod(arrays.split_rng)

    # -- training
    value_and_grad = staticmethod(training.value_and_grad)
    clip_grad_norm = staticmethod(training.clip_grad_norm)
    compile = staticmethod(training.compile)
    make_train_step = staticmethod(training.make_train_step)

    def adamw(self, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8) -> training.AdamW:
        """torch.optim.AdamW semantics through optax."""
        return training.AdamW(lr, weight_decay, betas, eps)
