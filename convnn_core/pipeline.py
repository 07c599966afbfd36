"""The ConvNN pipeline, written once (SPEC sections 2-5) and run by every backend through its kernels.

validate at the door -> unshuffle -> pad -> tokens -> coordinates -> candidates -> select -> order
-> weights -> aggregate -> bias -> reshape -> shuffle. A backend supplies `kernels`
(convnn.kernels.ConvNNKernels); everything here is backend-neutral. Each op is split into a
host-side `door` (every check, the static plan) and an array-side `compute` that a backend may
stage (jax jits it with the plan static).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from . import layout
from ._xp import check_float_inputs, check_ndim, is_traced, namespace, shape_str
from .aggregate import check_taps
from .candidates import draw_random, make_rng, spatial_grid_2d, spatial_line
from .config import ConvNNConfig, attention_config
from .grid import Grid, make_grid
from .kernels import PathRequest
from .selection import check_candidate_count

PROJECTIONS = ("wq", "wk", "wv", "wo")
BLEND_SIGMA_EPS = 1e-6
FLOAT_DTYPES = ("float64", "float32", "bfloat16", "float16")
LOW_PRECISION = ("float16", "bfloat16")  # selection runs in float32 where a backend takes these
LAYOUTS = {1: "[B, C, L]", 2: "[B, C, H, W]", 3: "[B, C, D, H, W]"}


# ----------------------------------------------------------------------------- host constants
def host_constant(fn: Any) -> Any:
    """Mark a pure host function of static arguments (ints, shapes, configs, host index arrays).

    A tracing compiler may call it once at trace time and keep the result as a constant instead of
    tracing its NumPy: torch.compile (Dynamo) reads this marker, the one torch.compiler.
    assume_constant_result sets. Without it Dynamo would translate the NumPy calls to torch ops
    (np.ravel_multi_index has no translation; torch's linspace rounds differently from NumPy's; a
    bool() of an array is a graph break).
    """
    fn._dynamo_marked_constant = True
    return fn


def static_size(n: Any) -> int:
    """A size the plan is static in (token count, map size): operator.index, which makes torch.compile
    specialize a symbolic size (one graph per size, as jax's static plan) instead of failing at a
    host_constant call; plain ints pass through."""
    return operator.index(n)


@host_constant
def _interior_tokens(spatial: tuple[int, ...], p: int) -> np.ndarray:
    return layout.interior_tokens(spatial, p)


@host_constant
def _coordinates(padded: tuple[int, ...]) -> np.ndarray:
    return layout.coordinates(padded)


@host_constant
def _no_coordinates(n_tokens: int) -> np.ndarray:
    """[N, 0]: selection features without coordinate columns (a grid supplies the coordinate part exactly)."""
    return np.zeros((n_tokens, 0))


@host_constant
def _spatial_grid_2d(height: int, width: int, padding: int, num_samples: int) -> np.ndarray:
    return spatial_grid_2d(height, width, padding, num_samples)


@host_constant
def _spatial_line(length: int, padding: int, num_samples: int) -> np.ndarray:
    return spatial_line(length, padding, num_samples)


# ----------------------------------------------------------------------------- candidates at the door
@dataclass(frozen=True)
class CandidatePlan:
    """How compute gets its candidates: none (all tokens), `array` (given, maybe unsorted), or `draw` (device key)."""

    mode: str = "all"  # all | array | unsorted | draw
    count: Optional[int] = None


def _host_rng(kernels: Any, rng: Any) -> Any:
    if rng is None or kernels_native_rng(kernels, rng):
        return rng
    return make_rng(rng)


def kernels_native_rng(kernels: Any, rng: Any) -> bool:
    """Whether rng is a key the backend draws with on its device (e.g. a jax PRNG key)."""
    probe = getattr(kernels, "is_native_rng", None)
    return bool(probe(rng)) if probe is not None else False


def resolve_candidates(kernels: Any, cfg: ConvNNConfig, n_tokens: int, queries: np.ndarray, *, batch: int,
                       spatial: Optional[tuple[int, ...]], candidates: Any, rng: Any) -> tuple[CandidatePlan, Any]:
    """(plan, array or key): explicit indices validated and sorted, a random or spatial draw, or all tokens.

    spatial is the unpadded map/sequence size (None for plain token sets); the k-against-count
    check runs here, once, with the spec's message.
    """
    host: Optional[np.ndarray] = None
    if candidates is not None:
        raw = kernels.unwrap(candidates) if hasattr(kernels, "unwrap") else candidates
        if is_traced(raw):
            _check_index_shape(raw, batch)
            _check_count(cfg.k, cfg.self_first, static_size(raw.shape[-1]), None, queries)
            return CandidatePlan("unsorted", static_size(raw.shape[-1])), kernels.index_array(raw)
        host = validate_host_candidates(raw, n_tokens, batch)
    elif cfg.sampling == "all" or cfg.num_samples >= n_tokens:
        _check_count(cfg.k, cfg.self_first, n_tokens, None, queries)  # every query is a candidate
        return CandidatePlan(), None
    elif cfg.sampling == "random":
        if rng is None:
            raise ValueError("ConvNNConfig.sampling='random' needs explicit candidates= or an rng= (an int seed, "
                             "a numpy Generator or the backend's own key); none was given")
        if kernels_native_rng(kernels, rng):
            _check_count(cfg.k, cfg.self_first, cfg.num_samples, None, queries)
            return CandidatePlan("draw", cfg.num_samples), rng
        host = draw_random(n_tokens, cfg.num_samples, make_rng(rng))
    elif spatial is not None and len(spatial) == 2:
        host = _spatial_grid_2d(spatial[0], spatial[1], cfg.padding, cfg.num_samples)
    elif spatial is not None and len(spatial) == 1:
        host = _spatial_line(spatial[0], cfg.padding, cfg.num_samples)
    elif spatial is None:
        host = _spatial_line(n_tokens, 0, cfg.num_samples)
    else:
        raise ValueError(f"ConvNNConfig.sampling='spatial' is defined for 1-D and 2-D inputs, not {len(spatial)}-D")
    _check_count(cfg.k, cfg.self_first, int(host.shape[-1]), host, queries)
    return CandidatePlan("array", int(host.shape[-1])), kernels.index_array(host)


def _check_index_shape(cand: Any, batch: int) -> None:
    if cand.ndim not in (1, 2):
        raise ValueError(f"candidates has shape {shape_str(cand.shape)}; expected [S] or [B, S] token indices")
    if cand.ndim == 2 and cand.shape[0] != batch:
        raise ValueError(f"candidates has shape {shape_str(cand.shape)}; its first dim must be the batch {batch}")
    if cand.shape[-1] == 0:
        raise ValueError("candidates is empty; give at least one token index")
    kind = str(cand.dtype)
    if "int" not in kind:
        raise TypeError(f"candidates has dtype {cand.dtype}; integer token indices are required")


def validate_host_candidates(values: Any, n_tokens: int, batch: int) -> np.ndarray:
    """Explicit candidate indices as a sorted int64 host array ([S] or [B, S], in range, no repeats).

    Every op runs this on concrete candidates. Traced candidates (under jax.jit, or torch.compile) are
    checked for shape, integer dtype and count against k only: their values cannot be read at trace
    time, so an out-of-range, negative or repeated index is not detected and the output is
    unspecified. Call this on the host before tracing (n_tokens: `padded_token_count`).
    """
    host = _to_host(values)
    if host.dtype.kind not in "iu":
        raise TypeError(f"candidates has dtype {host.dtype}; integer token indices are required")
    _check_index_shape(host, batch)
    host = np.sort(host.astype(np.int64), axis=-1)
    lo, hi = int(host.min()), int(host.max())
    if lo < 0 or hi >= n_tokens:
        raise ValueError(f"candidates holds token index {lo if lo < 0 else hi}; allowed are 0..{n_tokens - 1} "
                         f"(the padded token raster has {n_tokens} tokens)")
    if host.shape[-1] > 1 and bool(np.any(host[..., 1:] == host[..., :-1])):
        raise ValueError("candidates holds repeated token indices; each candidate may appear once")
    return host


def padded_token_count(spatial: Any, padding: int = 0, shuffle_scale: int = 1) -> int:
    """The number of tokens explicit candidates index: prod(n // shuffle_scale + 2 * padding) over the spatial
    sizes of a map or sequence (x.shape[2:]); for a token set [B, N, F] pass (N,) with padding 0."""
    return math.prod(int(n) // int(shuffle_scale) + 2 * int(padding) for n in spatial)


def _to_host(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU
        return values.detach().cpu().numpy()
    return np.asarray(values)


@host_constant
def _check_count(k: int, self_first: bool, n_cand: int, host: Optional[np.ndarray], queries: np.ndarray) -> None:
    """The spec's k-against-candidates rule; unknown (traced or drawn) candidates and all tokens count the query
    as one. Plain ints and host arrays only: torch.compile folds this call, and torch 2.11 cannot pass it a config."""
    is_self = None
    if self_first:
        is_self = np.ones(1, dtype=bool) if host is None else np.asarray([bool(np.isin(queries, host).any())])
    check_candidate_count(np, k, self_first, is_self, n_cand)


def prepare_candidates(kernels: Any, plan: CandidatePlan, cand: Any, n_tokens: int) -> Any:
    """Inside compute: draw with a device key, or sort traced explicit indices (the tie rule needs them sorted)."""
    if plan.mode == "draw":
        return kernels.draw_candidates(cand, n_tokens, plan.count)
    if plan.mode == "unsorted":
        return kernels.xp.sort(cand, axis=-1)
    return cand


# ----------------------------------------------------------------------------- shared checks
def check_config(cfg: Any) -> ConvNNConfig:
    """cfg must be a ConvNNConfig."""
    if not isinstance(cfg, ConvNNConfig):
        raise TypeError(f"cfg must be a ConvNNConfig, got {type(cfg).__name__}")
    return cfg


def dtype_name(dtype: Any) -> str:
    """'float32', 'bfloat16', ... for a NumPy, ml_dtypes, torch, jax or array-api-strict dtype."""
    return str(dtype).rsplit(".", 1)[-1]


def is_low_precision(dtype: Any) -> bool:
    """float16 or bfloat16: selection (affinities, top-K, blend features) then runs in float32."""
    return dtype_name(dtype) in LOW_PRECISION


def check_dtype_supported(kernels: Any, dtype: Any) -> str:
    """The dtype name, refused with a named error when the backend does not declare it."""
    name = dtype_name(dtype)
    supported = getattr(kernels, "dtypes", None)
    if supported is not None and name not in supported:
        raise TypeError(f"dtype {name} is not supported by backend {kernels.backend_name!r} on "
                        f"{getattr(kernels, 'device', 'cpu')}; it supports {', '.join(supported)}")
    return name


def refuse_undeclared_float(kernels: Any, raw: Any) -> None:
    """A float dtype (float64/32, bfloat16, float16) the backend does not declare: the named TypeError, before
    any Array API dtype query (which fails on dtypes the namespace lacks, such as NumPy's ml_dtypes bfloat16)."""
    dtype = getattr(raw, "dtype", None)
    if dtype is not None and dtype_name(dtype) in FLOAT_DTYPES:
        check_dtype_supported(kernels, dtype)


def check_input_dtypes(kernels: Any, **arrays: Any) -> str:
    """The door's dtype checks on host views: a float dtype the backend does not declare is refused by name
    first (so NumPy's ml_dtypes bfloat16 meets this error, not the Array API's), then every array real
    floating and of one dtype, then the dtype declared. Returns the dtype name."""
    first = next(a for a in arrays.values() if a is not None)
    refuse_undeclared_float(kernels, first)
    check_float_inputs(namespace(first), **arrays)
    return check_dtype_supported(kernels, first.dtype)


def check_finite_input(kernels: Any, name: str, raw: Any) -> None:
    """NaN/inf inputs are refused wherever the values can be read (the one input-check policy)."""
    if not getattr(kernels, "check_inputs", True):
        return
    if kernels.all_finite(raw) is False:
        raise ValueError(f"{name} contains NaN or inf values; neighbour selection needs finite inputs")


def blend_sigma(xp: Any, tokens: Any) -> Any:
    """sigma_b + 1e-6 per sample [B]: the unbiased std of all feature entries of sample b on the padded grid,
    defined as 0 when the sample has a single entry (one token, one channel), where the unbiased std is 0/0."""
    b, n, c = tokens.shape
    flat = xp.reshape(tokens, (b, n * c))
    if n * c == 1:
        return xp.full_like(flat[:, 0], BLEND_SIGMA_EPS)
    return xp.std(flat, axis=1, correction=1) + BLEND_SIGMA_EPS


def selection_features(xp: Any, cfg: ConvNNConfig, tokens: Any, coords: Optional[Any]) -> Any:
    """What drives selection: features, coordinates, or [blend * f / sigma_b, (1 - blend) * coords].

    sigma_b is the unbiased (correction=1) std of all feature entries of sample b on the padded grid,
    + 1e-6; a sample with a single entry has sigma_b = 0 (its unbiased std is undefined), so its
    denominator is the 1e-6 alone. float16/bfloat16 tokens give float32 blend features (sigma_b and the
    division in float32: blend * f / 1e-6 of a constant sample overflows float16); features and
    coordinates alone keep the input dtype (the kernels score low precision in float32).
    """
    if cfg.select == "feature":
        return tokens
    b, n, c = tokens.shape
    cb = xp.broadcast_to(coords[None, :, :], (b, n, coords.shape[-1]))
    if cfg.select == "position":
        return cb
    if is_low_precision(tokens.dtype):
        tokens, cb = xp.astype(tokens, xp.float32), xp.astype(cb, xp.float32)
    sigma = blend_sigma(xp, tokens)
    return xp.concat([cfg.blend * tokens / sigma[:, None, None], (1.0 - cfg.blend) * cb], axis=-1)


def grid_kw(grid: Optional[Grid]) -> dict[str, Grid]:
    """The kernels' grid= keyword: passed only when there is a grid (kernels without one keep working)."""
    return {} if grid is None else {"grid": grid}


def slot_weights(kernels: Any, cfg: ConvNNConfig, keys: Any, queries: np.ndarray, idx: Any, heads: int,
                 query_feats: Optional[Any] = None, grid: Optional[Grid] = None) -> Optional[Any]:
    """rho [B, H, Nq, K]: None, or softmax over the slots' affinities (the self slot may use self_logit)."""
    if cfg.weighting == "none":
        return None
    xp = kernels.xp
    aff = kernels.slot_affinity(keys, queries, idx, metric=cfg.metric, heads=heads, query_feats=query_feats,
                                **grid_kw(grid))
    self_logit = cfg.softmax_self_logit
    if self_logit is not None:
        q = kernels.constant(queries.reshape(1, 1, -1, 1), idx)
        aff = xp.where(idx == q, xp.full_like(aff, self_logit), aff)
    shifted = aff - xp.max(aff, axis=-1, keepdims=True)
    e = xp.exp(shifted)
    return e / xp.sum(e, axis=-1, keepdims=True)


def neighbours(kernels: Any, cfg: ConvNNConfig, keys: Any, queries: np.ndarray, cand: Any, heads: int,
               query_feats: Optional[Any] = None, grid: Optional[Grid] = None) -> Any:
    """Selected indices [B, H, Nq, K] in cfg.order (position order = the chosen token indices ascending);
    with a grid the kernels add the exact coordinate part to the euclidean distance (SPEC section 4, step 1)."""
    idx = kernels.select(keys, queries, cand, k=cfg.k, metric=cfg.metric, self_first=cfg.self_first, heads=heads,
                         query_feats=query_feats, **grid_kw(grid))
    if cfg.order == "position":
        idx = kernels.xp.sort(idx, axis=-1)
    return idx


def choose_path(kernels: Any, request: PathRequest) -> str:
    """'fused' when the backend has a fused kernel that takes this request, else 'kernels'."""
    chooser = getattr(kernels, "choose_path", None)
    if chooser is None:
        return "kernels"
    return "fused" if chooser(request).path.startswith("fused") else "kernels"


# ----------------------------------------------------------------------------- maps and sequences (N-d)
@dataclass(frozen=True)
class MapPlan:
    """Everything static about one convnn_nd call (hashable, so a backend can compile per plan)."""

    kernels: Any
    cfg: ConvNNConfig
    spatial: tuple[int, ...]  # unpadded size after unshuffle
    cand: CandidatePlan
    fused: bool = False
    has_bias: bool = False
    grid: Optional[Grid] = None  # the exact coordinate part of euclidean position/blend selection (convnn.grid)


def convnn_nd(kernels: Any, x: Any, weight: Any, bias: Optional[Any], cfg: ConvNNConfig, dims: int, *,
              candidates: Any = None, rng: Any = None) -> Any:
    """ConvNN on [B, C, *S] with len(S) == dims: y [B, O, *S] (SPEC section 4). The door, then compute."""
    cfg = check_config(cfg)
    unwrap = kernels.unwrap
    raw_x, raw_w = unwrap(x), unwrap(weight)
    raw_b = None if bias is None else unwrap(bias)
    check_ndim("x", raw_x, dims + 2, LAYOUTS.get(dims, f"[B, C, {dims} spatial dims]"))
    dtype = check_input_dtypes(kernels, x=raw_x, weight=raw_w, bias=raw_b)
    check_finite_input(kernels, "x", raw_x)
    s, p = cfg.shuffle_scale, cfg.padding
    b, c = int(raw_x.shape[0]), int(raw_x.shape[1])
    full = tuple(static_size(n) for n in raw_x.shape[2:])
    layout.check_divisible(full, s)
    spatial = tuple(n // s for n in full)
    channels = c * s ** dims
    c_agg = channels + (dims if cfg.aggregate_coords else 0)
    out_channels = check_taps(cfg.taps, raw_w, raw_b, c_agg, cfg.k)
    layout.check_shuffle_channels(out_channels, s, dims)
    padded = tuple(n + 2 * p for n in spatial)
    n_tokens = math.prod(padded)
    queries = _interior_tokens(spatial, p)
    cand_plan, cand = resolve_candidates(kernels, cfg, n_tokens, queries, batch=b, spatial=spatial,
                                         candidates=candidates, rng=rng)
    request = PathRequest("convnn2d" if dims == 2 else "convnn1d", cfg, dtype, getattr(kernels, "device", "cpu"),
                          explicit_candidates=cand_plan.mode != "all")
    grid = make_grid(cfg, padded)
    plan = MapPlan(kernels, cfg, spatial, cand_plan, choose_path(kernels, request) == "fused", bias is not None, grid)
    return kernels.stage("convnn_nd", compute_nd)(plan, x, weight, bias, cand)


def compute_nd(plan: MapPlan, x: Any, weight: Any, bias: Optional[Any], cand: Any) -> Any:
    """The array part of convnn_nd: every step after the door, on the backend's arrays."""
    kernels, cfg, xp = plan.kernels, plan.cfg, plan.kernels.xp
    s, p = cfg.shuffle_scale, cfg.padding
    x = layout.unshuffle(xp, x, s)
    padded_shape = tuple(n + 2 * p for n in plan.spatial)
    tokens = kernels.padded_tokens(x, p)
    b, n_tokens, _ = tokens.shape
    grid = plan.grid
    coords = None
    if cfg.aggregate_coords or (cfg.uses_coords and grid is None):
        coords = kernels.constant(_coordinates(padded_shape), x)
    values = tokens
    if cfg.aggregate_coords:
        values = xp.concat([tokens, xp.broadcast_to(coords[None, :, :], (b, n_tokens, coords.shape[-1]))], axis=-1)
    # with a grid the kernels add the coordinate part exactly (SPEC section 4, step 1): the selection features
    # get no coordinate columns (blend: the feature part alone; position: no columns at all)
    sel_coords = coords if grid is None else kernels.constant(_no_coordinates(n_tokens), x)
    sel = selection_features(xp, cfg, tokens, sel_coords)
    queries = _interior_tokens(plan.spatial, p)
    cand = prepare_candidates(kernels, plan.cand, cand, n_tokens)
    if plan.fused:
        y = kernels.fused(sel, queries, values, weight, k=cfg.k, metric=cfg.metric, self_first=cfg.self_first,
                          taps=cfg.taps, **grid_kw(grid))
        if bias is not None:
            y = y + bias
    else:
        idx = neighbours(kernels, cfg, sel, queries, cand, 1, grid=grid)
        rho = slot_weights(kernels, cfg, sel, queries, idx, 1, grid=grid)
        y = kernels.gather_taps_bias(values, idx, rho, weight, bias, taps=cfg.taps)
    return layout.shuffle(xp, layout.from_tokens(xp, y, plan.spatial), s)


# ----------------------------------------------------------------------------- token sets: select_neighbors
@dataclass(frozen=True)
class SelectPlan:
    """Static part of one select_neighbors call."""

    kernels: Any
    cfg: ConvNNConfig
    cand: CandidatePlan
    has_query_feats: bool


def select_neighbors(kernels: Any, feats: Any, cfg: ConvNNConfig, *, query_feats: Any = None, candidates: Any = None,
                     rng: Any = None) -> tuple[Any, Any]:
    """Indices [B, N, K] (int64) and affinities [B, N, K] in cfg.order for token features [B, N, F]."""
    cfg = check_config(cfg)
    raw = kernels.unwrap(feats)
    check_ndim("feats", raw, 3, "[B, N, F]")
    raw_q = None if query_feats is None else kernels.unwrap(query_feats)
    check_input_dtypes(kernels, feats=raw, query_feats=raw_q)
    check_finite_input(kernels, "feats", raw)
    if raw_q is not None:
        check_ndim("query_feats", raw_q, 3, "[B, N, F]")
        if tuple(raw_q.shape) != tuple(raw.shape):
            raise ValueError(f"query_feats has shape {shape_str(raw_q.shape)}; it must match feats "
                             f"{shape_str(raw.shape)}")
        check_finite_input(kernels, "query_feats", raw_q)
    b, n = int(raw.shape[0]), static_size(raw.shape[1])
    queries = np.arange(n, dtype=np.int64)
    cand_plan, cand = resolve_candidates(kernels, cfg, n, queries, batch=b, spatial=None, candidates=candidates,
                                         rng=rng)
    plan = SelectPlan(kernels, cfg, cand_plan, query_feats is not None)
    return kernels.stage("select_neighbors", compute_select)(plan, feats, query_feats, cand)


def compute_select(plan: SelectPlan, feats: Any, query_feats: Optional[Any], cand: Any) -> tuple[Any, Any]:
    """The array part of select_neighbors."""
    kernels, cfg = plan.kernels, plan.cfg
    n = feats.shape[1]
    queries = np.arange(n, dtype=np.int64)
    cand = prepare_candidates(kernels, plan.cand, cand, n)
    idx = neighbours(kernels, cfg, feats, queries, cand, 1, query_feats=query_feats)
    aff = kernels.slot_affinity(feats, queries, idx, metric=cfg.metric, heads=1, query_feats=query_feats)
    return idx[:, 0, ...], aff[:, 0, ...]


# ----------------------------------------------------------------------------- attention
def resolve_attention_config(cfg: Optional[ConvNNConfig]) -> ConvNNConfig:
    """The config of a convnn_attention call: the paper's dense K=9 layer when None, else a ConvNNConfig."""
    if cfg is None:
        return attention_config(9)
    return check_config(cfg)


def check_projections(x: Any, params: Mapping[str, Any], heads: int) -> int:
    """Validate x [B, N, D] (host view), the four [D, D] projections and heads; returns D."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict with keys {', '.join(PROJECTIONS)}; got {type(params).__name__}")
    missing = [k for k in PROJECTIONS if k not in params]
    if missing:
        raise ValueError(f"params is missing {missing}; attention needs {', '.join(PROJECTIONS)}")
    check_ndim("x", x, 3, "[B, N, D]")
    d = int(x.shape[-1])
    for name in PROJECTIONS:
        if tuple(params[name].shape) != (d, d):
            raise ValueError(f"params[{name!r}] has shape {shape_str(params[name].shape)}; expected [{d}, {d}]")
    check_float_inputs(namespace(x), x=x, **{f"params[{k!r}]": params[k] for k in PROJECTIONS})
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or d % heads:
        raise ValueError(f"heads={heads!r} must be a positive int that divides the width D={d}")
    return d


def check_attention_taps(x: Any, params: Mapping[str, Any], cfg: ConvNNConfig, d: int) -> None:
    """The convnn_attention checks beyond the projections: taps present and shaped, a token-level config."""
    if "taps" not in params:
        raise ValueError("params is missing 'taps'; give [D, K] (depthwise) or [D, D, K] (full)")
    if cfg.select != "feature" or cfg.aggregate_coords or cfg.padding != 0 or cfg.shuffle_scale != 1:
        raise ValueError(
            f"convnn_attention needs select='feature', aggregate_coords=False, padding=0, shuffle_scale=1; got "
            f"select={cfg.select!r}, aggregate_coords={cfg.aggregate_coords}, padding={cfg.padding}, "
            f"shuffle_scale={cfg.shuffle_scale} (use convnn.attention_config)"
        )
    check_float_inputs(namespace(x), x=x, taps=params["taps"])
    check_taps(cfg.taps, params["taps"], None, d, cfg.k, field="params['taps']")


def check_dropout(dropout: float, train: bool, rng: Any) -> bool:
    """Validate the dropout rate; True when dropout is active (training with p > 0, which needs an rng)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (0.0 <= float(dropout) < 1.0):
        raise ValueError(f"dropout={dropout!r} must be a float in [0, 1)")
    active = bool(train) and dropout > 0.0
    if active and rng is None:
        raise ValueError("dropout > 0 with train=True needs an rng= (an int seed, a numpy Generator or the "
                         "backend's own key)")
    return active


@dataclass(frozen=True)
class AttentionPlan:
    """Static part of one convnn_attention call."""

    kernels: Any
    cfg: ConvNNConfig
    heads: int
    cand: CandidatePlan
    dropout: float


def convnn_attention(kernels: Any, x: Any, params: Mapping[str, Any], cfg: Optional[ConvNNConfig] = None, *,
                     heads: int = 1, dropout: float = 0.0, candidates: Any = None, rng: Any = None,
                     train: bool = False) -> Any:
    """ConvNN attention on x [B, N, D] (SPEC section 5): q selects K keys per head, softmax rho, taps, dropout, wo."""
    cfg = resolve_attention_config(cfg)
    raw_x = kernels.unwrap(x)
    plain = kernels.unwrap_tree(params)
    raw_params = {k: kernels.unwrap(v) for k, v in plain.items()} if isinstance(plain, Mapping) else plain
    refuse_undeclared_float(kernels, raw_x)
    d = check_projections(raw_x, raw_params, heads)
    check_attention_taps(raw_x, raw_params, cfg, d)
    check_dtype_supported(kernels, raw_x.dtype)
    check_finite_input(kernels, "x", raw_x)
    active = check_dropout(dropout, train, rng)
    cand_rng, drop_rng = kernels.split_call_rng(rng) if rng is not None else (None, None)
    b, n = int(raw_x.shape[0]), static_size(raw_x.shape[1])
    queries = np.arange(n, dtype=np.int64)
    cand_plan, cand = resolve_candidates(kernels, cfg, n, queries, batch=b, spatial=None, candidates=candidates,
                                         rng=cand_rng)
    plan = AttentionPlan(kernels, cfg, heads, cand_plan, float(dropout) if active else 0.0)
    arrays = {k: params[k] for k in PROJECTIONS + ("taps",)}
    return kernels.stage("convnn_attention", compute_attention)(plan, x, arrays, cand, drop_rng if active else None)


def compute_attention(plan: AttentionPlan, x: Any, params: Mapping[str, Any], cand: Any, drop_rng: Any) -> Any:
    """The array part of convnn_attention."""
    kernels, cfg, heads = plan.kernels, plan.cfg, plan.heads
    n = x.shape[1]
    q = kernels.linear(x, params["wq"], None)
    k = kernels.linear(x, params["wk"], None)
    v = kernels.linear(x, params["wv"], None)
    queries = np.arange(n, dtype=np.int64)
    cand = prepare_candidates(kernels, plan.cand, cand, n)
    idx = neighbours(kernels, cfg, k, queries, cand, heads, query_feats=q)
    rho = slot_weights(kernels, cfg, k, queries, idx, heads, query_feats=q)
    y = kernels.gather_taps(v, idx, rho, params["taps"], taps=cfg.taps)
    if plan.dropout > 0.0:
        y = kernels.dropout(y, plan.dropout, drop_rng, train=True)
    return kernels.linear(y, params["wo"], None)
