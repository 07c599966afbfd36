"""The jax backend's kernels for the one ConvNN pipeline (convnn.pipeline): select, slot_affinity, gather_taps.

The pipeline's array part runs jitted with its plan static (`stage`), so each op compiles once per
shape and config and inlines under an outer jit, grad or vmap. Every kernel runs in row blocks
under lax.map (neighbors.map_blocks): selection without gradient (lax.top_k with the lower-index
tie rule), the slot affinities recomputed from the features so that they are differentiable, and
gather + taps rematerialised per block in the backward pass, so [B, Nq, K, C] is never live for
all rows. Heads are contiguous channel groups of the features and values.
"""
from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from convnn.candidates import make_rng as host_rng
from convnn.grid import Grid
from convnn.kernels import KernelsBase, check_grid

from . import PATH_NAME, cpu_select, nn
from .arrays import as_key, draw_on_device, index_dtype, is_jax_key, is_tracer, x64_enabled
from .neighbors import (
    EngineOptions,
    block_budget,
    candidate_features,
    gather_rows,
    grid_part,
    map_blocks,
    paired_affinity,
    select_block,
)

# Number of times each staged pipeline function has been traced (one per new shape/config); read by tests.
# Keys: the stage name ('convnn_nd', 'select_neighbors', 'convnn_attention') and, for maps, 'convnn1d'/'convnn2d'.
TRACE_COUNTS: collections.Counter = collections.Counter()
_STAGED: dict[tuple[str, Callable[..., Any]], Callable[..., Any]] = {}

def device_kind() -> str:
    """'cpu' or 'cuda' (jax's default backend; 'gpu' is CUDA here)."""
    return "cpu" if jax.default_backend() == "cpu" else "cuda"


