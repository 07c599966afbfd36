"""Exact top-K neighbour selection on torch tensors (SPEC.md section 4, steps 1-2), in blocks of images and query rows.

Ties go to the lower token index: torch.topk does not promise that, so rows whose K-th and (K+1)-th
values are equal are re-selected with a stable sort. Candidates are sorted ascending, so a lower candidate
position is a lower token index.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from convnn.grid import Grid, grid_units

EPS_NORM = 1e-12
# elements of one affinity block: 1 MiB of float32 stays in L2 between the GEMM and the top-K on one
# thread; with several threads each op needs more work per parallel region (small blocks were 3-4x
# slower on a busy 2-core machine, where every region waits at its barrier for a descheduled thread)
BLOCK_ELEMENTS = 1 << 18
BLOCK_ELEMENTS_THREADED = 1 << 22


def block_elements() -> int:
    """The affinity block budget for the current torch thread count."""
    return BLOCK_ELEMENTS if torch.get_num_threads() <= 1 else max(BLOCK_ELEMENTS, BLOCK_ELEMENTS_THREADED)


def norms(f: torch.Tensor) -> torch.Tensor:
    """max(||f||, 1e-12) over the last axis, the cosine denominator of SPEC.md (clamped before the sqrt, so a
    zero vector has a zero, not NaN, gradient)."""
    return torch.sqrt(torch.clamp(torch.sum(f * f, dim=-1), min=EPS_NORM * EPS_NORM))


def affinity_block(metric: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """a[b, i, j] for queries q [B, m, F] against candidates k [B, S, F]; larger is closer."""
    return finish_affinity(metric, *prepare_operands(metric, q, k))


def prepare_operands(metric: str, q: torch.Tensor, k: torch.Tensor) -> tuple:
    """GEMM operands computed once per call: norms and scales folded in (float64 keeps the spec's formula,
    so even rounding-level ties break as in the oracle)."""
    if q.dtype == torch.float64:
        return ("literal", q, k)
    if metric == "cosine":
        return ("cosine", q / norms(q)[..., None], (k / norms(k)[..., None]).transpose(-1, -2))
    if metric == "euclidean":
        return ("euclidean", q, k.transpose(-1, -2), torch.sum(q * q, dim=-1), torch.sum(k * k, dim=-1))
    if metric == "dot":
        return ("dot", q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-1, -2))
    raise ValueError(f"metric={metric!r} is not allowed; choose one of cosine, euclidean, dot")


def finish_affinity(metric: str, kind: str, q: torch.Tensor, k: torch.Tensor, *extra: torch.Tensor,
                    rows: slice = slice(None), batch: slice = slice(None)) -> torch.Tensor:
    """The affinity block of query rows `rows` and images `batch` from prepared operands."""
    qb = q[batch, rows]
    kb = k[batch] if k.shape[0] > 1 else k
    if kind == "literal":
        return _affinity_literal(metric, qb, kb)
    if kind == "cosine":
        return torch.matmul(qb, kb).clamp_(-1.0, 1.0)
    if kind == "euclidean":
        qq, kk = extra
        sq_sum = qq[batch, rows][:, :, None] + (kk[batch] if kk.shape[0] > 1 else kk)[:, None, :]
        return torch.baddbmm(sq_sum.neg_(), qb, kb.expand(qb.shape[0], -1, -1), alpha=2.0).clamp_(max=0.0)
    return torch.matmul(qb, kb)


def _affinity_literal(metric: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    dots = torch.matmul(q, k.transpose(-1, -2))
    if metric == "cosine":
        return torch.clamp(dots / (norms(q)[:, :, None] * norms(k)[:, None, :]), -1.0, 1.0)
    if metric == "euclidean":
        sq = torch.sum(q * q, dim=-1)[:, :, None] + torch.sum(k * k, dim=-1)[:, None, :] - 2.0 * dots
        return -torch.clamp(sq, min=0.0)
    if metric == "dot":
        return dots / math.sqrt(q.shape[-1])
    raise ValueError(f"metric={metric!r} is not allowed; choose one of cosine, euclidean, dot")


def paired_affinity(metric: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """a[..., j] between q [..., F] (broadcast) and gathered rows k [..., K, F]; differentiable."""
    qb = q.unsqueeze(-2)
    dots = torch.sum(qb * k, dim=-1)
    if metric == "cosine":
        return torch.clamp(dots / (norms(qb) * norms(k)), -1.0, 1.0)
    if metric == "euclidean":
        sq = torch.sum(qb * qb, dim=-1) + torch.sum(k * k, dim=-1) - 2.0 * dots
        return -torch.clamp(sq, min=0.0)
    if metric == "dot":
        return dots / math.sqrt(q.shape[-1])
    raise ValueError(f"metric={metric!r} is not allowed; choose one of cosine, euclidean, dot")


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[b, ...] = table[b, index[b, ...]] for table [B, N, *rest] and index [B, *idx] (one flat gather)."""
    b, n = table.shape[0], table.shape[1]
    rest = tuple(table.shape[2:])
    offsets = (torch.arange(b, device=index.device, dtype=index.dtype) * n).view((b,) + (1,) * (index.ndim - 1))
    flat = table.reshape((b * n,) + rest).index_select(0, (index + offsets).reshape(-1))
    return flat.reshape(tuple(index.shape) + rest)


