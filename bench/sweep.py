"""`convnn bench sweep`: how the ConvNN2d forward cost grows with N, K, C and the candidate count.

Sampling 'all' scores every query against every padded token, so its time grows quadratically in
N; 'random' scores against a fixed number of candidates, so it grows linearly. The fitted slope
of log(time) against log(value) makes that visible in the report and the plots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from . import cost as cost_model
from .cases import MapShape, Variant
from .contenders import contender_builders
from .layer import _baselines
from .measure import failed_row, measure_contender
from .context import CommonOptions, BenchContext, check_int, open_context

SLOPE_POINTS = 3  # the slope is fitted over the largest values of an axis
ALL = Variant("convnn feature/all", "convnn2d")
RANDOM = Variant("convnn feature/random", "convnn2d", sampling="random")


@dataclass(frozen=True)
class Axis:
    """One swept quantity: its values, how a value becomes a shape, and the samplings compared."""

    name: str
    label: str
    description: str
    values: tuple[int, ...]
    quick_values: tuple[int, ...]


AXES = (
    Axis("N", "tokens N = H * W", "map side H = W grows, N = H * W (C 16->16, K 9, random: 64 candidates)",
         (8, 16, 32, 64), (4, 8)),
    Axis("K", "neighbours K", "neighbour count grows (32x32, C 16->16, random: 64 candidates)",
         (3, 9, 25), (3, 5)),
    Axis("C", "channels C_in = C_out", "channel count grows (16x16, K 9, random: 64 candidates)",
         (8, 32, 128), (4, 8)),
    Axis("candidates", "candidates r", "candidate count grows (32x32, C 16->16, K 9; all = every padded token)",
         (16, 64, 256, 1024), (12, 24)),
)


def sweep_shape(axis: str, value: int, batch: int, quick: bool) -> MapShape:
    """The map shape of one point of an axis."""
    side, channels, k, samples = (8, 4, 5, 12) if quick else (32, 16, 9, 64)
    if axis == "N":
        side = value
    elif axis == "K":
        k = value
    elif axis == "C":
        channels, side = value, (side if quick else 16)
    elif axis == "candidates":
        samples = value
    return MapShape("sweep", batch, channels, channels, side, side, samples=samples, k=k)


def fit_slope(points: list[tuple[float, float]]) -> Optional[float]:
    """Least-squares slope of log(time) against log(value) (None with fewer than two points)."""
    pts = [(math.log(v), math.log(t)) for v, t in points if v > 0 and t and t > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def run_sweep_bench(options: CommonOptions, *, axes: Optional[list[str]] = None, batch: Optional[int] = None,
                    backward: bool = False, argv: Optional[list[str]] = None, progress: bool = True) -> dict[str, Any]:
    """Time ConvNN2d (sampling all and random) per backend and the authors' algorithm along each axis."""
    known = {a.name: a for a in AXES}
    unknown = [a for a in (axes or []) if a not in known]
    if unknown:
        raise ValueError(f"--axes: {', '.join(map(repr, unknown))} unknown; choose from {', '.join(known)} "
                         f"(comma separated)")
    chosen = [known[a] for a in axes] if axes else list(AXES)
    if batch is None:
        batch = 1 if options.quick else 4
    check_int("batch", batch, 1)
    options.memory = False  # the sweep is about time
    options.validate()
    ctx = open_context(options, "sweep", argv)
    rows: list[dict[str, Any]] = []
    try:
        sweep_rows(ctx, chosen, batch, backward, progress, rows)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    slopes = sweep_slopes(rows, [a.name for a in chosen])
    report = dict(ctx.header)
    report["interrupted"] = interrupted
    report["batch"] = batch
    report["axes"] = {a.name: {"label": a.label, "description": a.description,
                               "values": sorted({r["value"] for r in rows if r["axis"] == a.name})} for a in chosen}
    report["slopes"] = slopes
    report["rows"] = rows
    return report


def sweep_slopes(rows: list[dict[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
    """The fitted slope per (axis, sampling, implementation), over the largest SLOPE_POINTS values."""
    from .report import impl_label

    slopes = []
    for axis in axes:
        mine = [r for r in rows if r["axis"] == axis and r.get("fwd_ms")]
        for key in dict.fromkeys((r["sampling"], impl_label(r)) for r in mine):
            pts = sorted((r["value"], r["fwd_ms"]) for r in mine if (r["sampling"], impl_label(r)) == key)
            pts = pts[-SLOPE_POINTS:]  # the large end, where fixed per-call costs no longer dominate
            if len(pts) >= 2:
                slopes.append({"axis": axis, "sampling": key[0], "impl": key[1], "slope": fit_slope(pts),
                               "points": len(pts)})
    return slopes


def _points(axis: Axis, quick: bool, batch: int) -> list[tuple[int, Variant, MapShape]]:
    values = axis.quick_values if quick else axis.values
    out = []
    for value in values:
        shape = sweep_shape(axis.name, value, batch, quick)
        if axis.name == "candidates":
            n_padded = (shape.height + 2) * (shape.width + 2)
            if value < n_padded:
                out.append((value, RANDOM, shape))
        else:
            shown = value * value if axis.name == "N" else value  # the N axis is swept by map side
            out += [(shown, ALL, shape), (shown, RANDOM, shape)]
    if axis.name == "candidates":
        shape = sweep_shape("candidates", values[-1], batch, quick)
        out.append(((shape.height + 2) * (shape.width + 2), ALL, shape))
    return out


def sweep_rows(ctx: BenchContext, axes: list[Axis], batch: int, backward: bool, progress: bool,
               rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (axis value, sampling, implementation), appended to rows as each is measured."""
    opts = ctx.options
    baselines = _baselines(ctx)
    for axis in axes:
        for value, variant, shape in _points(axis, opts.quick, batch):
            cost = cost_model.convnn2d_cost(shape.batch, shape.c_in, shape.c_out, shape.height, shape.width,
                                            k=shape.k, padding=1, select="feature", sampling=variant.sampling,
                                            num_samples=shape.samples)
            for label, build in contender_builders(baselines, ctx.runners, shape, variant):
                try:
                    contender = build()
                    if not backward:
                        contender.forward_backward = None
                    row = measure_contender(contender, repeats=opts.repeats, warmup=opts.warmup, memory=None)
                except Exception as err:  # an error row naming the exception (status 'error'), never a skip
                    runner = ctx.runners.get(label)
                    row = failed_row(label, "backend" if runner else "baseline", opts.device, err,
                                     runner.mode if runner else "eager")
                gflop = cost.forward_flops / 1e9
                row.update(axis=axis.name, value=value, sampling=variant.sampling, shape=shape.label,
                           gflop_fwd=gflop, fwd_gflops=gflop / row["fwd_ms"] * 1e3 if row.get("fwd_ms") else None)
                rows.append(row)
                if progress:
                    print(f"  {axis.name}={value:<5} {variant.sampling:<7} {row['impl']:<34} "
                          f"fwd {row['fwd_ms'] if row['fwd_ms'] is None else round(row['fwd_ms'], 2)} ms "
                          f"{'' if row['status'] == 'ok' else row['notes']}", flush=True)
    return rows
