"""Triton kernels for ConvNN on CUDA (and on the CPU under TRITON_INTERPRET=1, for tests).

_select_kernel      per block of query rows: affinities by tl.dot over candidate tiles, a streaming
                    top-K held in registers as int64 composite keys (value bits, then the inverted
                    candidate position, so equal values go to the lower index exactly), and, when
                    AGGREGATE is set, the gather of the K rows and the taps: the fused forward.
_gather_taps_kernel gather + taps for given indices and weights (sampled or softmax-weighted paths).
_scatter_rows_kernel the gather's transpose for the backward, without atomics: each token row sums
                    its contributions in a fixed order from inverse neighbour lists (deterministic).
"""
from __future__ import annotations

from typing import Optional

import torch

try:  # triton ships with CUDA builds of torch; CPU-only installs may lack it
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the install
    AVAILABLE = False

from convnn.kernels import METRIC_CODES

from . import aggregation

MAX_FEATURES = 1024
MAX_K = 64
MAX_FUSED_OUT = 256
_METRICS = METRIC_CODES  # the codes every compiled kernel switches on


def _pow2(n: int, lo: int = 16) -> int:
    p = lo
    while p < n:
        p *= 2
    return p


def select_supported(query_feats: torch.Tensor, k: int) -> bool:
    """Shapes and dtypes the selection kernel handles (float64 stays on the eager path, in float64)."""
    return query_feats.dtype != torch.float64 and query_feats.shape[-1] <= MAX_FEATURES and k <= MAX_K


def taps_supported(values: torch.Tensor, weight: torch.Tensor, taps: str) -> bool:
    """Shapes and dtypes the gather-taps kernels handle."""
    return values.dtype != torch.float64 and values.shape[-1] <= MAX_FEATURES and weight.shape[-1] <= MAX_K


def fused_supported(query_feats: torch.Tensor, values: torch.Tensor, weight: torch.Tensor, k: int,
                    taps: str) -> bool:
    """Shapes the fused kernel handles (one output tile per program)."""
    out = weight.shape[0] if taps == "full" else values.shape[-1]
    return select_supported(query_feats, k) and out <= MAX_FUSED_OUT and values.shape[-1] <= MAX_FEATURES