def _stable_topk(key: torch.Tensor, slots: int) -> torch.Tensor:
    """Positions of the `slots` largest keys per row, ties to the lower position (a stable sort)."""
    return torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :slots]


def exact_topk(key: torch.Tensor, slots: int) -> torch.Tensor:
    """Positions [.., slots] of the largest keys per row in rank order, ties to the lower position, exactly.

    torch.topk takes slots + 1 values: a row whose last two are equal has a tied boundary and is redone
    with a stable sort; inside the chosen set equal values are put in position order.
    """
    n = key.shape[-1]
    if torch.onnx.is_in_onnx_export():  # ONNX TopK puts equal values lower index first: the rule, in one operator
        return torch.topk(key, slots, dim=-1, largest=True, sorted=True).indices
    if torch.compiler.is_compiling() or n <= 2 * slots + 1:
        return _stable_topk(key, slots)
    vals, pos = torch.topk(key, slots + 1, dim=-1, largest=True, sorted=True)
    redo = vals[..., slots - 1] == vals[..., slots]
    vals, pos = vals[..., :slots], pos[..., :slots]
    if bool(redo.any()):
        rows = redo.nonzero(as_tuple=True)
        pos = pos.clone()
        pos[rows] = _stable_topk(key[rows], slots)
        vals = torch.gather(key, -1, pos)
    # equal values inside the chosen set: lower position first (sort by position, then stably by value)
    pos, perm = torch.sort(pos, dim=-1)
    vals = torch.gather(vals, -1, perm)
    order = torch.sort(vals, dim=-1, descending=True, stable=True).indices
    return torch.gather(pos, -1, order)


