"""Per-call kernels for the nn.Modules: report the neighbours a call chose, and honour a key-padding mask.

`CallKernels` is TorchKernels for one module call: the one pipeline (convnn.pipeline) runs on it unchanged.
With `record=True` it keeps the indices the aggregation used (the eager path, since the fused CUDA kernel
keeps none); with `key_valid` ([B, N] bool, True = may be selected) its selection never picks an invalid
token, for any query. The masked selection scores all candidates of a query at once (one [B*H, N, S] block),
which suits the variable-length token batches it serves; queries with too few valid candidates raise
NotEnoughCandidates naming K and the valid count.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from convnn.grid import Grid
from convnn.kernels import PathChoice, PathRequest
from convnn.selection import NotEnoughCandidates

from . import EAGER_PATH
from .kernels import TorchKernels, split_heads
from .selection import affinity_block, exact_topk, gather_rows


class CallKernels(TorchKernels):
    """TorchKernels for one call: records the aggregated indices (`indices`) and/or masks invalid keys."""

    def __init__(self, base: TorchKernels, *, record: bool = False, key_valid: Optional[torch.Tensor] = None,
                 owner: str = "ConvNNAttention") -> None:
        super().__init__(base.torch_device, base.options)
        self.record = bool(record)
        self.key_valid = key_valid
        self.owner = owner
        self.indices: Optional[torch.Tensor] = None

    def choose_path(self, request: PathRequest) -> PathChoice:
        """The eager kernels when indices or a mask are asked for (the fused kernel reports neither)."""
        if self.record or self.key_valid is not None:
            return PathChoice(EAGER_PATH, (("the fused Triton kernel", "indices or a key mask were asked for"),))
        return super().choose_path(request)

    def select(self, keys: torch.Tensor, queries: np.ndarray, cand: Optional[torch.Tensor], *, k: int, metric: str,
               self_first: bool, heads: int, query_feats: Optional[torch.Tensor] = None,
               grid: Optional[Grid] = None) -> torch.Tensor:
        """idx [B, H, Nq, K]: TorchKernels.select, or the masked selection when a key mask is set."""
        if self.key_valid is None:
            return super().select(keys, queries, cand, k=k, metric=metric, self_first=self_first, heads=heads,
                                  query_feats=query_feats, grid=grid)
        if grid is not None:
            raise ValueError("a key mask applies to token sets (ConvNNAttention), which have no coordinate grid")
        q_tok = self._queries(queries, keys)
        qf = self._query_feats(keys.detach(), q_tok, None if query_feats is None else query_feats.detach())
        return masked_select(qf, keys.detach(), q_tok, cand, self.key_valid, k=k, metric=metric,
                             self_first=self_first, heads=heads, owner=self.owner)

    def gather_taps(self, values: torch.Tensor, idx: torch.Tensor, rho: Optional[torch.Tensor],
                    weight: torch.Tensor, *, taps: str) -> torch.Tensor:
        if self.record:
            self.indices = idx.detach()
        return super().gather_taps(values, idx, rho, weight, taps=taps)


def masked_select(query_feats: torch.Tensor, key_feats: torch.Tensor, queries: torch.Tensor,
                  cand: Optional[torch.Tensor], key_valid: torch.Tensor, *, k: int, metric: str, self_first: bool,
                  heads: int, owner: str = "ConvNNAttention") -> torch.Tensor:
    """Top-K indices [B, H, Nq, K] in rank order (ties to the lower token) among the valid candidates only.

    query_feats [B, Nq, F], key_feats [B, N, F], queries [Nq] token ids, cand None / sorted [S] / [B, S],
    key_valid [B, N] bool. A valid query with self_first keeps itself in slot 0; an invalid (padded) query
    is never its own neighbour: its K slots hold its best valid candidates.
    """
    with torch.no_grad():
        b, nq, n = query_feats.shape[0], query_feats.shape[1], key_feats.shape[1]
        work = torch.float32 if query_feats.dtype in (torch.float16, torch.bfloat16) else query_feats.dtype
        qf, kf = split_heads(query_feats.to(work), heads), split_heads(key_feats.to(work), heads)
        valid = key_valid.to(device=kf.device).repeat_interleave(heads, dim=0)  # group g = b*H + h
        q_valid = valid.index_select(1, queries)
        if cand is None:
            ids = torch.arange(n, device=kf.device)[None].expand(b * heads, n)
        else:
            cand = cand.to(device=kf.device)
            ids = (cand[None].expand(b * heads, cand.shape[-1]) if cand.ndim == 1
                   else cand.repeat_interleave(heads, dim=0))
        c_valid = torch.gather(valid, 1, ids)
        block = affinity_block(metric, qf, gather_rows(kf, ids))  # [G, Nq, S]
        block.masked_fill_(~c_valid[:, None, :], -math.inf)
        is_self = ids[:, None, :] == queries[None, :, None]
        own_slot = q_valid if self_first else torch.zeros_like(q_valid)
        if self_first:
            block.masked_fill_(is_self & own_slot[..., None], -math.inf)
        _check_valid_counts(block, own_slot, k, b, heads, owner)
        slots = min(k, block.shape[-1])
        chosen = torch.gather(ids[:, None, :].expand_as(block), -1, exact_topk(block, slots))
        if self_first:
            with_self = torch.cat([queries[None, :, None].expand(b * heads, nq, 1), chosen[..., : k - 1]], dim=-1)
            chosen = torch.where(own_slot[..., None], with_self, chosen)
        return chosen.reshape(b, heads, nq, k)


def _check_valid_counts(block: torch.Tensor, own_slot: torch.Tensor, k: int, batch: int, heads: int,
                        owner: str) -> None:
    """NotEnoughCandidates when a query has fewer valid candidates than the slots it must fill (host check;
    skipped while torch.compile traces, where the values cannot be read)."""
    if torch.compiler.is_compiling():
        return
    available = torch.isfinite(block).sum(dim=-1)  # [G, Nq]
    needed = k - own_slot.to(available.dtype)
    short = available < needed
    if bool(short.any()):
        g, i = (int(v) for v in short.nonzero()[0])
        got, want = int(available[g, i]), int(needed[g, i])
        raise NotEnoughCandidates(
            f"{owner}: k={k} needs {want} valid candidates for query {i} of batch item {g // heads}"
            f"{' besides itself' if want < k else ''}, but key_padding_mask leaves only {got}; lower k or give "
            f"that sequence more unpadded tokens")
