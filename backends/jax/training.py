"""Training pieces for jax: value_and_grad, torch-semantics AdamW (optax), global-norm clipping, jit, a train step."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from convnn.vocabulary import check_adamw_hyperparameters


class AdamW:
    """torch.optim.AdamW on a pytree through optax.adamw: decoupled decay on every parameter.

    init(params) -> state; update(grads, state, params) -> (params, state). Both are pure and jit-able.
    """

    def __init__(self, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        check_adamw_hyperparameters(lr, weight_decay, betas)
        b1, b2 = betas
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), (b1, b2), float(eps)
        # optax: p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), the same step as torch's AdamW
        self.tx = optax.adamw(self.lr, b1=b1, b2=b2, eps=self.eps, eps_root=0.0, weight_decay=self.weight_decay)

    def init(self, params: Any) -> Any:
        """Zero moments shaped like params and step 0."""
        return self.tx.init(params)

    def update(self, grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        """One AdamW step; returns (new params, new state)."""
        updates, state = self.tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state


def value_and_grad(fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """g(params, *args) -> (value, grads) or ((value, aux), grads), grads shaped like params."""
    return jax.value_and_grad(fn, has_aux=has_aux)


def global_norm(grads: Any) -> jnp.ndarray:
    """sqrt of the sum of squares of every leaf (torch's total 2-norm)."""
    leaves = jax.tree_util.tree_leaves(grads)
    if not leaves:
        return jnp.zeros(())
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.result_type(g, jnp.float32)))) for g in leaves))


def clip_grad_norm(grads: Any, max_norm: float) -> tuple[Any, jnp.ndarray]:
    """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)); returns (grads, norm)."""
    if not (float(max_norm) > 0.0):
        raise ValueError(f"max_norm={max_norm!r} must be a positive float")
    norm = global_norm(grads)
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree_util.tree_map(lambda g: (g * scale).astype(g.dtype), grads), norm


def compile(fn: Callable[..., Any], **jit_options: Any) -> Callable[..., Any]:
    """jax.jit(fn, **jit_options): traced and compiled once per input shape."""
    return jax.jit(fn, **jit_options)


def make_train_step(loss_fn: Callable[..., Any], optimizer: Any, *, max_grad_norm: float | None = 1.0,
                    has_aux: bool = False) -> Callable[..., Any]:
    """A jitted step(params, opt_state, *batch) -> (params, opt_state, loss, aux, grad_norm).

    loss_fn(params, *batch) returns the loss (or (loss, aux) with has_aux); gradients are clipped to
    max_grad_norm (None: no clipping) before the optimizer update.
    """

    def step(params: Any, opt_state: Any, *batch: Any) -> tuple[Any, Any, Any, Any, Any]:
        out, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(params, *batch)
        loss, aux = out if has_aux else (out, None)
        if max_grad_norm is not None:
            grads, norm = clip_grad_norm(grads, max_grad_norm)
        else:
            norm = global_norm(grads)
        params, opt_state = optimizer.update(grads, opt_state, params)
        return params, opt_state, loss, aux, norm

    return jax.jit(step)
