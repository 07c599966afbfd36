"""The narrow waist: what a backend supplies to the one ConvNN pipeline (convnn.pipeline), and what it declares.

The pipeline validates every argument once, lays out tokens, coordinates and candidates, and calls
only these kernels, in the backend's own arrays. Layouts (G heads share one call; heads=1 for maps):
  keys        [B, N, F]   selection features of every (padded) token
  query_feats [B, Nq, F]  the queries' features, or None: the queries are rows `queries` of keys
  queries     [Nq]        int64 NumPy array (host, static): the query token indices
  cand        None (all tokens) or int [S] / [B, S], sorted ascending, in the backend's arrays
  idx         [B, H, Nq, K] int64 token indices; head h uses feature/channel group h of F and C
  rho         [B, H, Nq, K] or None
  values      [B, N, C]; weight [O, C, K] (full) or [C, K] (depthwise); result [B, Nq, O] (no bias)
  grid        None, or a convnn.grid.Grid (maps with select position/blend and metric euclidean, heads=1):
              keys then hold only the feature part (no columns at all for select=position) and select and
              slot_affinity subtract the exact coordinate part grid.scale * units(query token, candidate
              token) from the euclidean affinity (SPEC section 4, step 1; convnn.grid)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, runtime_checkable

import numpy as np

from .config import METRICS

METRIC_CODES = {name: code for code, name in enumerate(METRICS)}  # integer codes compiled kernels switch on


@runtime_checkable
class ConvNNKernels(Protocol):
    """The kernels of one backend. `xp` is an Array API namespace for the pipeline's layout steps."""

    xp: Any
    path_name: str  # the default path, for explain (e.g. "numba kernels: blocked BLAS + streaming top-K")

    def select(self, keys: Any, queries: np.ndarray, cand: Optional[Any], *, k: int, metric: str,
               self_first: bool, heads: int, query_feats: Optional[Any] = None, grid: Optional[Any] = None) -> Any:
        """Neighbour token indices [B, H, Nq, K] in rank order (slot 0 = the query when self_first).

        Larger affinity first, ties to the lower token index; no gradient (indices are piecewise constant).
        The pipeline passes grid= only when it is not None."""

    def slot_affinity(self, keys: Any, queries: np.ndarray, idx: Any, *, metric: str, heads: int,
                      query_feats: Optional[Any] = None, grid: Optional[Any] = None) -> Any:
        """The affinities [B, H, Nq, K] of each query with its selected slots, differentiable in the features."""

    def gather_taps(self, values: Any, idx: Any, rho: Optional[Any], weight: Any, *, taps: str) -> Any:
        """y [B, Nq, O] = taps applied to the rho-weighted gathered neighbours (SPEC section 4, step 5), no bias."""


@dataclass(frozen=True)
class PathRequest:
    """What decides the path of one call: the op, its config and where and in which dtype it runs."""

    op: str
    cfg: Any
    dtype: str
    device: str
    explicit_candidates: bool = False


@dataclass(frozen=True)
class PathChoice:
    """The path a backend takes for a request, and why each other path of that backend was passed over."""

    path: str
    passed_over: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """What a loaded backend can do; bench, conformance, the trainer and the CLI read this, never the name.

    dtypes: the float dtypes its ConvNN ops accept on its device; devices: where it can run;
    differentiable: the ops whose gradients it computes; trainable: value_and_grad/adamw work for the
    zoo (ConvNN models included only when 'convnn2d' is differentiable); compiles: whether
    `compile` does something (and training compiles by default); int64_labels: whether int64 arrays
    exist (jax without x64 keeps int32); memory: which peak-memory meter sees its allocations
    ('host' = the process RSS meter, 'cuda' = torch.cuda statistics, None = none can);
    mixed_precision: how it trains in bfloat16 with float32 master weights ('autocast': the backend's
    `autocast(dtype)` context casts inside ops; 'cast': the trainer casts each op's inputs; None: it cannot);
    data_parallel: how one run spans several devices ('processes': one process per device under torchrun;
    'devices': one process shards each batch over local devices; None: one device only).
    """

    dtypes: tuple[str, ...]
    devices: tuple[str, ...]
    device: str = "cpu"
    differentiable: tuple[str, ...] = ()
    trainable: bool = True
    compiles: bool = False
    compile_by_default: bool = False
    int64_labels: bool = True
    memory: Optional[str] = "host"
    mixed_precision: Optional[str] = None
    data_parallel: Optional[str] = None

    def supports_dtype(self, dtype: str) -> bool:
        """Whether the ConvNN ops accept this dtype name."""
        return str(dtype) in self.dtypes

    def can_train(self, uses_convnn: bool) -> tuple[bool, str]:
        """(True, '') or (False, why): whether a model (with ConvNN layers or not) trains here."""
        if not self.trainable:
            return False, "has no value_and_grad"
        if uses_convnn and "convnn2d" not in self.differentiable:
            return False, "runs the ConvNN ops forward only"
        return True, ""