# ----------------------------------------------------------------------------- heads as channel groups
def split_heads(a: jnp.ndarray, heads: int) -> jnp.ndarray:
    """[B, N, F] -> [B*H, N, F/H]: group h holds channels h*F/H .. (h+1)*F/H - 1 (heads=1: unchanged)."""
    if heads == 1:
        return a
    b, n, f = a.shape
    return jnp.transpose(a.reshape(b, n, heads, f // heads), (0, 2, 1, 3)).reshape(b * heads, n, f // heads)


def merge_head_slots(g: jnp.ndarray, heads: int) -> jnp.ndarray:
    """Gathered [b*H, R, K, C/H] -> [b, R, K, C] (head h's neighbours fill channel group h)."""
    if heads == 1:
        return g
    bh, r, k, ch = g.shape
    g = jnp.transpose(g.reshape(bh // heads, heads, r, k, ch), (0, 2, 3, 1, 4))
    return g.reshape(bh // heads, r, k, heads * ch)


def head_candidates(cand: Optional[jnp.ndarray], heads: int) -> Optional[jnp.ndarray]:
    """Candidates per group: shared [S] as they are, per-sample [B, S] repeated for each head -> [B*H, S]."""
    if cand is None or cand.ndim == 1 or heads == 1:
        return cand
    return jnp.repeat(cand, heads, axis=0)


def query_rows(keys: jnp.ndarray, queries: np.ndarray) -> jnp.ndarray:
    """The queries' rows of keys [B, N, F] -> [B, Nq, F] (keys itself when the queries are all tokens in order)."""
    n = keys.shape[1]
    if queries.shape[0] == n and np.array_equal(queries, np.arange(n)):
        return keys
    return jnp.take(keys, jnp.asarray(queries, dtype=index_dtype()), axis=1)


def apply_taps(taps: str, gathered: jnp.ndarray, weight: jnp.ndarray, precision: Any) -> jnp.ndarray:
    """Conv1d(kernel K, stride K) over the slots of gathered [b, R, K, C] -> [b, R, O], or its depthwise form."""
    if taps == "full":  # one 2-D GEMM [b*R, K*C] x [K*C, O] (its transposes are plain GEMMs too)
        b, r, k, c = gathered.shape
        o = weight.shape[0]
        w2 = jnp.transpose(weight, (2, 1, 0)).reshape(k * c, o)
        return jnp.matmul(gathered.reshape(b * r, k * c), w2, precision=precision).reshape(b, r, o)
    return jnp.einsum("brkc,ck->brc", gathered, weight, precision=precision)


def _call_staged(jitted: Callable[..., Any], plan: Any, *arrays: Any) -> Any:
    # a host Generator left for the dropout (after the candidates were drawn from it) becomes a key here
    args = tuple(as_key(a) if isinstance(a, np.random.Generator) else a for a in arrays)
    return jitted(plan, *args)


def staged(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """jax.jit(fn, static_argnums=0), one per (name, fn) for the process, counting its traces in TRACE_COUNTS."""
    jitted = _STAGED.get((name, fn))
    if jitted is None:
        @functools.wraps(fn)
        def counted(plan: Any, *arrays: Any) -> Any:
            TRACE_COUNTS[name] += 1
            spatial = getattr(plan, "spatial", None)
            if spatial is not None:
                TRACE_COUNTS[f"convnn{len(spatial)}d"] += 1
            return fn(plan, *arrays)

        jitted = _STAGED[(name, fn)] = jax.jit(counted, static_argnums=0)
    return functools.partial(_call_staged, jitted)


# ----------------------------------------------------------------------------- the kernels
class JaxKernels(KernelsBase):
    """select / slot_affinity / gather_taps on jax arrays in row blocks, plus the pipeline's hooks.

    Two kernels objects with the same options compare equal, so their plans share compiled code.
    """

    xp = jnp
    backend_name = "jax"
    path_name = PATH_NAME

    def __init__(self, options: EngineOptions = EngineOptions(), *, device: Optional[str] = None,
                 check_inputs: bool = True) -> None:
        self.options = options
        self.device = device or device_kind()
        self.check_inputs = bool(check_inputs)
        self.precision = options.lax_precision

    def _key(self) -> tuple[Any, ...]:
        return (self.options, self.device, self.check_inputs)

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__,) + self._key())

    def __repr__(self) -> str:
        return f"JaxKernels({self.options}, device={self.device!r}, check_inputs={self.check_inputs})"

    @property
    def dtypes(self) -> tuple[str, ...]:  # type: ignore[override]
        """float32 always; float64 while 64-bit jax is on (a process-wide switch). float16/bfloat16 are refused at
        the door with a TypeError naming them (the blocked selection would score them in their own dtype)."""
        return ("float32", "float64") if x64_enabled() else ("float32",)

    @property
    def budget(self) -> int:
        return block_budget(self.options)

    # -- hooks of the pipeline
    def unwrap(self, a: Any) -> Any:
        """What the door's checks read: jax arrays and tracers as they are, host values with jax's canonical
        dtype (float64 -> float32 without x64, as jax converts them)."""
        if a is None or is_tracer(a) or isinstance(a, jax.Array):
            return a
        host = np.asarray(a)
        canonical = jax.dtypes.canonicalize_dtype(host.dtype)
        return host if host.dtype == canonical else host.astype(canonical)

    def all_finite(self, raw: Any) -> Optional[bool]:
        """Read on the host (a concrete array captured inside an outer jit is still concrete); None when traced."""
        if is_tracer(raw):
            return None
        return bool(np.isfinite(np.asarray(raw)).all())

    def index_array(self, host: Any) -> jnp.ndarray:
        if is_tracer(host) or isinstance(host, jax.Array):
            return host.astype(index_dtype())
        return jnp.asarray(np.asarray(host).astype(np.dtype(index_dtype())))

    def constant(self, host: np.ndarray, like: Any) -> jnp.ndarray:
        return jnp.asarray(np.asarray(host).astype(like.dtype))

    def pad(self, x: Any, p: int) -> jnp.ndarray:
        return x if p == 0 else jnp.pad(x, ((0, 0), (0, 0)) + ((p, p),) * (x.ndim - 2))

    def zeros(self, shape: tuple[int, ...], like: Any) -> jnp.ndarray:
        return jnp.zeros(shape, dtype=like.dtype)

    def stage(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        return staged(name, fn)

    def is_native_rng(self, rng: Any) -> bool:
        return is_jax_key(rng)

    def draw_candidates(self, key: Any, n_tokens: int, count: int) -> jnp.ndarray:
        return draw_on_device(key, n_tokens, count)

    def split_call_rng(self, rng: Any) -> tuple[Any, Any]:
        """A jax key splits in two (candidates, dropout); a seed or Generator serves both, candidates first."""
        if is_jax_key(rng) or is_tracer(rng):
            k_cand, k_drop = jax.random.split(as_key(rng))
            return k_cand, k_drop
        gen = host_rng(rng)
        return gen, gen

    def linear(self, x: Any, w: Any, bias: Optional[Any]) -> jnp.ndarray:
        return nn.linear(x, w, bias, precision=self.precision)

    def dropout(self, y: Any, p: float, rng: Any, *, train: bool) -> jnp.ndarray:
        return nn.dropout(y, p, rng, train=train)

    # -- kernels
    def select(self, keys: Any, queries: np.ndarray, cand: Optional[Any], *, k: int, metric: str, self_first: bool,
               heads: int, query_feats: Optional[Any] = None, grid: Optional[Grid] = None) -> jnp.ndarray:
        check_grid(grid, metric, heads)
        b = keys.shape[0]
        keys = lax.stop_gradient(keys)
        if cpu_select.usable(self.device, keys.dtype, grid):
            c = None if cand is None else jnp.asarray(cand)
            qf = None if query_feats is None else lax.stop_gradient(query_feats)
            return cpu_select.select(qf, keys, np.asarray(queries), c, heads=heads, metric=metric, k=k,
                                     self_first=self_first)
        q = query_rows(keys, queries) if query_feats is None else lax.stop_gradient(query_feats)
        kh, qh = split_heads(keys, heads), split_heads(q, heads)
        qtok = jnp.asarray(queries, dtype=index_dtype())
        cand = head_candidates(None if cand is None else cand.astype(qtok.dtype), heads)
        own = cand if cand is not None and cand.ndim == 2 else None  # per group [G, S], blocked with the groups
        shared = None if own is not None else cand  # None (all tokens) or [S]
        consts = {"cand_feats": candidate_features(kh, cand), "cand": own}
        precision = self.precision

        def block(qb: jnp.ndarray, tb: jnp.ndarray, c: dict) -> jnp.ndarray:
            cb = shared if c["cand"] is None else c["cand"]
            return select_block(qb, tb, c["cand_feats"], cb, k=k, metric=metric, self_first=self_first,
                                precision=precision, grid=grid)

        n_cand = consts["cand_feats"].shape[1]
        idx = map_blocks(block, qh, consts, row_consts=qtok, heads=heads, per_row=n_cand, budget=self.budget)
        return lax.stop_gradient(idx.reshape(b, heads, qh.shape[1], k))

    def slot_affinity(self, keys: Any, queries: np.ndarray, idx: Any, *, metric: str, heads: int,
                      query_feats: Optional[Any] = None, grid: Optional[Grid] = None) -> jnp.ndarray:
        check_grid(grid, metric, heads)
        b, _, nq, k = idx.shape
        q = query_rows(keys, queries) if query_feats is None else query_feats
        kh, qh = split_heads(keys, heads), split_heads(q, heads)
        ih = idx.reshape(b * heads, nq, k)
        qtok = None if grid is None else jnp.asarray(queries, dtype=ih.dtype)

        def block(rowed: tuple, tb: Any, table: jnp.ndarray) -> jnp.ndarray:
            qb, ib = rowed
            aff = paired_affinity(metric, qb[:, :, None, :], gather_rows(table, ib))
            if grid is not None:  # the exact coordinate part of the token offsets (SPEC section 4, step 1)
                aff = aff - grid_part(grid, tb[None, :, None], ib, aff.dtype)
            return aff

        aff = map_blocks(block, (qh, ih), kh, row_consts=qtok, heads=heads, per_row=k * max(kh.shape[-1], 1),
                         budget=self.budget, remat=True)
        return aff.reshape(b, heads, nq, k)

    def gather_taps(self, values: Any, idx: Any, rho: Optional[Any], weight: Any, *, taps: str) -> jnp.ndarray:
        b, heads, nq, k = idx.shape
        vh = split_heads(values, heads)
        ih = idx.reshape(b * heads, nq, k)
        rh = None if rho is None else rho.reshape(b * heads, nq, k)
        precision = self.precision

        def block(rowed: tuple, _: Any, table: jnp.ndarray) -> jnp.ndarray:
            ib, rb = rowed
            g = gather_rows(table, ib)  # [g, R, K, C/H]
            if rb is not None:
                g = g * rb[..., None]
            return apply_taps(taps, merge_head_slots(g, heads), weight, precision)

        out = weight.shape[0] if taps == "full" else 0
        per_row = k * vh.shape[-1] + out // heads
        return map_blocks(block, (ih, rh), vh, heads=heads, per_row=per_row, budget=self.budget, remat=True)
