"""The generated case matrix: ConvNN op cases over SPEC.md section 3, shapes and dtypes, with stable ids.

Every case carries its seed; `make_inputs` rebuilds the same float64 data (rounded to the case's
dtype) and the same explicit candidate indices for every backend. Cases are drawn so that
neighbour selection has no near-ties at the case's dtype (see `selection.py`), except the tie cases,
whose expected indices are written out by hand, and the structural tie cases (ties.py: exact ties of
grid coordinates, SPEC section 4 step 1), whose random inputs are drawn here but chosen there.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from convnn import ConvNNConfig, attention_config
from convnn.candidates import draw_random, spatial_grid_2d, spatial_line

from .dtypes import round_to
from .pairwise import all_pairs
from .selection import candidate_count, selection_margin
from .tolerances import SELECTION_MARGIN

OPS = ("convnn2d", "convnn1d", "convnn_attention", "select_neighbors")


@dataclass(frozen=True)
class Case:
    """One check input: which op, its config, shapes, dtype and seed (level 1-3 cases)."""

    id: str
    level: int
    op: str  # one of OPS, or an identity name at level 3
    cfg: ConvNNConfig
    shape: dict[str, int]
    dtype: str
    seed: int
    candidates: str = "none"  # none | shared | per_sample: explicit candidate indices passed to every backend
    bias: bool = True
    heads: int = 1
    query_feats: bool = False
    expected_indices: Optional[tuple] = None  # tie cases: the indices the lower-index rule gives, by hand
    note: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """One line: op, shape and the config fields that differ from the defaults."""
        base = ConvNNConfig()
        diff = {k: v for k, v in self.cfg.to_dict().items() if getattr(base, k) != v}
        shape = "x".join(f"{k}{v}" for k, v in self.shape.items())
        return f"{self.op} {shape} {self.dtype} cand={self.candidates} {diff}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "level": self.level, "op": self.op, "cfg": self.cfg.to_dict(), "shape": dict(self.shape),
            "dtype": self.dtype, "seed": self.seed, "candidates": self.candidates, "bias": self.bias,
            "heads": self.heads, "query_feats": self.query_feats, "note": self.note, "tags": list(self.tags),
        }


# ----------------------------------------------------------------------------- inputs
def n_tokens(case: Case) -> int:
    """Tokens in the (padded) raster that candidate indices refer to."""
    s, p = case.shape, case.cfg.padding
    if case.op in ("convnn2d", "identity_conv3x3", "identity_conv1x1"):
        return (s["H"] + 2 * p) * (s["W"] + 2 * p)
    if case.op == "convnn1d":
        return s["L"] + 2 * p
    return s["N"]


def _candidate_indices(case: Case, rng: np.random.Generator) -> Optional[np.ndarray]:
    cfg, s = case.cfg, case.shape
    if case.candidates == "none":
        return None
    total = n_tokens(case)
    assert cfg.num_samples is not None
    if cfg.sampling == "random":
        batch = s["B"] if case.candidates == "per_sample" else None
        return draw_random(total, cfg.num_samples, rng, batch=batch)
    if case.op == "convnn2d":
        return spatial_grid_2d(s["H"], s["W"], cfg.padding, cfg.num_samples)
    if case.op == "convnn1d":
        return spatial_line(s["L"], cfg.padding, cfg.num_samples)
    return spatial_line(s["N"], 0, cfg.num_samples)


def make_inputs(case: Case) -> dict[str, Any]:
    """The case's float64 arrays (exactly representable in case.dtype) and candidate indices, from its seed."""
    if case.expected_indices is not None or "tie" in case.tags:
        from .ties import tie_inputs

        return tie_inputs(case)
    rng = np.random.default_rng(case.seed)
    s, cfg = case.shape, case.cfg
    out: dict[str, Any] = {}
    if case.op in ("convnn2d", "convnn1d", "identity_conv3x3", "identity_conv1x1"):
        spatial = (s["H"], s["W"]) if "H" in s else (s["L"],)
        out["x"] = rng.standard_normal((s["B"], s["C"]) + spatial)
        c_agg = s["C"] + (len(spatial) if cfg.aggregate_coords else 0)
        if cfg.taps == "full":
            out["weight"] = rng.standard_normal((s["O"], c_agg, cfg.k)) / np.sqrt(c_agg * cfg.k)
            n_out = s["O"]
        else:
            out["weight"] = rng.standard_normal((c_agg, cfg.k)) / np.sqrt(cfg.k)
            n_out = c_agg
        out["bias"] = rng.standard_normal(n_out) * 0.5 if case.bias else None
    elif case.op in ("convnn_attention", "identity_attention_dense", "identity_attention_kvt"):
        d = s["D"]
        out["x"] = rng.standard_normal((s["B"], s["N"], d))
        for name in ("wq", "wk", "wv", "wo"):
            out[name] = rng.standard_normal((d, d)) / np.sqrt(d)
        if case.op.startswith("identity"):
            out["taps"] = np.ones((d, cfg.k))
        elif cfg.taps == "depthwise":
            out["taps"] = 1.0 + 0.3 * rng.standard_normal((d, cfg.k))
        else:
            out["taps"] = rng.standard_normal((d, d, cfg.k)) / np.sqrt(d * cfg.k)
    elif case.op == "select_neighbors":
        out["feats"] = rng.standard_normal((s["B"], s["N"], s["F"]))
        out["query_feats"] = rng.standard_normal((s["B"], s["N"], s["F"])) if case.query_feats else None
    else:
        raise ValueError(f"case.op={case.op!r} is unknown")
    for key, value in list(out.items()):
        if value is not None:
            out[key] = round_to(value, case.dtype)
    out["candidates"] = _candidate_indices(case, rng)
    return out


