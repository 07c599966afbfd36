"""The ConvNN kernels as torch.library custom ops, so torch.compile(fullgraph=True) traces them as single nodes.

convnn::select_topk    exact top-K selection (no gradient: indices are piecewise constant)
convnn::gather_taps    gather + taps with its own backward op convnn::gather_taps_backward
convnn::fused_convnn   affinities -> streaming top-K -> gather -> taps in one Triton kernel (CUDA)
On CUDA the Triton kernels run where the shapes allow it; on the CPU the selection runs on the numba
streaming top-K kernel when numba is installed (cpu_select.py); everywhere else the chunked eager code.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from . import aggregation, cpu_select, selection

_EMPTY = (0,)


def triton_usable(t: torch.Tensor) -> bool:
    """Whether the Triton kernels may run on this tensor: CUDA, or the CPU when TRITON_INTERPRET=1 and
    CONVNN_TORCH_TRITON_ON_CPU=1 (the interpreter, for tests); CONVNN_TORCH_NO_TRITON=1 turns them off."""
    if os.environ.get("CONVNN_TORCH_NO_TRITON") == "1":
        return False
    if not t.is_cuda and not (os.environ.get("TRITON_INTERPRET") == "1"
                              and os.environ.get("CONVNN_TORCH_TRITON_ON_CPU") == "1"):
        return False
    from . import triton_kernels

    return triton_kernels.AVAILABLE


# ----------------------------------------------------------------------------- selection
@torch.library.custom_op("convnn::select_topk", mutates_args=())
def select_topk(query_feats: torch.Tensor, key_feats: torch.Tensor, queries: Optional[torch.Tensor],
                cand: Optional[torch.Tensor], k: int, metric: str, self_first: bool, grid: Optional[list[int]] = None,
                grid_scale: float = 0.0, queries_are_keys: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [B, Nq, K] int64 and affinities [B, Nq, K] (float32 for half inputs) in rank order.

    grid (selection.grid_args: padded shape then axis weights) and grid_scale: the exact coordinate part of
    euclidean position/blend selection (SPEC section 4, step 1), which only the eager selection computes.
    queries_are_keys: query_feats are key_feats' rows at queries (all rows when None), which lets the CPU
    kernel build each image's affinities from one symmetric product."""
    if grid is None and triton_usable(query_feats):
        from . import triton_kernels

        if triton_kernels.select_supported(query_feats, k):
            return triton_kernels.select_topk(query_feats, key_feats, queries, cand, k, metric, self_first)
    if cpu_select.usable(query_feats, grid):
        return cpu_select.select_topk(query_feats, key_feats, queries, cand, k, metric, self_first, queries_are_keys)
    return selection.select_topk(query_feats, key_feats, queries, cand, k, metric, self_first,
                                 selection.grid_of(grid, grid_scale))


@select_topk.register_fake
def _select_topk_fake(query_feats, key_feats, queries, cand, k, metric, self_first, grid=None, grid_scale=0.0,
                      queries_are_keys=False):
    b, nq = query_feats.shape[0], query_feats.shape[1]
    work = torch.float32 if query_feats.dtype in (torch.float16, torch.bfloat16) else query_feats.dtype
    return (query_feats.new_empty((b, nq, k), dtype=torch.int64), query_feats.new_empty((b, nq, k), dtype=work))


# ----------------------------------------------------------------------------- gather + taps
@torch.library.custom_op("convnn::gather_taps", mutates_args=())
def gather_taps(values: torch.Tensor, idx: torch.Tensor, rho: Optional[torch.Tensor], weight: torch.Tensor,
                bias: Optional[torch.Tensor], taps: str, deterministic: bool) -> torch.Tensor:
    """y [G, Nq, O]: the taps applied to the rho-weighted rows values[g, idx[g, i, :]]."""
    if triton_usable(values):
        from . import triton_kernels

        if triton_kernels.taps_supported(values, weight, taps):
            return triton_kernels.gather_taps_forward(values, idx, rho, weight, bias, taps)
    return aggregation.gather_taps_forward(values, idx, rho, weight, bias, taps)


@gather_taps.register_fake
def _gather_taps_fake(values, idx, rho, weight, bias, taps, deterministic):
    out = weight.shape[0] if taps == "full" else values.shape[-1]
    return values.new_empty((values.shape[0], idx.shape[1], out))