def check_kernels(kernels: Any) -> list[str]:
    """The kernel names a kernels object lacks (empty when it satisfies the contract)."""
    needed = ("select", "slot_affinity", "gather_taps")
    missing = [n for n in needed if not callable(getattr(kernels, n, None))]
    if getattr(kernels, "xp", None) is None:
        missing.append("xp")
    return missing


def check_grid(grid: Any, metric: str, heads: int) -> None:
    """A grid goes with metric euclidean and one head (the pipeline's map ops); refuse anything else by name."""
    if grid is None:
        return
    if metric != "euclidean" or heads != 1:
        raise ValueError(f"a grid (exact coordinate distances) needs metric='euclidean' and heads=1; got "
                         f"metric={metric!r}, heads={heads}")


def noop_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The default `compile_op` hook: run the pipeline's array part as plain Python."""
    return fn


class KernelsBase:
    """Defaults for the pipeline's hooks; a backend's kernels subclass this and override what differs.

    Hooks: unwrap (a host-readable view for the door's checks: autograd boxes unwrap, tracers stay),
    index_array / constant / zeros (arrays on the input's device), stage (how compute runs: plain,
    or jitted with the plan static), is_native_rng / draw_candidates / split_call_rng (the backend's
    own RNG keys), choose_path + fused (an optional fused kernel), linear and dropout (the layer
    vocabulary attention needs).
    """

    xp: Any = None
    backend_name: str = "?"
    device: str = "cpu"
    dtypes: Optional[tuple[str, ...]] = None
    check_inputs: bool = True
    path_name: str = "kernels"

    def unwrap(self, a: Any) -> Any:
        """The value the door checks read (shape, dtype, finiteness)."""
        return a

    def all_finite(self, raw: Any) -> Optional[bool]:
        """Whether every value of a door-side array is finite; None where the values cannot be read (traced)."""
        from ._xp import is_traced, namespace

        if is_traced(raw):
            return None
        xp = namespace(raw)
        return bool(xp.all(xp.isfinite(raw)))

    def unwrap_tree(self, tree: Any) -> Any:
        """A container (e.g. the attention params dict) as plain Python, for the door's checks."""
        return tree

    def index_array(self, host: Any) -> Any:
        """Candidate indices (host int64 or already the backend's array) as the backend's int array."""
        return self.xp.asarray(host)

    def constant(self, host: np.ndarray, like: Any) -> Any:
        """A host constant as an array with like's dtype, on like's device."""
        from ._xp import device

        return self.xp.asarray(np.asarray(host), dtype=like.dtype, device=device(like))

    def zeros(self, shape: tuple[int, ...], like: Any) -> Any:
        """Zeros with like's dtype and device."""
        from ._xp import device

        return self.xp.zeros(shape, dtype=like.dtype, device=device(like))

    def pad(self, x: Any, p: int) -> Any:
        """Zero-pad every spatial axis of [B, C, *S] by p (backends override with their one-copy pad)."""
        from . import layout

        return layout.pad(self.xp, x, p, lambda shape: self.zeros(shape, x))

    def gather_taps_bias(self, values: Any, idx: Any, rho: Optional[Any], weight: Any, bias: Optional[Any], *,
                         taps: str) -> Any:
        """gather_taps plus the per-output bias (numba overrides: the bias is the kernel's starting value)."""
        y = self.gather_taps(values, idx, rho, weight, taps=taps)
        return y if bias is None else y + bias

    def padded_tokens(self, x: Any, p: int) -> Any:
        """[B, C, *S] zero-padded by p on every spatial axis, as tokens [B, N, C] (numba overrides: one pass
        into the contiguous layout its kernels read)."""
        from . import layout

        return layout.to_tokens(self.xp, self.pad(x, p))

    def stage(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """How the pipeline's array part runs: fn(plan, *arrays) as it is (jax overrides: jit, plan static)."""
        return fn

    def is_native_rng(self, rng: Any) -> bool:
        """Whether rng is the backend's own device key (drawn with draw_candidates inside compute)."""
        return False

    def draw_candidates(self, key: Any, n_tokens: int, count: int) -> Any:
        raise NotImplementedError(f"backend {self.backend_name!r} has no device-side candidate draw")

    def split_call_rng(self, rng: Any) -> tuple[Any, Any]:
        """(candidate rng, dropout rng) of one call; host generators serve both, in that order."""
        from .candidates import make_rng

        gen = rng if self.is_native_rng(rng) else make_rng(rng)
        return gen, gen

    def choose_path(self, request: PathRequest) -> PathChoice:
        """The default: the backend's kernels; a backend with a fused kernel says when it takes over."""
        return PathChoice(self.path_name)

    def fused(self, keys: Any, queries: np.ndarray, values: Any, weight: Any, *, k: int, metric: str,
              self_first: bool, taps: str) -> Any:
        raise NotImplementedError(f"backend {self.backend_name!r} has no fused kernel")