if AVAILABLE:

    @triton.jit
    def _composite_key(v, pos):
        """int64 key: order-preserving int of the float32 value, then 2^31-1-pos (lower position wins ties)."""
        v = v + 0.0  # -0.0 -> +0.0, equal values must have equal keys
        bits = v.to(tl.int32, bitcast=True)
        ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        return ordered.to(tl.int64) * 4294967296 + (2147483647 - pos).to(tl.int64)

    @triton.jit
    def _key_value(key):
        """The float32 value stored in a composite key."""
        ordered = (key >> 32).to(tl.int32)
        bits = tl.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _key_pos(key):
        return 2147483647 - (key & 0xFFFFFFFF)

    @triton.jit
    def _select_kernel(
        q_ptr, kf_ptr, cand_ptr, qid_ptr, idx_ptr, aff_ptr,
        v_ptr, w_ptr, bias_ptr, y_ptr,
        NQ, S, F, NV, C, O, scale,
        CAND_BATCHED: tl.constexpr, HAS_CAND: tl.constexpr, SELF_FIRST: tl.constexpr, METRIC: tl.constexpr,
        SLOTS: tl.constexpr, KOUT: tl.constexpr, KP: tl.constexpr, AGGREGATE: tl.constexpr, FULL: tl.constexpr,
        HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BC: tl.constexpr, BO: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        b = tl.program_id(1)
        offs_m = pid_m * BM + tl.arange(0, BM)
        m_ok = offs_m < NQ
        qids = tl.load(qid_ptr + offs_m, mask=m_ok, other=-1)
        MIN: tl.constexpr = -9223372036854775807 - 1
        slot = tl.arange(0, KP)
        # sentinel keys are distinct and below every real key; slots past SLOTS are never chosen
        cur = tl.where(slot[None, :] < SLOTS, MIN + 1 + slot[None, :].to(tl.int64), 9223372036854775807)
        cur = tl.broadcast_to(cur, (BM, KP))
        q_base = q_ptr + b.to(tl.int64) * NQ * F
        k_base = kf_ptr + b.to(tl.int64) * S * F
        for n0 in range(0, S, BN):
            offs_n = n0 + tl.arange(0, BN)
            n_ok = offs_n < S
            dots = tl.zeros((BM, BN), dtype=tl.float32)
            qq = tl.zeros((BM,), dtype=tl.float32)
            kk = tl.zeros((BN,), dtype=tl.float32)
            for f0 in range(0, F, BF):
                offs_f = f0 + tl.arange(0, BF)
                f_ok = offs_f < F
                qt = tl.load(q_base + offs_m[:, None] * F + offs_f[None, :], mask=m_ok[:, None] & f_ok[None, :],
                             other=0.0)
                kt = tl.load(k_base + offs_n[:, None] * F + offs_f[None, :], mask=n_ok[:, None] & f_ok[None, :],
                             other=0.0)
                if IEEE:
                    dots += tl.dot(qt, tl.trans(kt), input_precision="ieee")
                else:
                    dots += tl.dot(qt, tl.trans(kt))
                qf = qt.to(tl.float32)
                kf = kt.to(tl.float32)
                qq += tl.sum(qf * qf, axis=1)
                kk += tl.sum(kf * kf, axis=1)
            if METRIC == 0:
                den = tl.maximum(tl.sqrt(qq), 1e-12)[:, None] * tl.maximum(tl.sqrt(kk), 1e-12)[None, :]
                a = tl.minimum(tl.maximum(dots / den, -1.0), 1.0)
            elif METRIC == 1:
                a = -tl.maximum(qq[:, None] + kk[None, :] - 2.0 * dots, 0.0)
            else:
                a = dots * scale
            keys = _composite_key(a, tl.broadcast_to(offs_n[None, :], (BM, BN)))
            valid = n_ok[None, :] & m_ok[:, None]
            if SELF_FIRST:
                if HAS_CAND:
                    if CAND_BATCHED:
                        cid = tl.load(cand_ptr + b.to(tl.int64) * S + offs_n, mask=n_ok, other=-2)
                    else:
                        cid = tl.load(cand_ptr + offs_n, mask=n_ok, other=-2)
                else:
                    cid = offs_n.to(tl.int64)
                valid = valid & (cid[None, :] != qids[:, None])
            keys = tl.where(valid, keys, MIN)
            for _r in tl.static_range(SLOTS):
                best = tl.max(keys, axis=1)
                worst = tl.min(cur, axis=1)
                take = best > worst
                cur = tl.where((cur == worst[:, None]) & take[:, None], best[:, None], cur)
                keys = tl.where(keys == best[:, None], MIN, keys)
        # rank order: extract the largest remaining key SLOTS times
        cur = tl.where(slot[None, :] < SLOTS, cur, MIN)
        out_base = b.to(tl.int64) * NQ * KOUT + offs_m.to(tl.int64) * KOUT
        if AGGREGATE:
            offs_o = tl.arange(0, BO)
            o_ok = offs_o < O
            acc = tl.zeros((BM, BO), dtype=tl.float32)
            v_base = v_ptr + b.to(tl.int64) * NV * C
        for r in tl.static_range(KOUT):  # KOUT = SLOTS + the self slot
            if SELF_FIRST and r == 0:
                tok = qids
                tl.store(idx_ptr + out_base + r, tok, mask=m_ok)
            else:
                best = tl.max(cur, axis=1)
                cur = tl.where(cur == best[:, None], MIN, cur)
                pos = _key_pos(best)
                if HAS_CAND:
                    if CAND_BATCHED:
                        tok = tl.load(cand_ptr + b.to(tl.int64) * S + pos, mask=m_ok, other=0)
                    else:
                        tok = tl.load(cand_ptr + pos, mask=m_ok, other=0)
                else:
                    tok = pos
                tl.store(idx_ptr + out_base + r, tok, mask=m_ok)
                tl.store(aff_ptr + out_base + r, _key_value(best), mask=m_ok)
            if AGGREGATE:
                tok = tl.where(m_ok, tok, 0)
                for c0 in range(0, C, BC):
                    offs_c = c0 + tl.arange(0, BC)
                    c_ok = offs_c < C
                    rows = tl.load(v_base + tok.to(tl.int64)[:, None] * C + offs_c[None, :],
                                   mask=m_ok[:, None] & c_ok[None, :], other=0.0)
                    if FULL:
                        # w laid out [K, C, O]
                        wt = tl.load(w_ptr + r * C * O + offs_c[:, None] * O + offs_o[None, :],
                                     mask=c_ok[:, None] & o_ok[None, :], other=0.0)
                        if IEEE:
                            acc += tl.dot(rows, wt, input_precision="ieee")
                        else:
                            acc += tl.dot(rows, wt)
                    else:
                        # depthwise w laid out [K, C]; C == O and BC == BO (one channel tile)
                        wt = tl.load(w_ptr + r * C + offs_c, mask=c_ok, other=0.0)
                        acc += rows.to(tl.float32) * wt.to(tl.float32)[None, :]
        if AGGREGATE:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + offs_o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
            y_base = y_ptr + b.to(tl.int64) * NQ * O
            tl.store(y_base + offs_m[:, None] * O + offs_o[None, :], acc.to(y_ptr.dtype.element_ty),
                     mask=m_ok[:, None] & o_ok[None, :])

    @triton.jit
    def _gather_taps_kernel(
        v_ptr, idx_ptr, rho_ptr, w_ptr, bias_ptr, y_ptr,
        NQ, NV, C, O, HEADS,
        K: tl.constexpr, HAS_RHO: tl.constexpr, FULL: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
        BM: tl.constexpr, BC: tl.constexpr, BO: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        g = tl.program_id(1)
        pid_o = tl.program_id(2)
        offs_m = pid_m * BM + tl.arange(0, BM)
        m_ok = offs_m < NQ
        offs_o = pid_o * BO + tl.arange(0, BO)
        o_ok = offs_o < O
        acc = tl.zeros((BM, BO), dtype=tl.float32)
        v_base = v_ptr + g.to(tl.int64) * NV * C
        row_base = g.to(tl.int64) * NQ * K + offs_m.to(tl.int64) * K
        for k in tl.static_range(K):
            tok = tl.load(idx_ptr + row_base + k, mask=m_ok, other=0)
            if HAS_RHO:
                r = tl.load(rho_ptr + row_base + k, mask=m_ok, other=0.0).to(tl.float32)
            if FULL:
                for c0 in range(0, C, BC):
                    offs_c = c0 + tl.arange(0, BC)
                    c_ok = offs_c < C
                    rows = tl.load(v_base + tok[:, None] * C + offs_c[None, :], mask=m_ok[:, None] & c_ok[None, :],
                                   other=0.0).to(tl.float32)
                    if HAS_RHO:
                        rows = rows * r[:, None]
                    wt = tl.load(w_ptr + k * C * O + offs_c[:, None] * O + offs_o[None, :],
                                 mask=c_ok[:, None] & o_ok[None, :], other=0.0).to(tl.float32)
                    if IEEE:
                        acc += tl.dot(rows, wt, input_precision="ieee")
                    else:
                        acc += tl.dot(rows, wt)
            else:
                rows = tl.load(v_base + tok[:, None] * C + offs_o[None, :], mask=m_ok[:, None] & o_ok[None, :],
                               other=0.0).to(tl.float32)
                if HAS_RHO:
                    rows = rows * r[:, None]
                head = g % HEADS
                wt = tl.load(w_ptr + head * K * C + k * C + offs_o, mask=o_ok, other=0.0).to(tl.float32)
                acc += rows * wt[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
        y_base = y_ptr + g.to(tl.int64) * NQ * O
        tl.store(y_base + offs_m[:, None] * O + offs_o[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & o_ok[None, :])

    @triton.jit
    def _scatter_rows_kernel(
        gy_ptr, rho_ptr, wt_ptr, order_ptr, start_ptr, out_ptr,
        NQ, C, O, HEADS,
        K: tl.constexpr, HAS_RHO: tl.constexpr, FULL: tl.constexpr, IEEE: tl.constexpr,
        BE: tl.constexpr, BC: tl.constexpr, BO: tl.constexpr,
    ):
        # one program per (token row of the value table, channel tile); entries in a fixed order
        t = tl.program_id(0)
        pid_c = tl.program_id(1)
        offs_c = pid_c * BC + tl.arange(0, BC)
        c_ok = offs_c < C
        lo = tl.load(start_ptr + t)
        hi = tl.load(start_ptr + t + 1)
        acc = tl.zeros((BC,), dtype=tl.float32)
        for e0 in range(lo, hi, BE):
            offs_e = e0 + tl.arange(0, BE)
            e_ok = offs_e < hi
            ent = tl.load(order_ptr + offs_e, mask=e_ok, other=0)  # flat (g, i, k) entry
            k = ent % K
            gi = ent // K  # g * NQ + i
            if HAS_RHO:
                r = tl.load(rho_ptr + ent, mask=e_ok, other=0.0).to(tl.float32)
            else:
                r = tl.where(e_ok, 1.0, 0.0)
            if FULL:
                part = tl.zeros((BE, BC), dtype=tl.float32)
                for o0 in range(0, O, BO):
                    offs_o = o0 + tl.arange(0, BO)
                    o_ok = offs_o < O
                    gy = tl.load(gy_ptr + gi[:, None] * O + offs_o[None, :], mask=e_ok[:, None] & o_ok[None, :],
                                 other=0.0).to(tl.float32)
                    # w laid out [K, C, O]: the entry's tap k, rows c, columns o
                    wk = tl.load(wt_ptr + k[:, None, None] * C * O + offs_c[None, :, None] * O
                                 + offs_o[None, None, :],
                                 mask=e_ok[:, None, None] & c_ok[None, :, None] & o_ok[None, None, :],
                                 other=0.0).to(tl.float32)
                    part += tl.sum(gy[:, None, :] * wk, axis=2)
            else:
                g = gi // NQ
                head = g % HEADS
                gy = tl.load(gy_ptr + gi[:, None] * C + offs_c[None, :], mask=e_ok[:, None] & c_ok[None, :],
                             other=0.0).to(tl.float32)
                wk = tl.load(wt_ptr + head[:, None] * K * C + k[:, None] * C + offs_c[None, :],
                             mask=e_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
                part = gy * wk
            acc += tl.sum(part * r[:, None], axis=0)
        tl.store(out_ptr + t.to(tl.int64) * C + offs_c, acc.to(out_ptr.dtype.element_ty), mask=c_ok)


# ----------------------------------------------------------------------------- launchers
def _ieee(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float32, torch.float64)


def _as_kernel_dtype(t: torch.Tensor) -> torch.Tensor:
    """float64 runs as float32 in the kernels (tl.dot has no float64 path on every device)."""
    return t.to(torch.float32) if t.dtype == torch.float64 else t


def _run_select(query_feats, key_feats, queries, cand, k, metric, self_first, values=None, weight=None, bias=None,
                taps="full"):
    b, nq, f = query_feats.shape
    device = query_feats.device
    q = _as_kernel_dtype(query_feats).contiguous()
    kf_all = _as_kernel_dtype(key_feats).contiguous()
    if cand is None:
        kf = kf_all
        cand_t = torch.zeros(1, dtype=torch.int64, device=device)
    elif cand.ndim == 1:
        kf = kf_all.index_select(1, cand).contiguous()
        cand_t = cand.contiguous()
    else:
        from .selection import gather_rows

        kf = gather_rows(kf_all, cand).contiguous()
        cand_t = cand.contiguous()
    s = kf.shape[1]
    slots = k - 1 if self_first else k
    qids = (queries if queries is not None else torch.arange(nq, device=device)).to(torch.int64).contiguous()
    idx = torch.empty((b, nq, k), dtype=torch.int64, device=device)
    aff = torch.empty((b, nq, k), dtype=torch.float32, device=device)
    aggregate = values is not None
    bm, bn = 32, 32
    bf = min(64, _pow2(f))
    if aggregate:
        v = values.contiguous()
        c = v.shape[-1]
        o = weight.shape[0] if taps == "full" else c
        w = (weight.permute(2, 1, 0) if taps == "full" else weight.t()).contiguous().to(v.dtype)
        y = torch.empty((b, nq, o), dtype=values.dtype, device=device)
        bo = _pow2(o)
        bc = min(64, _pow2(c)) if taps == "full" else bo
        bias_t = bias.contiguous() if bias is not None else w
        nv = v.shape[1]
    else:
        v = w = bias_t = y = q
        c = o = nv = 1
        bc = bo = 16
    grid = (triton.cdiv(nq, bm), b)
    _select_kernel[grid](
        q, kf, cand_t, qids, idx, aff, v, w, bias_t, y,
        nq, s, f, nv, c, o, 1.0 / (f ** 0.5),
        CAND_BATCHED=cand is not None and cand.ndim == 2, HAS_CAND=cand is not None, SELF_FIRST=self_first,
        METRIC=_METRICS[metric], SLOTS=slots, KOUT=k, KP=max(2, _pow2(max(slots, 1), 2)), AGGREGATE=aggregate,
        FULL=taps == "full", HAS_BIAS=bias is not None, IEEE=_ieee(q),
        BM=bm, BN=bn, BF=bf, BC=bc, BO=bo,
    )
    if self_first:
        from .selection import paired_affinity

        self_rows = key_feats.index_select(1, qids)
        aff[:, :, 0] = paired_affinity(metric, query_feats, self_rows.unsqueeze(-2))[..., 0].to(torch.float32)
    if query_feats.dtype == torch.float64:
        aff = aff.to(torch.float64)
    return (y if aggregate else None), idx, aff


def select_topk(query_feats: torch.Tensor, key_feats: torch.Tensor, queries: Optional[torch.Tensor],
                cand: Optional[torch.Tensor], k: int, metric: str, self_first: bool):
    """(idx [B, Nq, K], affinities [B, Nq, K]) by the streaming top-K kernel."""
    _, idx, aff = _run_select(query_feats, key_feats, queries, cand, k, metric, self_first)
    return idx, aff


def fused_forward(query_feats, key_feats, values, queries, weight, bias, k, metric, self_first, taps):
    """(y [B, Nq, O], idx [B, Nq, K]): selection, gather and taps in one kernel."""
    if values.dtype == torch.float64:
        y, idx, _ = _run_select(query_feats, key_feats, queries, None, k, metric, self_first,
                                values.to(torch.float32), weight.to(torch.float32),
                                None if bias is None else bias.to(torch.float32), taps)
        return y.to(torch.float64), idx
    y, idx, _ = _run_select(query_feats, key_feats, queries, None, k, metric, self_first, values, weight, bias, taps)
    return y, idx


def _taps_table(weight: torch.Tensor, taps: str) -> tuple[torch.Tensor, int]:
    """Taps as [K, C, O] (full) or [heads, K, C] (depthwise) and the head count."""
    if taps == "full":
        return weight.permute(2, 1, 0).contiguous(), 1
    if weight.ndim == 2:
        return weight.t().contiguous()[None], 1
    return weight.transpose(1, 2).contiguous(), weight.shape[0]


def gather_taps_forward(values, idx, rho, weight, bias, taps):
    """y [G, Nq, O] by the gather-taps kernel."""
    orig = values.dtype
    v = _as_kernel_dtype(values).contiguous()
    g, nv, c = v.shape
    nq, k = idx.shape[1], idx.shape[2]
    w, heads = _taps_table(_as_kernel_dtype(weight), taps)
    o = weight.shape[0] if taps == "full" else c
    y = torch.empty((g, nq, o), dtype=v.dtype, device=v.device)
    bm = 32
    bo = min(64, _pow2(o))
    bc = min(64, _pow2(c))
    rho_t = _as_kernel_dtype(rho).contiguous() if rho is not None else v
    bias_t = _as_kernel_dtype(bias).contiguous() if bias is not None else v
    grid = (triton.cdiv(nq, bm), g, triton.cdiv(o, bo))
    _gather_taps_kernel[grid](
        v, idx.contiguous(), rho_t, w, bias_t, y, nq, nv, c, o, heads,
        K=k, HAS_RHO=rho is not None, FULL=taps == "full", HAS_BIAS=bias is not None, IEEE=_ieee(v),
        BM=bm, BC=bc, BO=bo,
    )
    return y.to(orig)


def inverse_lists(idx: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(entries sorted by target row, stably; row starts [G*N + 1]) for the gather's transpose."""
    g = idx.shape[0]
    offsets = (torch.arange(g, device=idx.device, dtype=torch.int64) * n_tokens).view(g, 1, 1)
    targets = (idx + offsets).reshape(-1)
    order = torch.sort(targets, stable=True).indices
    counts = torch.bincount(targets, minlength=g * n_tokens)
    starts = torch.zeros(g * n_tokens + 1, dtype=torch.int64, device=idx.device)
    starts[1:] = torch.cumsum(counts, 0)
    return order, starts


def scatter_rows(grad_y, idx, rho, weight, taps, n_tokens, channels):
    """grad of the values table [G, N, C]: sum over the entries pointing at each row, in a fixed order."""
    g, nq, k = idx.shape
    gy = _as_kernel_dtype(grad_y).contiguous()
    order, starts = inverse_lists(idx, n_tokens)
    w, heads = _taps_table(_as_kernel_dtype(weight), taps)
    o = weight.shape[0] if taps == "full" else channels
    out = torch.empty((g * n_tokens, channels), dtype=gy.dtype, device=gy.device)
    bc = min(32, _pow2(channels))
    bo = min(32, _pow2(o))
    rho_t = _as_kernel_dtype(rho).contiguous() if rho is not None else gy
    grid = (g * n_tokens, triton.cdiv(channels, bc))
    _scatter_rows_kernel[grid](
        gy, rho_t, w, order, starts, out, nq, channels, o, heads,
        K=k, HAS_RHO=rho is not None, FULL=taps == "full", IEEE=_ieee(gy), BE=16, BC=bc, BO=bo,
    )
    return out.view(g, n_tokens, channels).to(grad_y.dtype)


def gather_taps_backward(grad_y, values, idx, rho, weight, taps, deterministic, need_values, need_rho, need_weight):
    """(grad values, grad rho, grad weight): the values' gradient by the atomic-free scatter kernel, the rest by
    the blocked torch code (GEMMs over regathered blocks)."""
    _, gr, gw = aggregation.gather_taps_backward(grad_y, values, idx, rho, weight, taps, need_values=False,
                                                 need_rho=need_rho, need_weight=need_weight)
    gv = None
    if need_values:
        gv = scatter_rows(grad_y, idx, rho, weight, taps, values.shape[1], values.shape[2]).to(values.dtype)
    return gv, gr, gw