@torch.library.custom_op("convnn::gather_taps_backward", mutates_args=())
def gather_taps_backward(grad_y: torch.Tensor, values: torch.Tensor, idx: torch.Tensor, rho: Optional[torch.Tensor],
                         weight: torch.Tensor, taps: str, deterministic: bool, need_values: bool, need_rho: bool,
                         need_weight: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad values, grad rho, grad weight); a part not needed comes back empty."""
    grad_y = grad_y.contiguous()
    if triton_usable(values):
        from . import triton_kernels

        if triton_kernels.taps_supported(values, weight, taps):
            gv, gr, gw = triton_kernels.gather_taps_backward(grad_y, values, idx, rho, weight, taps, deterministic,
                                                             need_values, need_rho, need_weight)
            return _or_empty(gv, values), _or_empty(gr, values), _or_empty(gw, values)
    gv, gr, gw = aggregation.gather_taps_backward(grad_y, values, idx, rho, weight, taps, need_values, need_rho,
                                                  need_weight)
    return _or_empty(gv, values), _or_empty(gr, values), _or_empty(gw, values)


def _or_empty(t: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(_EMPTY) if t is None else t


@gather_taps_backward.register_fake
def _gather_taps_backward_fake(grad_y, values, idx, rho, weight, taps, deterministic, need_values, need_rho,
                               need_weight):
    gv = torch.empty_like(values) if need_values else values.new_empty(_EMPTY)
    gr = torch.empty_like(rho) if (rho is not None and need_rho) else values.new_empty(_EMPTY)
    gw = torch.empty_like(weight) if need_weight else values.new_empty(_EMPTY)
    return gv, gr, gw


def _gather_taps_setup(ctx, inputs, output) -> None:
    values, idx, rho, weight, bias, taps, deterministic = inputs
    ctx.save_for_backward(values, idx, rho, weight)
    ctx.taps = taps
    ctx.deterministic = deterministic
    ctx.has_bias = bias is not None


def _gather_taps_grad(ctx, grad_y):
    values, idx, rho, weight = ctx.saved_tensors
    need_values, _, need_rho, need_weight, need_bias, _, _ = ctx.needs_input_grad
    gv, gr, gw = gather_taps_backward(grad_y, values, idx, rho, weight, ctx.taps, ctx.deterministic,
                                      bool(need_values), bool(need_rho and rho is not None), bool(need_weight))
    gb = grad_y.sum(dim=(0, 1)) if (ctx.has_bias and need_bias) else None
    return (gv if need_values else None, None, gr if (need_rho and rho is not None) else None,
            gw if need_weight else None, gb, None, None)


gather_taps.register_autograd(_gather_taps_grad, setup_context=_gather_taps_setup)


# ----------------------------------------------------------------------------- fused forward (CUDA)
@torch.library.custom_op("convnn::fused_convnn", mutates_args=())
def fused_convnn(query_feats: torch.Tensor, key_feats: torch.Tensor, values: torch.Tensor,
                 queries: Optional[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor], k: int,
                 metric: str, self_first: bool, taps: str, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [B, Nq, O], idx [B, Nq, K]) for weighting='none', all candidates: one Triton kernel on CUDA."""
    if triton_usable(values):
        from . import triton_kernels

        if triton_kernels.fused_supported(query_feats, values, weight, k, taps):
            return triton_kernels.fused_forward(query_feats, key_feats, values, queries, weight, bias, k, metric,
                                                self_first, taps)
    idx, _ = selection.select_topk(query_feats, key_feats, queries, None, k, metric, self_first)
    return aggregation.gather_taps_forward(values, idx, None, weight, bias, taps), idx


@fused_convnn.register_fake
def _fused_fake(query_feats, key_feats, values, queries, weight, bias, k, metric, self_first, taps, deterministic):
    out = weight.shape[0] if taps == "full" else values.shape[-1]
    b, nq = query_feats.shape[0], query_feats.shape[1]
    return values.new_empty((b, nq, out)), values.new_empty((b, nq, k), dtype=torch.int64)


def _fused_setup(ctx, inputs, output) -> None:
    query_feats, key_feats, values, queries, weight, bias, k, metric, self_first, taps, deterministic = inputs
    _, idx = output
    ctx.save_for_backward(values, idx, weight)
    ctx.taps = taps
    ctx.deterministic = deterministic
    ctx.has_bias = bias is not None


def _fused_grad(ctx, grad_y, grad_idx):
    values, idx, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    gv, _, gw = gather_taps_backward(grad_y, values, idx, None, weight, ctx.taps, ctx.deterministic,
                                     bool(need[2]), False, bool(need[4]))
    gb = grad_y.sum(dim=(0, 1)) if (ctx.has_bias and need[5]) else None
    return (None, None, gv if need[2] else None, None, gw if need[4] else None, gb, None, None, None, None, None)


fused_convnn.register_autograd(_fused_grad, setup_context=_fused_setup)
