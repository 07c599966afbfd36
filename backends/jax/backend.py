"""JaxBackend: the vocabulary of convnn_core/vocabulary.py bound to jax functions and the load options."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from . import arrays, attention, convnn, nn, training
from .neighbors import PRECISIONS, EngineOptions


class JaxBackend:
    """ConvNN ops, baseline attentions, layers, arrays/RNG and training on jax arrays; every op is pure.

    Options (given to convnn_core.get_backend('jax', ...)):
      x64: bool = False            turn on jax_enable_x64 (process-wide) so float64 arrays exist
      precision: str = 'highest'   matmul precision of the ops ('default', 'high', 'highest');
                                   'highest' keeps float32 exact on GPUs that would use TF32
      block_elements: int | None   budget (elements) of the largest per-block temporary; samples
                                   and query rows are processed in blocks of this size. None:
                                   2**20 on CPUs (cache-sized), 2**26 on GPUs/TPUs
    """

    name = "jax"
    trainable_convnn = True

    def __init__(self, *, x64: bool = False, precision: Optional[str] = "highest",
                 block_elements: Optional[int] = None) -> None:
        if not isinstance(x64, bool):
            raise TypeError(f"x64={x64!r} must be True or False")
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not allowed; choose one of {', '.join(PRECISIONS)} or None")
        if block_elements is not None and (isinstance(block_elements, bool) or not isinstance(block_elements, int)
                                           or block_elements < 1):
            raise ValueError(f"block_elements={block_elements!r} must be an int >= 1 or None")
        if x64:
            jax.config.update("jax_enable_x64", True)
        self.xp = jnp
        self.options = EngineOptions(precision=precision, block_elements=block_elements)
        self._precision = None if precision is None else PRECISIONS[precision]

    def __repr__(self) -> str:
        return (f"<convnn backend 'jax' on {jax.default_backend()} (x64={arrays.x64_enabled()}, "
                f"precision={self.options.precision!r})>")

    # -- ConvNN ops
    def convnn2d(self, x: Any, weight: Any, bias: Optional[Any] = None, cfg: Any = convnn.DEFAULT_CONFIG, *,
                 candidates: Any = None, rng: Any = None) -> jnp.ndarray:
        """ConvNN on an NCHW map (SPEC.md); see backends.jax.convnn.convnn2d."""
        return convnn.convnn2d(x, weight, bias, cfg, candidates=candidates, rng=rng, opts=self.options)

    def convnn1d(self, x: Any, weight: Any, bias: Optional[Any] = None, cfg: Any = convnn.DEFAULT_CONFIG, *,
                 candidates: Any = None, rng: Any = None) -> jnp.ndarray:
        """ConvNN on a [B, C, L] sequence."""
        return convnn.convnn1d(x, weight, bias, cfg, candidates=candidates, rng=rng, opts=self.options)

    def convnn_attention(self, x: Any, params: Mapping[str, Any], cfg: Any = None, *, heads: int = 1,
                         dropout: float = 0.0, candidates: Any = None, rng: Any = None,
                         train: bool = False) -> jnp.ndarray:
        """ConvNN attention on [B, N, D] tokens."""
        return attention.convnn_attention(x, params, cfg, heads=heads, dropout=dropout, candidates=candidates,
                                          rng=rng, train=train, opts=self.options)

    def select_neighbors(self, feats: Any, cfg: Any = convnn.DEFAULT_CONFIG, *, query_feats: Any = None,
                         candidates: Any = None, rng: Any = None) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Neighbour indices and affinities [B, N, K] of every token."""
        return convnn.select_neighbors(feats, cfg, query_feats=query_feats, candidates=candidates, rng=rng,
                                       opts=self.options)

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
    asarray = staticmethod(arrays.asarray)
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