# ----------------------------------------------------------------------------- generation
MAP_SHAPES = (
    {"op": "convnn2d", "B": 2, "C": 3, "H": 5, "W": 5, "O": 4},  # square, odd
    {"op": "convnn2d", "B": 1, "C": 2, "H": 4, "W": 6, "O": 3},  # non-square, batch 1
    {"op": "convnn2d", "B": 2, "C": 1, "H": 3, "W": 7, "O": 2},  # C = 1, odd non-square
    {"op": "convnn2d", "B": 1, "C": 3, "H": 1, "W": 1, "O": 2},  # one token
    {"op": "convnn1d", "B": 2, "C": 3, "L": 7, "O": 4},
    {"op": "convnn1d", "B": 1, "C": 1, "L": 1, "O": 2},  # one token, C = 1
    {"op": "convnn1d", "B": 2, "C": 2, "L": 10, "O": 1},  # one output channel
)
ATTENTION_SHAPES = ({"B": 2, "N": 7, "D": 4}, {"B": 1, "N": 9, "D": 6}, {"B": 1, "N": 1, "D": 4}, {"B": 2, "N": 5, "D": 2})
SELECT_SHAPES = ({"B": 2, "N": 9, "F": 3}, {"B": 1, "N": 6, "F": 1}, {"B": 1, "N": 1, "F": 2}, {"B": 2, "N": 12, "F": 4})
K_KINDS = ("one", "few", "nine", "max")


def _k_for(kind: str, kmax: int) -> int:
    want = {"one": 1, "few": 3, "nine": 9, "max": kmax}[kind]
    return max(1, min(want, kmax))


