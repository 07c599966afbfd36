"""The backend contract (DESIGN.md): one vocabulary every backend object offers, in its own arrays.

Models in `models/` are written once against this Protocol; `conformance/` checks every backend
against the NumPy oracle through it. Layouts: images NCHW, tokens [B, N, D], Linear weights
[out, in] (applied as x @ w.T), Conv2d weights [O, C, kh, kw]. Params are nested dicts of arrays.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

Array = Any
Params = Any  # a pytree: nested dicts / lists / tuples of arrays
RngKey = Any  # a backend's own RNG key object, made by make_rng / split_rng

CONVNN_OPS = ("convnn2d", "convnn1d", "convnn_attention", "select_neighbors")
ATTENTION_OPS = ("multihead_attention", "masked_attention", "kvt_attention", "local_attention", "sparse_attention")
NN_OPS = (
    "conv2d", "linear", "batch_norm", "layer_norm", "relu", "gelu", "max_pool2d", "adaptive_avg_pool2d",
    "dropout", "softmax", "cross_entropy",
)
ARRAY_OPS = ("asarray", "to_numpy", "make_rng", "split_rng")
TRAINING_OPS = ("value_and_grad", "adamw", "clip_grad_norm", "compile")
VOCABULARY = CONVNN_OPS + ATTENTION_OPS + NN_OPS + ARRAY_OPS + TRAINING_OPS


@runtime_checkable
class Backend(Protocol):
    """What `convnn.get_backend(name)` returns. Every method is functional (no hidden state)."""

    name: str  # "numpy", "numba", "torch" or "jax"
    xp: Any  # the Array API namespace of its arrays

    # -- ConvNN ops (SPEC.md); `rng` may be an int seed, a numpy Generator or this backend's RngKey
    def convnn2d(self, x: Array, weight: Array, bias: Optional[Array], cfg: Any, *, candidates: Any = None,
                 rng: Any = None) -> Array: ...
    def convnn1d(self, x: Array, weight: Array, bias: Optional[Array], cfg: Any, *, candidates: Any = None,
                 rng: Any = None) -> Array: ...
    def convnn_attention(self, x: Array, params: Mapping[str, Array], cfg: Any, *, heads: int = 1,
                         dropout: float = 0.0, candidates: Any = None, rng: Any = None,
                         train: bool = False) -> Array: ...
    def select_neighbors(self, feats: Array, cfg: Any, *, query_feats: Optional[Array] = None,
                         candidates: Any = None, rng: Any = None) -> tuple[Array, Array]: ...

    # -- baseline attentions (SPEC.md section 5), params {wq, wk, wv, wo}
    def multihead_attention(self, x: Array, params: Mapping[str, Array], *, heads: int = 1,
                            dropout: float = 0.0, rng: Any = None, train: bool = False) -> Array: ...
    def kvt_attention(self, x: Array, params: Mapping[str, Array], k: int, *, heads: int = 1,
                      dropout: float = 0.0, rng: Any = None, train: bool = False) -> Array: ...
    def local_attention(self, x: Array, params: Mapping[str, Array], window: int, *, heads: int = 1,
                        dropout: float = 0.0, rng: Any = None, train: bool = False) -> Array: ...
    def sparse_attention(self, x: Array, params: Mapping[str, Array], mode: str, width: int, *,
                         heads: int = 1, dropout: float = 0.0, rng: Any = None,
                         train: bool = False) -> Array: ...

    # -- the other layers the zoo needs (torch semantics and defaults)
    def conv2d(self, x: Array, weight: Array, bias: Optional[Array], *, stride: int = 1,
               padding: Union[int, str] = 0) -> Array:
        """Cross-correlation, NCHW; padding an int or 'same' (odd kernels)."""
    def linear(self, x: Array, weight: Array, bias: Optional[Array]) -> Array:
        """x @ weight.T + bias over the last axis."""
    def batch_norm(self, x: Array, gamma: Array, beta: Array, state: Mapping[str, Array], *, train: bool,
                   momentum: float = 0.1, eps: float = 1e-5) -> tuple[Array, dict]:
        """BatchNorm2d over N, H, W. state = {'mean': [C], 'var': [C]}; in training the batch statistics
        normalise (biased var) and the running state is updated with the unbiased var, as torch does."""
    def layer_norm(self, x: Array, gamma: Array, beta: Array, eps: float = 1e-5) -> Array: ...
    def relu(self, x: Array) -> Array: ...
    def gelu(self, x: Array) -> Array:
        """Exact (erf) GELU."""
    def max_pool2d(self, x: Array, size: int = 2) -> Array:
        """Kernel = stride = size, no padding (floor)."""
    def adaptive_avg_pool2d(self, x: Array, output_size: Sequence[int]) -> Array:
        """torch's bins: start floor(i*H/oh), end ceil((i+1)*H/oh)."""
    def dropout(self, x: Array, p: float, rng: RngKey, *, train: bool) -> Array:
        """Inverted dropout in training, identity otherwise."""
    def softmax(self, x: Array, axis: int = -1) -> Array: ...
    def cross_entropy(self, logits: Array, labels: Array) -> Array:
        """Mean cross-entropy of logits [B, classes] against integer labels [B]."""

    # -- arrays and randomness
    def asarray(self, value: Any, dtype: Optional[str] = None) -> Array:
        """An array of this backend (dtype 'float32', 'float64', 'int64', ... or None to keep)."""
    def to_numpy(self, value: Array) -> Any:
        """A NumPy copy (host)."""
    def make_rng(self, seed: int) -> RngKey: ...
    def split_rng(self, key: RngKey, n: int) -> tuple[RngKey, ...]: ...

    # -- training
    def value_and_grad(self, fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
        """g(params, *args) -> (value, grads) or ((value, aux), grads), grads shaped like params."""
    def adamw(self, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8) -> Any:
        """An optimizer with .init(params) -> state and .update(grads, state, params) -> (params, state),
        torch.optim.AdamW semantics (decoupled decay on every parameter)."""
    def clip_grad_norm(self, grads: Params, max_norm: float) -> tuple[Params, Array]:
        """Scale all grads by min(1, max_norm / (global_norm + 1e-6)); returns (grads, global_norm)."""
    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """torch.compile / jax.jit where available, else fn itself."""


def check_adamw_hyperparameters(lr: float, weight_decay: float, betas: tuple[float, float]) -> None:
    """The arguments every backend's adamw accepts: lr > 0, weight_decay >= 0, both betas in [0, 1)."""
    if not (float(lr) > 0.0):
        raise ValueError(f"lr={lr!r} must be a positive float")
    if float(weight_decay) < 0.0:
        raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")
    b1, b2 = betas
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"betas={betas!r} must both be in [0, 1)")


def missing_ops(backend: Any) -> list[str]:
    """The vocabulary names a backend object does not provide (empty when complete)."""
    return [name for name in VOCABULARY if not callable(getattr(backend, name, None))]
