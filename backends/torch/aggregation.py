"""Gather-and-taps (SPEC.md section 4, step 5) on torch, forward and backward, chunked over query rows.

The K neighbour rows are gathered once per block of queries from the [G, N, C] value table and
reduced at once by the taps, so no [G, Nq, K, C] tensor of the whole layer ever exists, neither in
the forward nor in the backward (which regathers per block and scatters with index_add_).
Layouts: values [G, N, C]; idx [G, Nq, K]; rho [G, Nq, K] or None; full taps weight [O, C, K];
depthwise taps [C, K], or [heads, C, K] when G = B * heads (group g uses taps g % heads).
"""
from __future__ import annotations

from typing import Optional

import torch

# elements of one gathered [G, rows, K, C] block: full taps reduce a block by one GEMM; the elementwise paths
# (depthwise taps, paired affinities) hold several block-sized products at once, so their blocks are smaller
BLOCK_ELEMENTS = 1 << 21
ELEMENTWISE_BLOCK_ELEMENTS = 1 << 19


def block_rows(groups: int, n_query: int, k: int, channels: int, elements: int = BLOCK_ELEMENTS) -> int:
    """Query rows per block of the gather (at least 1) for blocks of about `elements` elements."""
    return max(1, min(n_query, elements // max(1, groups * k * channels)))


def taps_block_rows(groups: int, n_query: int, k: int, channels: int, taps: str) -> int:
    """Query rows per gather block for these taps."""
    elements = BLOCK_ELEMENTS if taps == "full" else ELEMENTWISE_BLOCK_ELEMENTS
    return block_rows(groups, n_query, k, channels, elements)


def _flat_index(idx: torch.Tensor, n_tokens: int) -> torch.Tensor:
    g = idx.shape[0]
    offsets = (torch.arange(g, device=idx.device, dtype=idx.dtype) * n_tokens).view(g, 1, 1)
    return (idx + offsets).reshape(-1)


def _depthwise_table(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Taps as [G or 1, 1, K, C] for broadcasting against a gathered block [G, m, K, C]."""
    if weight.ndim == 2:
        return weight.t()[None, None]
    heads = weight.shape[0]
    per_group = weight.transpose(1, 2).repeat(groups // heads, 1, 1)  # [G, K, C], group g -> head g % heads
    return per_group[:, None]


def gather_taps_forward(values: torch.Tensor, idx: torch.Tensor, rho: Optional[torch.Tensor], weight: torch.Tensor,
                        bias: Optional[torch.Tensor], taps: str) -> torch.Tensor:
    """y [G, Nq, O]: taps applied to the rho-weighted neighbour rows values[g, idx[g, i, k]]."""
    g, n, c = values.shape
    nq, k = idx.shape[1], idx.shape[2]
    table = values.reshape(g * n, c)
    if taps == "full":
        w_flat = weight.permute(2, 1, 0).reshape(k * c, weight.shape[0])  # [K*C, O]
        out_ch = weight.shape[0]
    else:
        w_dw = _depthwise_table(weight, g)
        out_ch = c
    y = values.new_empty((g, nq, out_ch))
    step = taps_block_rows(g, nq, k, c, taps)
    for r0 in range(0, nq, step):
        r1 = min(nq, r0 + step)
        m = r1 - r0
        block = table.index_select(0, _flat_index(idx[:, r0:r1], n)).view(g, m, k, c)
        if rho is not None:
            block = block * rho[:, r0:r1, :, None]
        if taps == "full":
            y[:, r0:r1] = torch.matmul(block.view(g, m, k * c), w_flat)
        else:
            y[:, r0:r1] = torch.sum(block * w_dw, dim=2)
    if bias is not None:
        y = y + bias
    return y


def gather_taps_backward(grad_y: torch.Tensor, values: torch.Tensor, idx: torch.Tensor, rho: Optional[torch.Tensor],
                         weight: torch.Tensor, taps: str, need_values: bool = True, need_rho: bool = True,
                         need_weight: bool = True) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor],
                                                            Optional[torch.Tensor]]:
    """(grad values, grad rho, grad weight) of gather_taps_forward, block by block (bias grad is a plain sum)."""
    g, n, c = values.shape
    nq, k = idx.shape[1], idx.shape[2]
    table = values.reshape(g * n, c)
    grad_values = torch.zeros_like(table) if need_values else None
    grad_rho = torch.empty_like(rho) if (rho is not None and need_rho) else None
    if taps == "full":
        out_ch = weight.shape[0]
        w_flat = weight.permute(2, 1, 0).reshape(k * c, out_ch)
        grad_w_flat = torch.zeros_like(w_flat) if need_weight else None
    else:
        w_dw = _depthwise_table(weight, g)
        grad_w_dw = torch.zeros((g if weight.ndim == 3 else 1, 1, k, c), dtype=weight.dtype,
                                device=weight.device) if need_weight else None
    step = taps_block_rows(g, nq, k, c, taps)
    for r0 in range(0, nq, step):
        r1 = min(nq, r0 + step)
        m = r1 - r0
        flat = _flat_index(idx[:, r0:r1], n)
        block = table.index_select(0, flat).view(g, m, k, c)
        r_blk = rho[:, r0:r1, :, None] if rho is not None else None
        weighted = block * r_blk if r_blk is not None else block
        gy = grad_y[:, r0:r1]
        if taps == "full":
            if need_weight:
                grad_w_flat += weighted.reshape(g * m, k * c).t() @ gy.reshape(g * m, out_ch)
            d_weighted = torch.matmul(gy, w_flat.t()).view(g, m, k, c)
        else:
            if need_weight:
                grad_w_dw += torch.sum(weighted * gy[:, :, None, :], dim=1, keepdim=True).sum(
                    dim=0, keepdim=True) if weight.ndim == 2 else torch.sum(
                    weighted * gy[:, :, None, :], dim=1, keepdim=True)
            d_weighted = gy[:, :, None, :] * w_dw
        if grad_rho is not None:
            grad_rho[:, r0:r1] = torch.sum(d_weighted * block, dim=-1)
        if need_values:
            d_block = d_weighted * r_blk if r_blk is not None else d_weighted
            grad_values.index_add_(0, flat, d_block.reshape(g * m * k, c))
    grad_weight = None
    if need_weight:
        if taps == "full":
            grad_weight = grad_w_flat.view(k, c, out_ch).permute(2, 1, 0).contiguous()
        elif weight.ndim == 2:
            grad_weight = grad_w_dw[0, 0].t().contiguous()
        else:
            heads = weight.shape[0]
            per_group = grad_w_dw[:, 0]  # [G, K, C]
            grad_weight = per_group.view(g // heads, heads, k, c).sum(0).transpose(1, 2).contiguous()
    return (grad_values.view(g, n, c) if need_values else None), grad_rho, grad_weight
