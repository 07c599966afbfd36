"""Functional training on torch: value_and_grad over a params pytree, AdamW (torch.optim.AdamW semantics), clipping."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from convnn.tree import tree_leaves, tree_map
from convnn.vocabulary import check_adamw_hyperparameters


def _rebuild(tree: Any, leaves: list) -> Any:
    """A tree shaped like `tree` with its leaves (in tree_leaves order: dict keys sorted) replaced by `leaves`."""
    it = iter(leaves)
    return _map_sorted(lambda _leaf: next(it), tree)


def _map_sorted(fn: Callable[[Any], Any], tree: Any) -> Any:
    """tree_map that visits dict keys in sorted order (the order of tree_leaves), keeping the key order."""
    if isinstance(tree, dict):
        out = {}
        for k in sorted(tree):
            out[k] = _map_sorted(fn, tree[k])
        return {k: out[k] for k in tree}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_sorted(fn, t) for t in tree)
    if tree is None:
        return None
    return fn(tree)


def _detach_tree(tree: Any) -> Any:
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree)


def value_and_grad(fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """g(params, *args, **kw) -> (value, grads) or ((value, aux), grads); grads shaped like params (zeros if unused)."""

    def wrapped(params: Any, *args: Any, **kwargs: Any) -> Any:
        leaves = tree_leaves(params)
        live = [t.detach().requires_grad_(t.is_floating_point()) for t in leaves]
        live_params = _rebuild(params, live)
        with torch.enable_grad():
            out = fn(live_params, *args, **kwargs)
            value, aux = (out[0], out[1]) if has_aux else (out, None)
            wants = [t for t in live if t.requires_grad]
            grads = torch.autograd.grad(value, wants, allow_unused=True) if wants else []
        it = iter(grads)
        full = []
        for t in live:
            if t.requires_grad:
                gr = next(it)
                full.append(torch.zeros_like(t) if gr is None else gr)
            else:
                full.append(torch.zeros_like(t))
        grad_tree = _rebuild(params, full)
        value = value.detach()
        if has_aux:
            return (value, _detach_tree(aux)), grad_tree
        return value, grad_tree

    return wrapped


@dataclass(frozen=True)
class AdamW:
    """AdamW as init/update functions with torch.optim.AdamW semantics (decoupled decay on every parameter)."""

    lr: float
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def init(self, params: Any) -> dict:
        """{'step': 0, 'm': zeros like params, 'v': zeros like params}."""
        zeros = tree_map(lambda t: torch.zeros_like(t, memory_format=torch.preserve_format), params)
        return {"step": 0, "m": zeros, "v": tree_map(torch.zeros_like, params)}

    def update(self, grads: Any, state: dict, params: Any) -> tuple[Any, dict]:
        """One step: new (params, state); the inputs are left unchanged."""
        step = int(state["step"]) + 1
        b1, b2 = self.betas
        p_list = [t.detach() for t in tree_leaves(params)]
        g_list = [t.detach() for t in tree_leaves(grads)]
        m_list = tree_leaves(state["m"])
        v_list = tree_leaves(state["v"])
        with torch.no_grad():
            decayed = torch._foreach_mul(p_list, 1.0 - self.lr * self.weight_decay)
            m_new = torch._foreach_add(torch._foreach_mul(m_list, b1), g_list, alpha=1.0 - b1)
            v_new = torch._foreach_addcmul(torch._foreach_mul(v_list, b2), g_list, g_list, value=1.0 - b2)
            bias1 = 1.0 - b1 ** step
            bias2 = 1.0 - b2 ** step
            denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(v_new), bias2 ** 0.5), self.eps)
            new_p = torch._foreach_addcdiv(decayed, m_new, denom, value=-self.lr / bias1)
        return (_rebuild(params, list(new_p)),
                {"step": step, "m": _rebuild(params, list(m_new)), "v": _rebuild(params, list(v_new))})


def adamw(lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8) -> AdamW:
    """The optimizer object (init / update)."""
    check_adamw_hyperparameters(lr, weight_decay, betas)
    return AdamW(float(lr), float(weight_decay), (float(betas[0]), float(betas[1])), float(eps))


def clip_grad_norm(grads: Any, max_norm: float) -> tuple[Any, torch.Tensor]:
    """Scale all grads by min(1, max_norm / (global_norm + 1e-6)); returns (grads, global_norm)."""
    leaves = [t.detach() for t in tree_leaves(grads)]
    if not leaves:
        return grads, torch.zeros(())
    norms = torch._foreach_norm(leaves)
    dtype = torch.float32
    for n in norms:
        dtype = torch.promote_types(dtype, n.dtype)
    total = torch.linalg.vector_norm(torch.stack([n.to(dtype) for n in norms]))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    scaled = [t * scale.to(t.dtype) for t in leaves]
    return _rebuild(grads, scaled), total


def compile_fn(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """torch.compile(fn) (options passed through)."""
    return torch.compile(fn, **options)