def _num_samples(sampling: str, total: int, spatial_dims: int, interior: int) -> Optional[int]:
    if sampling == "all":
        return None
    if sampling == "random":
        return max(1, total // 2)
    if spatial_dims == 2:
        side = 3 if interior >= 9 else (2 if interior >= 4 else 1)
        return side * side
    return max(1, min(interior, (interior + 1) // 2 + 1))


def _repair(case: Case, margin: float, max_seeds: int = 60) -> Optional[Case]:
    """The case with a seed (and, for coordinate-driven selection, order then k) free of near-ties; None if none."""
    variants = [case]
    if case.cfg.select == "position" and case.cfg.order == "rank":
        variants.append(_with(case, cfg=case.cfg.replace(order="position"), note="order=position: ranked slots tie"))
    for variant in list(variants):
        for k in range(variant.cfg.k - 1, 0, -1):
            variants.append(_with(variant, cfg=variant.cfg.replace(k=k), note=f"k lowered to {k} to avoid a tie"))
    for variant in variants:
        seeds = max_seeds if variant.cfg.select != "position" or variant.cfg.sampling == "random" else 1
        for t in range(seeds):
            trial = _with(variant, seed=variant.seed + 7919 * t)
            inputs = make_inputs(trial)
            if selection_margin(trial, inputs) >= margin:
                return trial
    return None


def _with(case: Case, **changes: Any) -> Case:
    data = {f: getattr(case, f) for f in case.__dataclass_fields__}
    if "note" in changes and data["note"]:
        changes["note"] = data["note"] + "; " + changes["note"]
    data.update(changes)
    return Case(**data)


def _map_case(row: dict[str, Any], dtype: str, seed: int) -> Optional[Case]:
    shape = dict(row["shape"])
    op = shape.pop("op")
    dims = 2 if op == "convnn2d" else 1
    p = row["padding"]
    interior = shape["H"] * shape["W"] if dims == 2 else shape["L"]
    total = (shape["H"] + 2 * p) * (shape["W"] + 2 * p) if dims == 2 else shape["L"] + 2 * p
    sampling = row["sampling"]
    ns = _num_samples(sampling, total, dims, interior)
    if ns is not None and ns >= total:
        sampling, ns = "all", None
    select = row["select"]
    if select == "blend" and shape["C"] * total < 2:
        select = "feature"  # blend divides by the std of the sample's entries: undefined for one entry
    cfg = ConvNNConfig(
        k=1, select=select, metric=row["metric"], sampling=sampling, num_samples=ns,
        self_first=row["self_first"], order=row["order"], aggregate_coords=row["aggregate_coords"],
        weighting=row["weighting"], taps=row["taps"], padding=p,
        self_logit=1.0 if (row["self_first"] and row["weighting"] == "softmax" and seed % 2) else None,
    )
    cand_mode = "none" if sampling == "all" else ("per_sample" if sampling == "random" and shape["B"] > 1 and seed % 2 else "shared")
    case = Case(id="", level=1, op=op, cfg=cfg, shape=shape, dtype=dtype, seed=seed, candidates=cand_mode,
                bias=bool(seed % 3), tags=("generated",))
    kmax = candidate_count(case, make_inputs(case))
    case = _with(case, cfg=cfg.replace(k=_k_for(row["k"], kmax)))
    return case


def _attention_case(row: dict[str, Any], dtype: str, seed: int) -> Optional[Case]:
    shape = dict(row["shape"])
    n = shape["N"]
    heads = row["heads"] if shape["D"] % row["heads"] == 0 else 1
    sampling = row["sampling"]
    ns = _num_samples(sampling, n, 1, n)
    if ns is not None and ns >= n:
        sampling, ns = "all", None
    cfg = attention_config(1, sampling=sampling, num_samples=ns, metric=row["metric"], taps=row["taps"]).replace(
        self_first=row["self_first"], order=row["order"], weighting=row["weighting"],
        self_logit=1.0 if (row["self_first"] and row["weighting"] == "softmax") else None,
    )
    cand_mode = "none" if sampling == "all" else ("per_sample" if sampling == "random" and shape["B"] > 1 else "shared")
    case = Case(id="", level=1, op="convnn_attention", cfg=cfg, shape=shape, dtype=dtype, seed=seed,
                candidates=cand_mode, heads=heads, tags=("generated",))
    kmax = candidate_count(case, make_inputs(case))
    return _with(case, cfg=cfg.replace(k=_k_for(row["k"], kmax)))


def _select_case(row: dict[str, Any], dtype: str, seed: int) -> Optional[Case]:
    shape = dict(row["shape"])
    n = shape["N"]
    sampling = row["sampling"]
    ns = _num_samples(sampling, n, 1, n)
    if ns is not None and ns >= n:
        sampling, ns = "all", None
    cfg = ConvNNConfig(k=1, select="feature", metric=row["metric"], sampling=sampling, num_samples=ns,
                       self_first=row["self_first"], order=row["order"], padding=0)
    cand_mode = "none" if sampling == "all" else "shared"
    case = Case(id="", level=1, op="select_neighbors", cfg=cfg, shape=shape, dtype=dtype, seed=seed,
                candidates=cand_mode, query_feats=row["query_feats"], bias=False, tags=("generated",))
    kmax = candidate_count(case, make_inputs(case))
    return _with(case, cfg=cfg.replace(k=_k_for(row["k"], kmax)))


def _finish(cases: list[Optional[Case]], prefix: str, margin: float) -> list[Case]:
    out = []
    for i, case in enumerate(cases):
        if case is None:
            continue
        fixed = _repair(case, margin)
        if fixed is None:
            continue
        out.append(_with(fixed, id=f"{prefix}{i:02d}-{fixed.dtype}"))
    return out


def op_cases(dtype: str, *, variant: int = 0, grad_margin: bool = False) -> list[Case]:
    """Level-1 cases for one dtype: pairwise covering arrays for maps, attention and select_neighbors.

    variant picks another covering array (the full run uses two); grad_margin asks for inputs whose
    selection survives finite-difference steps. Generated once per process.
    """
    return list(_op_cases(dtype, variant, grad_margin))


@functools.lru_cache(maxsize=None)
def _op_cases(dtype: str, variant: int, grad_margin: bool) -> tuple[Case, ...]:
    margin = max(SELECTION_MARGIN[dtype], 1e-4 if grad_margin else 0.0)
    base_seed = 1000 * (variant + 1)
    map_rows = all_pairs({
        "shape": MAP_SHAPES, "select": ("feature", "position", "blend"), "metric": ("cosine", "euclidean", "dot"),
        "sampling": ("all", "random", "spatial"), "self_first": (True, False), "order": ("rank", "position"),
        "weighting": ("none", "softmax"), "taps": ("full", "depthwise"), "aggregate_coords": (False, True),
        "padding": (0, 1, 2), "k": K_KINDS,
    }, seed=variant)
    att_rows = all_pairs({
        "shape": ATTENTION_SHAPES, "metric": ("dot", "cosine", "euclidean"), "sampling": ("all", "random", "spatial"),
        "self_first": (False, True), "order": ("rank", "position"), "weighting": ("softmax", "none"),
        "taps": ("depthwise", "full"), "heads": (1, 2), "k": K_KINDS,
    }, seed=variant)
    sel_rows = all_pairs({
        "shape": SELECT_SHAPES, "metric": ("cosine", "euclidean", "dot"), "sampling": ("all", "random", "spatial"),
        "self_first": (True, False), "order": ("rank", "position"), "query_feats": (False, True), "k": K_KINDS,
    }, seed=variant)
    tag = f"v{variant}" if variant else ""
    cases = _finish([_map_case(r, dtype, base_seed + i) for i, r in enumerate(map_rows)], f"map{tag}-", margin)
    cases += _finish([_attention_case(r, dtype, base_seed + 500 + i) for i, r in enumerate(att_rows)], f"att{tag}-", margin)
    cases += _finish([_select_case(r, dtype, base_seed + 800 + i) for i, r in enumerate(sel_rows)], f"sel{tag}-", margin)
    return tuple(cases)


def identity_cases(dtype: str) -> list[Case]:
    """Level-3 cases: the identities of SPEC.md section 6."""
    return list(_identity_cases(dtype))


@functools.lru_cache(maxsize=None)
def _identity_cases(dtype: str) -> tuple[Case, ...]:
    out = []
    for i, (b, c, h, w, o) in enumerate(((2, 3, 5, 5, 4), (1, 2, 5, 6, 3), (1, 1, 4, 4, 2))):
        cfg = ConvNNConfig(k=9, select="position", metric="euclidean", padding=1, order="position", taps="full")
        out.append(Case(f"id-conv3x3-{i}-{dtype}", 3, "identity_conv3x3", cfg, {"B": b, "C": c, "H": h, "W": w, "O": o},
                        dtype, 3000 + i, note="SPEC 6.1: == Conv2d 3x3, padding 1"))
    for i, (b, c, h, w, o) in enumerate(((2, 3, 4, 5, 2), (1, 1, 3, 3, 3))):
        cfg = ConvNNConfig(k=1, self_first=True, padding=1)
        out.append(Case(f"id-conv1x1-{i}-{dtype}", 3, "identity_conv1x1", cfg, {"B": b, "C": c, "H": h, "W": w, "O": o},
                        dtype, 3100 + i, note="SPEC 6.4: k=1 with self_first == 1x1 convolution"))
    for i, (b, n, d, heads) in enumerate(((2, 7, 4, 1), (1, 9, 6, 2))):
        out.append(Case(f"id-attn-dense-{i}-{dtype}", 3, "identity_attention_dense", attention_config(n),
                        {"B": b, "N": n, "D": d}, dtype, 3200 + i, heads=heads, bias=False,
                        note="SPEC 6.2: K = N, taps 1 == softmax attention"))
    for i, (b, n, d, heads, k) in enumerate(((2, 8, 4, 1, 3), (1, 9, 6, 2, 5))):
        case = Case(f"id-attn-kvt-{i}-{dtype}", 3, "identity_attention_kvt", attention_config(k),
                    {"B": b, "N": n, "D": d}, dtype, 3300 + i, heads=heads, bias=False,
                    note="SPEC 6.3: K < N, taps 1 == top-K (KVT) attention")
        fixed = _repair(case, SELECTION_MARGIN[dtype])
        if fixed is not None:
            out.append(fixed)
    return tuple(out)


def level1_cases(dtypes: tuple[str, ...], full: bool) -> list[Case]:
    """Level-1 cases for the dtypes: the generated matrix plus the hand-written tie cases."""
    from .ties import tie_cases

    cases: list[Case] = []
    for dtype in dtypes:
        cases += op_cases(dtype)
        if full and dtype in ("float64", "float32"):
            cases += op_cases(dtype, variant=1)
        cases += tie_cases(dtype)
    return cases


def level2_cases(dtypes: tuple[str, ...], full: bool) -> list[Case]:
    """Level-2 cases: the op cases (select_neighbors has no gradient), drawn to survive finite differences."""
    cases: list[Case] = []
    for dtype in dtypes:
        if dtype in ("bfloat16", "float16"):
            continue
        picked = [c for c in op_cases(dtype, grad_margin=True) if c.op != "select_neighbors"]
        if not full:
            picked = picked[::2]
        cases += [_with(c, id="grad-" + c.id, level=2) for c in picked]
    return cases


def level3_cases(dtypes: tuple[str, ...]) -> list[Case]:
    """Level-3 cases for the dtypes."""
    return [c for dtype in dtypes for c in identity_cases(dtype)]