def blocks(batch: int, n_query: int, n_cand: int) -> list[tuple[int, int, int, int]]:
    """(b0, b1, r0, r1) blocks of images and query rows whose affinity block stays near block_elements()."""
    budget = block_elements()
    rows = max(1, budget // max(1, n_cand))
    if rows >= n_query:
        per = max(1, budget // max(1, n_query * n_cand))
        return [(b0, min(batch, b0 + per), 0, n_query) for b0 in range(0, batch, per)]
    return [(b0, b0 + 1, r0, min(n_query, r0 + rows)) for b0 in range(batch) for r0 in range(0, n_query, rows)]


def _mask_self(block: torch.Tensor, qids: torch.Tensor, cand_ids: Optional[torch.Tensor]) -> None:
    """Set the affinity of each query to itself to -inf in place (where the query is a candidate)."""
    nb, m, n_cand = block.shape
    if cand_ids is None:
        block[:, torch.arange(m, device=block.device), qids] = -math.inf
        return
    ids = (cand_ids if cand_ids.ndim == 2 else cand_ids[None].expand(nb, n_cand)).contiguous()
    pos = torch.searchsorted(ids, qids[None].expand(nb, m).contiguous()).clamp_(max=n_cand - 1)
    present = torch.gather(ids, 1, pos) == qids[None]
    current = torch.gather(block, 2, pos[..., None])
    masked = torch.where(present[..., None], torch.full_like(current, -math.inf), current)
    block.scatter_(2, pos[..., None], masked)


def grid_of(grid: Optional[Sequence[int]], grid_scale: float) -> Optional[Grid]:
    """The Grid from its custom-op encoding: padded shape then axis weights as one int list, and the scale."""
    if grid is None:
        return None
    d = len(grid) // 2
    return Grid(tuple(int(n) for n in grid[:d]), tuple(int(m) for m in grid[d:]), float(grid_scale))


def grid_args(grid: Optional[Grid]) -> tuple[Optional[list[int]], float]:
    """(int list, scale): a Grid as custom-op arguments (None, 0.0 without one)."""
    if grid is None:
        return None, 0.0
    return list(grid.shape) + list(grid.mult), float(grid.scale)


def grid_block(grid: Grid, q_tok: torch.Tensor, c_tok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The exact coordinate part scale * units for query tokens q_tok and candidate tokens c_tok (broadcast)."""
    units = grid_units(grid, q_tok, c_tok)
    return units.to(dtype) * torch.tensor(grid.scale, dtype=dtype, device=units.device)


def grid_positions(grid: Grid, tok: torch.Tensor) -> list[torch.Tensor]:
    """The tokens' positions along each axis that counts (mult != 0), row-major on the padded grid."""
    out = []
    stride = 1
    for n, m in zip(reversed(grid.shape), reversed(grid.mult)):
        if m:
            out.append((tok // stride) % n)
        stride *= n
    return out


def grid_from_positions(grid: Grid, qpos: list[torch.Tensor], cpos: list[torch.Tensor],
                        dtype: torch.dtype) -> torch.Tensor:
    """scale * units from grid_positions of queries and candidates (broadcast): the same integers as grid_units."""
    mults = [m for m in reversed(grid.mult) if m]
    units = None
    for m, qp, cp in zip(mults, qpos, cpos):
        off = qp - cp
        term = off.mul_(off).mul_(m)
        units = term if units is None else units.add_(term)
    if units is None:  # a single token: every offset is 0
        return torch.zeros((), dtype=dtype, device=qpos[0].device if qpos else None)
    return units.to(dtype).mul_(torch.tensor(grid.scale, dtype=dtype, device=units.device))


def select_topk(
    query_feats: torch.Tensor,
    key_feats: torch.Tensor,
    queries: Optional[torch.Tensor],
    cand: Optional[torch.Tensor],
    k: int,
    metric: str,
    self_first: bool,
    grid: Optional[Grid] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [B, Nq, K] (int64 token ids) and affinities [B, Nq, K] in rank order, without autograd.

    query_feats [B, Nq, F]; key_feats [B, N, F]; queries [Nq] token ids of the queries (self_first);
    cand None (all tokens) or sorted token ids [S] / [B, S]. With self_first slot 0 is the query.
    grid (metric euclidean): the exact coordinate part of the token offsets joins the squared distance
    (SPEC section 4, step 1); queries are then required.
    """
    with torch.no_grad():
        b, nq = query_feats.shape[0], query_feats.shape[1]
        work = torch.float32 if query_feats.dtype in (torch.float16, torch.bfloat16) else query_feats.dtype
        qf, kf = query_feats.to(work), key_feats.to(work)
        if cand is None:
            cand_feats = kf
        elif cand.ndim == 1:
            cand_feats = kf.index_select(1, cand)
        else:
            cand_feats = gather_rows(kf, cand)
        n_cand = cand_feats.shape[1]
        slots = k - 1 if self_first else k
        first = 1 if self_first else 0
        idx = torch.empty((b, nq, k), dtype=torch.int64, device=query_feats.device)
        aff = torch.empty((b, nq, k), dtype=work, device=query_feats.device)
        operands = prepare_operands(metric, qf, cand_feats)
        work_blocks = blocks(b, nq, n_cand)
        if grid is not None:  # the exact coordinate part (SPEC section 4, step 1) from the tokens' grid positions
            qpos = grid_positions(grid, queries)
            cpos = grid_positions(grid, torch.arange(n_cand, device=qf.device) if cand is None else cand)
            shared = cand is None or cand.ndim == 1
            if shared:  # one coordinate block per row range serves every image: visit the blocks row range first
                work_blocks = sorted(work_blocks, key=lambda blk: (blk[2], blk[0]))
            coord_rows, coord = None, None
        for b0, b1, r0, r1 in work_blocks:
            block = finish_affinity(metric, *operands, rows=slice(r0, r1), batch=slice(b0, b1))
            cids = None if cand is None else (cand if cand.ndim == 1 else cand[b0:b1])
            if grid is not None:
                if not shared:
                    coord = grid_from_positions(grid, [p[None, r0:r1, None] for p in qpos],
                                                [p[b0:b1, None, :] for p in cpos], block.dtype)
                elif coord_rows != (r0, r1):
                    coord_rows = (r0, r1)
                    coord = grid_from_positions(grid, [p[r0:r1, None] for p in qpos], [p[None, :] for p in cpos],
                                                block.dtype)
                block = block.sub_(coord)
            if self_first:
                _mask_self(block, queries[r0:r1], cids)
            if slots == 0:
                continue
            pos = exact_topk(block, slots)
            aff[b0:b1, r0:r1, first:] = torch.gather(block, -1, pos)
            if cids is None:
                idx[b0:b1, r0:r1, first:] = pos
            elif cids.ndim == 1:
                idx[b0:b1, r0:r1, first:] = cids[pos]
            else:
                idx[b0:b1, r0:r1, first:] = torch.gather(cids[:, None, :].expand(b1 - b0, r1 - r0, n_cand), -1, pos)
        if self_first:
            idx[:, :, 0] = queries[None, :]
            aff[:, :, 0] = paired_affinity(metric, qf, kf.index_select(1, queries).unsqueeze(-2))[..., 0]
        return idx, aff
