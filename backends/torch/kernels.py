"""TorchKernels: the torch backend's kernels for the one ConvNN pipeline (convnn.pipeline).

The pipeline does every step that is the same on every backend (checks, padding, shuffle, tokens,
coordinates, candidates, selection features, softmax weights, order); this file supplies only what
runs on torch tensors:
  select         exact top-K by the blocked GEMM + top-K custom op convnn::select_topk (Triton on CUDA)
  slot_affinity  the K selected affinities from gathered rows, with autograd (without a gradient to carry,
                 the ones select already computed are reused)
  gather_taps    the chunked gather + taps custom op convnn::gather_taps (its own backward)
  fused          the fused Triton kernel convnn::fused_convnn (CUDA maps, weighting 'none', all tokens)
Heads ride in the group dim of the custom ops: [B, N, F] with H heads becomes [B*H, N, F/H]
(group g = b*H + h), and [B*H, Nq, K] comes back as [B, H, Nq, K].
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Optional

import array_api_compat.torch as torch_xp
import numpy as np
import torch
import torch.nn.functional as F

from convnn.candidates import make_rng
from convnn.grid import Grid
from convnn.kernels import KernelsBase, PathChoice, PathRequest, check_grid

from . import EAGER_PATH, describe_path, ops, paired
from .arrays import TorchRngKey, dropout_mask
from .selection import gather_rows, grid_args, grid_block


@dataclass(frozen=True)
class RunOptions:
    """How the ops run: deterministic backward, the fused CUDA kernel, input checks (finite values)."""

    deterministic: bool = False
    fused: bool = True
    check_inputs: bool = True


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, D] -> [B*h, N, D/h] (group g = b*h + head)."""
    if heads == 1:
        return t
    b, n, d = t.shape
    return t.reshape(b, n, heads, d // heads).transpose(1, 2).reshape(b * heads, n, d // heads)


def merge_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B*h, N, d] -> [B, N, h*d]."""
    if heads == 1:
        return t
    bh, n, dh = t.shape
    return t.reshape(bh // heads, heads, n, dh).transpose(1, 2).reshape(bh // heads, n, heads * dh)


HALF = (torch.float16, torch.bfloat16)


def device_dtypes(device: torch.device) -> tuple[str, ...]:
    """The float dtypes the ConvNN ops take on a device: float64/float32, plus bfloat16/float16 on CUDA."""
    if torch.device(device).type == "cuda":
        return ("float64", "float32", "bfloat16", "float16")
    return ("float64", "float32")


def _known_affinity(idx: torch.Tensor, keys: torch.Tensor, query_feats: Optional[torch.Tensor], metric: Any
                    ) -> Optional[torch.Tensor]:
    """The affinities select computed for exactly these indices (rank order, same features and metric), when no
    gradient is wanted through them; None otherwise (then they are recomputed from the gathered rows)."""
    known = getattr(idx, "_convnn_affinity", None)
    if known is None or torch.compiler.is_compiling():
        return None
    if torch.is_grad_enabled() and (keys.requires_grad or (query_feats is not None and query_feats.requires_grad)):
        return None
    k_metric, k_keys, k_query, aff = known
    same_query = (k_query is None and query_feats is None) or (k_query is not None and k_query() is query_feats)
    if k_metric != metric or k_keys() is not keys or not same_query:
        return None
    return aff.to(keys.dtype)


class TorchKernels(KernelsBase):
    """The pipeline's kernels on torch tensors (CPU and CUDA); see the module docstring."""

    xp = torch_xp
    backend_name = "torch"
    path_name = EAGER_PATH

    def __init__(self, device: Any = "cpu", options: RunOptions = RunOptions()) -> None:
        self.torch_device = torch.device(device)
        self.device = str(self.torch_device)
        self.options = options
        self.dtypes = device_dtypes(self.torch_device)

    def __repr__(self) -> str:
        return f"<TorchKernels device={self.device} {self.options}>"

    # -- the input-check policy: finite values are checked wherever they can be read (not while tracing)
    @property
    def check_inputs(self) -> bool:  # type: ignore[override]
        return self.options.check_inputs and not torch.compiler.is_compiling()

    # -- arrays
    def index_array(self, host: Any) -> torch.Tensor:
        """Candidate indices as int64: a tensor keeps its device (the input's), host arrays go to self.device."""
        if isinstance(host, torch.Tensor):
            return host.to(torch.int64)
        return torch.as_tensor(np.asarray(host, dtype=np.int64), device=self.torch_device)

    def constant(self, host: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(host, dtype=like.dtype, device=like.device)

    def pad(self, x: torch.Tensor, p: int) -> torch.Tensor:
        return x if p == 0 else F.pad(x, (p, p) * (x.ndim - 2))

    def zeros(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)

    # -- randomness: int seeds and numpy Generators draw on the host (as the spec); a TorchRngKey is ours
    def is_native_rng(self, rng: Any) -> bool:
        return isinstance(rng, TorchRngKey)

    def draw_candidates(self, key: TorchRngKey, n_tokens: int, count: int) -> torch.Tensor:
        """The key's draw (arrays.draw_candidates): the spec's draw for a seeded key (so a key and its seed agree),
        torch's global RNG on the device for the modules' training key; traceable with fullgraph=True."""
        from .arrays import draw_candidates

        return draw_candidates(key, n_tokens, count, self.torch_device)

    def split_call_rng(self, rng: Any) -> tuple[Any, Any]:
        """(candidate rng, dropout rng): a key serves both (candidates from its seed, dropout on the device);
        an int or Generator becomes one host Generator, candidates drawn first, then the dropout mask."""
        if isinstance(rng, TorchRngKey):
            return rng, rng
        gen = make_rng(rng)
        return gen, gen

    # -- layer vocabulary attention needs
    def linear(self, x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(x, w, bias)

    def dropout(self, y: torch.Tensor, p: float, rng: Any, *, train: bool) -> torch.Tensor:
        if not train or p == 0.0:
            return y
        return y * dropout_mask(y, float(p), rng)

    # -- the kernels
    def _queries(self, queries: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(queries, device=like.device)

    def _query_feats(self, keys: torch.Tensor, q_tok: torch.Tensor, query_feats: Optional[torch.Tensor]
                     ) -> torch.Tensor:
        return keys.index_select(1, q_tok) if query_feats is None else query_feats

    def select(self, keys: torch.Tensor, queries: np.ndarray, cand: Optional[torch.Tensor], *, k: int, metric: str,
               self_first: bool, heads: int, query_feats: Optional[torch.Tensor] = None,
               grid: Optional[Grid] = None) -> torch.Tensor:
        """idx [B, H, Nq, K] int64 in rank order (no gradient); a grid adds the exact coordinate part (SPEC 4.1)."""
        check_grid(grid, metric, heads)
        b = keys.shape[0]
        q_tok = self._queries(queries, keys)
        keys_in, keys = keys, keys.detach()
        qf = self._query_feats(keys, q_tok, None if query_feats is None else query_feats.detach())
        if cand is not None:
            cand = cand.to(device=keys.device)
            if cand.ndim == 2 and heads > 1:
                cand = cand[:, None, :].expand(b, heads, cand.shape[-1]).reshape(b * heads, cand.shape[-1])
        idx, aff = ops.select_topk(split_heads(qf, heads), split_heads(keys, heads), q_tok, cand, k, metric,
                                   self_first, *grid_args(grid), queries_are_keys=query_feats is None)
        idx = idx.view(b, heads, idx.shape[1], k)
        if not torch.compiler.is_compiling():
            # the affinities the top-K already computed; slot_affinity reuses them when no gradient is wanted
            idx._convnn_affinity = ((metric, grid), weakref.ref(keys_in), None if query_feats is None
                                    else weakref.ref(query_feats), aff.view(idx.shape))
        return idx

    def slot_affinity(self, keys: torch.Tensor, queries: np.ndarray, idx: torch.Tensor, *, metric: str, heads: int,
                      query_feats: Optional[torch.Tensor] = None, grid: Optional[Grid] = None) -> torch.Tensor:
        """[B, H, Nq, K] affinities of each query with its slots, from the gathered rows (differentiable)."""
        check_grid(grid, metric, heads)
        b, _, nq, k = idx.shape
        known = _known_affinity(idx, keys, query_feats, (metric, grid))
        if known is not None:
            return known
        if grid is not None:  # the feature part, then the exact coordinate part of the offsets (SPEC 4.1)
            aff = self.slot_affinity(keys, queries, idx, metric=metric, heads=heads, query_feats=query_feats)
            return aff - grid_block(grid, self._queries(queries, keys)[None, None, :, None], idx, aff.dtype)
        qf = self._query_feats(keys, self._queries(queries, keys), query_feats)
        dtype = keys.dtype
        if dtype in HALF:  # scored in float32 as select does: the 1e-12 norm floor is 0 in float16 (0/0 = NaN)
            keys, qf = keys.float(), qf.float()
        aff = paired.paired_affinity(metric, split_heads(qf, heads), split_heads(keys, heads),
                                     idx.reshape(b * heads, nq, k))  # blockwise: no [G, Nq, K, f] copy
        return aff.view(b, heads, nq, k).to(dtype)

    def gather_taps(self, values: torch.Tensor, idx: torch.Tensor, rho: Optional[torch.Tensor],
                    weight: torch.Tensor, *, taps: str) -> torch.Tensor:
        """y [B, Nq, O] (no bias): taps over the rho-weighted gathered rows, head h on channel group h."""
        b, heads, nq, k = idx.shape
        det = self.options.deterministic
        values = values.contiguous()
        if rho is not None and rho.dtype != values.dtype:  # float32 rho (selection of half inputs) -> values' dtype
            rho = rho.to(values.dtype)
        if heads == 1:
            return ops.gather_taps(values, idx[:, 0], None if rho is None else rho[:, 0], weight, None, taps, det)
        c = values.shape[-1]
        vh = split_heads(values, heads).contiguous()
        ig = idx.reshape(b * heads, nq, k)
        rg = None if rho is None else rho.reshape(b * heads, nq, k)
        if taps == "depthwise":
            w = weight.reshape(heads, c // heads, k)
            return merge_heads(ops.gather_taps(vh, ig, rg, w, None, "depthwise", det), heads)
        g = gather_rows(vh, ig)  # [B*h, Nq, K, C/h]; full taps mix heads, so heads are joined first
        if rg is not None:
            g = g * rg[..., None]
        g = g.reshape(b, heads, nq, k, c // heads).permute(0, 2, 3, 1, 4).reshape(b, nq, k * c)
        return g @ weight.permute(2, 1, 0).reshape(k * c, weight.shape[0])

    # -- the fused Triton kernel (maps on CUDA)
    def choose_path(self, request: PathRequest) -> PathChoice:
        """The fused Triton kernel where the plugin's rules let it take the call (and fused=True), else eager."""
        return describe_path(request, fused=self.options.fused)

    def fused(self, keys: torch.Tensor, queries: np.ndarray, values: torch.Tensor, weight: torch.Tensor, *, k: int,
              metric: str, self_first: bool, taps: str, grid: Optional[Grid] = None) -> torch.Tensor:
        """y [B, Nq, O] by one Triton kernel (weighting 'none', all tokens); the eager kernels where the runtime
        shape checks of the kernel refuse the call. A grid never comes here (fused_blockers turns it away); if
        one does, the eager kernels, which compute its exact coordinate part, run."""
        if grid is not None:
            idx = self.select(keys, queries, None, k=k, metric=metric, self_first=self_first, heads=1, grid=grid)
            return self.gather_taps(values, idx, None, weight, taps=taps)
        q_tok = self._queries(queries, keys)
        if keys.dtype != values.dtype:  # float32 blend features of half inputs: the kernel takes one dtype
            keys = keys.to(values.dtype)
        qf = keys.index_select(1, q_tok).contiguous()
        values = values.contiguous()
        if ops.triton_usable(values):
            from . import triton_kernels

            if triton_kernels.fused_supported(qf, values, weight, k, taps):
                y, _ = ops.fused_convnn(qf.detach(), keys.detach().contiguous(), values, q_tok, weight, None, k,
                                        metric, self_first, taps, self.options.deterministic)
                return y
        idx = self.select(keys, queries, None, k=k, metric=metric, self_first=self_first, heads=1)
        return self.gather_taps(values, idx, None, weight, taps=taps)
