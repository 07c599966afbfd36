"""The jax backend's CPU selection by the numba streaming top-K kernel, through jax.pure_callback.

On the CPU XLA's top_k sorts each row fully, and that sort is most of the jax forward. When numba is
installed, a jitted selection on the CPU calls the numba kernel instead. It is the numba backend's own
kernel, held to the float64 oracle by the conformance suite, and it keeps a K-slot queue per row.
Indices carry no gradient, so the callback needs no derivative rule. CONVNN_JAX_NO_NUMBA=1 keeps the
XLA code.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import numba_select_blockers
from .arrays import index_dtype

# under vmap, call the kernel once per batch element (the keyword exists from jax 0.4.34 on)
VMAP_KW = {"vmap_method": "sequential"} if "vmap_method" in inspect.signature(jax.pure_callback).parameters else {}


def usable(device: str, dtype: Any, grid: Any) -> bool:
    """Whether this call's selection runs on the numba kernel (decided at trace time)."""
    return not numba_select_blockers(device, jnp.dtype(dtype).name, grid is not None)


def _host_select(q: Optional[np.ndarray], keys: np.ndarray, rows: np.ndarray, queries: np.ndarray, *, heads: int,
                 metric: str, k: int, self_first: bool, out_dtype: Any) -> np.ndarray:
    """idx [B, H, Nq, K] from the numba kernel (runs on the host, outside the traced program); q None: the
    queries are the keys' own rows, which the kernel may score by one symmetric product per image."""
    from convnn.backends.numba.primitives import select_indices

    keys = np.ascontiguousarray(keys) if q is None else np.asarray(keys, dtype=np.asarray(q).dtype)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.shape[0] != keys.shape[0]:
        rows = np.broadcast_to(rows, (keys.shape[0], rows.shape[1]))
    qtok = np.asarray(queries, np.int64)
    if q is None:
        idx = select_indices(keys, qtok, keys, rows, qtok, heads, metric, k, self_first)
    else:
        q = np.asarray(q)
        idx = select_indices(q, np.arange(q.shape[1], dtype=np.int64), keys, rows, qtok, heads, metric, k, self_first)
    return idx.astype(out_dtype, copy=False)


def select(q: Optional[jnp.ndarray], keys: jnp.ndarray, queries: np.ndarray, cand: Optional[jnp.ndarray], *,
           heads: int, metric: str, k: int, self_first: bool) -> jnp.ndarray:
    """idx [B, H, Nq, K] in rank order; q [B, Nq, D] query features (None: keys' rows at queries), keys [B, N, D],
    cand None / [S] / [B, S]."""
    b, nq = keys.shape[0], len(queries)
    out = index_dtype()
    if cand is None:
        rows = jnp.arange(keys.shape[1], dtype=out)[None]
    elif cand.ndim == 1:
        rows = cand.astype(out)[None]
    else:
        rows = cand.astype(out)
    spec = jax.ShapeDtypeStruct((b, heads, nq, k), out)

    def host(kh: np.ndarray, rh: np.ndarray, *qh: np.ndarray) -> np.ndarray:
        return _host_select(qh[0] if qh else None, kh, rh, queries, heads=heads, metric=metric, k=k,
                            self_first=self_first, out_dtype=np.dtype(out))

    extra = () if q is None else (jax.lax.stop_gradient(q),)
    return jax.pure_callback(host, spec, jax.lax.stop_gradient(keys), rows, *extra, **VMAP_KW)
