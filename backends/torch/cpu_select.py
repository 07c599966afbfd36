"""The torch backend's CPU selection by the numba streaming top-K kernel, when numba is installed.

On the CPU torch.topk sorts every block and is most of the torch forward; the numba kernel (the one the
numba backend runs, held to the float64 oracle by the conformance suite) keeps a K-slot queue per row
instead. Indices carry no gradient, so no autograd crosses the boundary: the tensors are shared with
NumPy without a copy, the kernel writes int64 indices and their affinities, and torch takes them back.
CONVNN_TORCH_NO_NUMBA=1 keeps the torch code (for A/B timings and for tests of that path).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import numba_select_blockers

DTYPES = (torch.float32, torch.float64)


def usable(query_feats: torch.Tensor, grid: Optional[list[int]]) -> bool:
    """Whether this call's selection runs on the numba kernel."""
    return (query_feats.device.type == "cpu" and query_feats.dtype in DTYPES and grid is None
            and not numba_select_blockers("cpu", str(query_feats.dtype).removeprefix("torch."), False))


def _candidate_rows(cand: Optional[torch.Tensor], batch: int, n_tokens: int) -> np.ndarray:
    """[B, S] int64 candidate token ids (all tokens when None), as the numba kernel takes them."""
    if cand is None:
        return np.broadcast_to(np.arange(n_tokens, dtype=np.int64)[None], (batch, n_tokens))
    ids = cand.detach().to(torch.int64).contiguous().numpy()
    return np.broadcast_to(ids[None], (batch, ids.shape[0])) if ids.ndim == 1 else ids


def select_topk(query_feats: torch.Tensor, key_feats: torch.Tensor, queries: Optional[torch.Tensor],
                cand: Optional[torch.Tensor], k: int, metric: str, self_first: bool,
                queries_are_keys: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx [B, Nq, K] int64, affinities [B, Nq, K]) in rank order: the contract of ops.select_topk.
    queries_are_keys: the query rows are key_feats' own, so the kernel may take its symmetric path."""
    import numba

    from convnn.backends.numba import threads
    from convnn.backends.numba.primitives import select_with_affinity

    threads.configure(max(1, min(torch.get_num_threads(), int(numba.config.NUMBA_NUM_THREADS))))
    q = query_feats.detach().contiguous().numpy()
    kf = key_feats.detach().to(query_feats.dtype).contiguous().numpy()
    b, nq = q.shape[0], q.shape[1]
    qids = (np.arange(nq, dtype=np.int64) if queries is None
            else queries.detach().to(torch.int64).contiguous().numpy())
    rows = _candidate_rows(cand, b, kf.shape[1])
    if queries_are_keys:  # the same rows, read from the keys: what the numba backend passes
        idx, aff = select_with_affinity(kf, qids, kf, rows, qids, 1, metric, k, self_first)
    else:
        idx, aff = select_with_affinity(q, np.arange(nq, dtype=np.int64), kf, rows, qids, 1, metric, k, self_first)
    return torch.from_numpy(idx[:, 0]), torch.from_numpy(np.ascontiguousarray(aff[:, 0]))
