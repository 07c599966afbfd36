"""AdamW as one numba pass per parameter: NumPy's version makes about ten full-size temporaries per leaf.

Same arithmetic in the same order and precision as the NumPy AdamW (the hyperparameters are rounded
to the parameter's dtype first, as NumPy does with Python scalars), so the two agree bit for bit.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from numba import njit, prange

from convnn.backends.common.numpy_ops import AdamW, _value
from convnn.tree import tree_leaves, tree_with_leaves

from .threads import parallel_region

_MIN_BLOCK = 65536  # elements per parallel block: smaller leaves run as one block


@njit(parallel=True, cache=True)
def adamw_step(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, decay, step_size, bc2_sqrt, eps,
               p_out, m_out, v_out, n_blocks):
    """m' = b1 m + (1-b1) g; v' = b2 v + (1-b2) g^2; p' = p decay - step_size m' / (sqrt(v') / bc2_sqrt + eps)."""
    n = p.shape[0]
    for blk in prange(n_blocks):
        lo = blk * n // n_blocks
        hi = (blk + 1) * n // n_blocks
        ps, gs, ms, vs = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        po, mo, vo = p_out[lo:hi], m_out[lo:hi], v_out[lo:hi]
        for t in range(hi - lo):
            gt = gs[t]
            mt = b1 * ms[t] + one_minus_b1 * gt
            vt = b2 * vs[t] + one_minus_b2 * (gt * gt)
            mo[t] = mt
            vo[t] = vt
            po[t] = ps[t] * decay - step_size * mt / (np.sqrt(vt) / bc2_sqrt + eps)
    return p_out


class NumbaAdamW(AdamW):
    """torch.optim.AdamW semantics (as AdamW) with each float32/float64 leaf updated in one fused kernel."""

    def update(self, grads: Any, state: Mapping[str, Any], params: Any) -> tuple[Any, dict]:
        """One AdamW step; returns (new params, new state). Leaves with mixed dtypes take the NumPy path."""
        b1, b2 = self.betas
        lr, wd, eps = self.lr, self.weight_decay, self.eps
        step, step_size, bc2_sqrt = self.step_coefficients(state)
        leaves = [np.asarray(_value(x)) for x in tree_leaves(params)]
        g_leaves = [np.asarray(_value(x)) for x in tree_leaves(grads)]
        m_leaves, v_leaves = tree_leaves(state["m"]), tree_leaves(state["v"])
        if not (len(leaves) == len(g_leaves) == len(m_leaves) == len(v_leaves)) or any(
                not _fusable(p, g, m, v) for p, g, m, v in zip(leaves, g_leaves, m_leaves, v_leaves)):
            return super().update(grads, state, params)
        new_p, new_m, new_v = [], [], []
        with parallel_region():
            for p, g, m, v in zip(leaves, g_leaves, m_leaves, v_leaves):
                dt = p.dtype.type
                po, mo, vo = np.empty_like(p), np.empty_like(m), np.empty_like(v)
                adamw_step(p.reshape(-1), np.ascontiguousarray(g).reshape(-1), m.reshape(-1), v.reshape(-1),
                           dt(b1), dt(1.0 - b1), dt(b2), dt(1.0 - b2), dt(1.0 - lr * wd), dt(step_size),
                           dt(bc2_sqrt), dt(eps), po.reshape(-1), mo.reshape(-1), vo.reshape(-1),
                           max(1, p.size // _MIN_BLOCK))
                new_p.append(po)
                new_m.append(mo)
                new_v.append(vo)
        return tree_with_leaves(params, new_p), {"step": np.asarray(step, dtype=np.int64),
                                                  "m": tree_with_leaves(state["m"], new_m),
                                                  "v": tree_with_leaves(state["v"], new_v)}


def _fusable(p: np.ndarray, g: np.ndarray, m: Any, v: Any) -> bool:
    """One float32/float64 dtype and one shape across the four arrays, moments contiguous."""
    if p.dtype not in (np.float32, np.float64) or g.dtype != p.dtype:
        return False
    if not all(isinstance(a, np.ndarray) and a.dtype == p.dtype and a.shape == p.shape and a.flags.c_contiguous
               for a in (m, v)):
        return False
    return g.shape == p.shape and p.flags.c_contiguous
