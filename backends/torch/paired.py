"""The K selected affinities of each query, differentiable, without a gathered [G, Nq, K, F] copy of the keys.

convnn::paired_dots computes dots[g, i, j] = q[g, i] . keys[g, idx[g, i, j]] one block of query rows at a time,
and its backward regathers per block (grad q) and scatters with index_add_ (grad keys); the metric is then
finished on [G, Nq, K] tables (per-token norms gathered by index), so training ConvNN attention holds at most
one block of gathered rows instead of the whole layer's (and the autograd products of it).
"""
from __future__ import annotations

import math

import torch

from . import aggregation
from .aggregation import _flat_index, block_rows
from .selection import norms


@torch.library.custom_op("convnn::paired_dots", mutates_args=())
def paired_dots(q: torch.Tensor, keys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """dots [G, Nq, K] = q[g, i] . keys[g, idx[g, i, j]] for q [G, Nq, F], keys [G, N, F], idx [G, Nq, K]."""
    g, n, f = keys.shape
    nq, k = idx.shape[1], idx.shape[2]
    table = keys.reshape(g * n, f)
    out = q.new_empty((g, nq, k))
    step = block_rows(g, nq, k, f, aggregation.ELEMENTWISE_BLOCK_ELEMENTS)
    for r0 in range(0, nq, step):
        r1 = min(nq, r0 + step)
        rows = table.index_select(0, _flat_index(idx[:, r0:r1], n)).view(g, r1 - r0, k, f)
        out[:, r0:r1] = torch.matmul(rows, q[:, r0:r1, :, None])[..., 0]
    return out


@paired_dots.register_fake
def _paired_dots_fake(q, keys, idx):
    return q.new_empty((q.shape[0], idx.shape[1], idx.shape[2]))


@torch.library.custom_op("convnn::paired_dots_backward", mutates_args=())
def paired_dots_backward(grad: torch.Tensor, q: torch.Tensor, keys: torch.Tensor, idx: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad q [G, Nq, F], grad keys [G, N, F]) of paired_dots, block by block."""
    g, n, f = keys.shape
    nq, k = idx.shape[1], idx.shape[2]
    table = keys.reshape(g * n, f)
    grad = grad.contiguous()
    grad_q = torch.empty_like(q)
    grad_keys = torch.zeros_like(table)
    step = block_rows(g, nq, k, f, aggregation.ELEMENTWISE_BLOCK_ELEMENTS)
    for r0 in range(0, nq, step):
        r1 = min(nq, r0 + step)
        flat = _flat_index(idx[:, r0:r1], n)
        rows = table.index_select(0, flat).view(g, r1 - r0, k, f)
        gb = grad[:, r0:r1]
        grad_q[:, r0:r1] = torch.matmul(gb[:, :, None, :], rows)[:, :, 0]
        grad_keys.index_add_(0, flat, (gb[..., None] * q[:, r0:r1, None, :]).reshape(-1, f))
    return grad_q, grad_keys.view(g, n, f)


@paired_dots_backward.register_fake
def _paired_dots_backward_fake(grad, q, keys, idx):
    return torch.empty_like(q), torch.empty_like(keys)


def _setup(ctx, inputs, output) -> None:
    q, keys, idx = inputs
    ctx.save_for_backward(q, keys, idx)


def _backward(ctx, grad):
    q, keys, idx = ctx.saved_tensors
    grad_q, grad_keys = paired_dots_backward(grad, q, keys, idx)
    need_q, need_keys, _ = ctx.needs_input_grad
    return (grad_q if need_q else None), (grad_keys if need_keys else None), None


paired_dots.register_autograd(_backward, setup_context=_setup)


def _gather_per_token(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[g, idx[g, i, j]] for a per-token table t [G, N] (differentiable)."""
    g, nq, k = idx.shape
    return torch.gather(t, 1, idx.reshape(g, nq * k)).view(g, nq, k)


def paired_affinity(metric: str, q: torch.Tensor, keys: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """a [G, Nq, K] between q [G, Nq, F] and the selected keys [G, N, F] (SPEC.md's metrics; larger is closer)."""
    dots = paired_dots(q.contiguous(), keys.contiguous(), idx.contiguous())
    if metric == "cosine":
        return torch.clamp(dots / (norms(q)[..., None] * _gather_per_token(norms(keys), idx)), -1.0, 1.0)
    if metric == "euclidean":
        sq = torch.sum(q * q, dim=-1)[..., None] + _gather_per_token(torch.sum(keys * keys, dim=-1), idx) - 2.0 * dots
        return -torch.clamp(sq, min=0.0)
    if metric == "dot":
        return dots / math.sqrt(q.shape[-1])
    raise ValueError(f"metric={metric!r} is not allowed; choose one of cosine, euclidean, dot")
