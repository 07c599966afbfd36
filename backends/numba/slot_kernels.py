"""Numba kernels for the affinities of the K selected slots and their gradient (used by softmax weighting).

Only the N*K selected pairs are scored, so the gradient through rho costs O(N K F), not O(N S F).
The backward scatters into the key features per (image, head) in a fixed order: no races and the
same bits on every run, whatever the thread count.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .select_kernels import EPS_NORM


@njit(parallel=True, cache=True)
def slot_affinity(q, kf, idx, metric, out):
    """out[b, h, i, k] = metric(q[b, i, head h], kf[b, idx[b, h, i, k], head h]), SPEC.md section 3."""
    n_batch, heads, n_query, n_slots = idx.shape
    fh = q.shape[2] // heads
    scale = math.sqrt(fh)
    n_keys = kf.shape[1]
    for bh in prange(n_batch * heads):
        b = bh // heads
        h = bh % heads
        c0 = h * fh
        ksq = np.empty(n_keys, dtype=np.float64)  # each key's squared norm once, not once per slot it fills
        for t in range(n_keys):
            kv = kf[b, t, c0:c0 + fh]
            kk = 0.0
            for f in range(fh):
                kk += kv[f] * kv[f]
            ksq[t] = kk
        for i in range(n_query):
            qv = q[b, i, c0:c0 + fh]
            qq = 0.0
            for f in range(fh):
                qq += qv[f] * qv[f]
            qn = max(math.sqrt(qq), EPS_NORM)
            for s in range(n_slots):
                t = idx[b, h, i, s]
                kv = kf[b, t, c0:c0 + fh]
                dot = 0.0
                for f in range(fh):
                    dot += qv[f] * kv[f]
                kk = ksq[t]
                if metric == 0:
                    kn = max(math.sqrt(kk), EPS_NORM)
                    v = dot / (qn * kn)
                    out[b, h, i, s] = min(max(v, -1.0), 1.0)
                elif metric == 1:
                    out[b, h, i, s] = -max((qq + kk) - 2.0 * dot, 0.0)
                else:
                    out[b, h, i, s] = dot / scale
    return out


@njit(parallel=True, cache=True)
def slot_affinity_grad(q, kf, idx, metric, g, dq, dkf):
    """Accumulate the vector-Jacobian products of slot_affinity for upstream g [B, H, Nq, K] into dq, dkf.

    Clamps pass the gradient inside their closed range; euclidean's max(sq, 0) passes half at sq = 0.
    """
    n_batch, heads, n_query, n_slots = idx.shape
    fh = q.shape[2] // heads
    scale = math.sqrt(fh)
    for bh in prange(n_batch * heads):
        b = bh // heads
        h = bh % heads
        c0 = h * fh
        for i in range(n_query):
            qq = 0.0
            for f in range(fh):
                qq += q[b, i, c0 + f] * q[b, i, c0 + f]
            qlen = math.sqrt(qq)
            qn = max(qlen, EPS_NORM)
            for s in range(n_slots):
                gs = g[b, h, i, s]
                if gs == 0.0:
                    continue
                t = idx[b, h, i, s]
                if metric == 2:
                    for f in range(fh):
                        dq[b, i, c0 + f] += gs * kf[b, t, c0 + f] / scale
                        dkf[b, t, c0 + f] += gs * q[b, i, c0 + f] / scale
                    continue
                dot = 0.0
                kk = 0.0
                for f in range(fh):
                    kv = kf[b, t, c0 + f]
                    dot += q[b, i, c0 + f] * kv
                    kk += kv * kv
                if metric == 0:
                    klen = math.sqrt(kk)
                    kn = max(klen, EPS_NORM)
                    raw = dot / (qn * kn)
                    if raw > 1.0 or raw < -1.0:
                        continue
                    inv = 1.0 / (qn * kn)
                    cq = raw / (qn * qn) if qlen > EPS_NORM else 0.0
                    ck = raw / (kn * kn) if klen > EPS_NORM else 0.0
                    for f in range(fh):
                        qv = q[b, i, c0 + f]
                        kv = kf[b, t, c0 + f]
                        dq[b, i, c0 + f] += gs * (kv * inv - cq * qv)
                        dkf[b, t, c0 + f] += gs * (qv * inv - ck * kv)
                else:
                    sq = (qq + kk) - 2.0 * dot
                    if sq < 0.0:
                        continue
                    w = gs if sq > 0.0 else 0.5 * gs
                    for f in range(fh):
                        diff = q[b, i, c0 + f] - kf[b, t, c0 + f]
                        dq[b, i, c0 + f] += -2.0 * w * diff
                        dkf[b, t, c0 + f] += 2.0 * w * diff
    return dq, dkf
