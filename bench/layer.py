"""`convnn bench layer`: every layer variant on the VGG-11 and ViT-Tiny shapes, per backend, with the baselines."""
from __future__ import annotations

from typing import Any, Optional

from . import cost as cost_model
from .cases import MapShape, Shape, Variant, check_variant_filters, filter_variants, shape_set, variants_for
from .contenders import REFERENCE, TORCH_CONV2D, TORCH_SDPA, contender_builders
from .measure import failed_row, measure_contender
from .runners import TorchBaselines
from .context import CommonOptions, BenchContext, open_context
from .timing import PeakMemory


def case_cost(shape: Shape, variant: Variant) -> cost_model.Cost:
    """The useful work of a case (identical for every implementation of it)."""
    if isinstance(shape, MapShape):
        if variant.op == "conv2d":
            return cost_model.conv2d_cost(shape.batch, shape.c_in, shape.c_out, shape.height, shape.width)
        return cost_model.convnn2d_cost(shape.batch, shape.c_in, shape.c_out, shape.height, shape.width, k=shape.k,
                                        padding=1, select=variant.select, sampling=variant.sampling,
                                        num_samples=shape.samples)
    if variant.op == "attention":
        return cost_model.attention_cost(shape.batch, shape.tokens, shape.dim)
    return cost_model.convnn_attention_cost(shape.batch, shape.tokens, shape.dim, k=shape.k, sampling=variant.sampling,
                                            num_samples=shape.samples)


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    return num / den if num and den else None


def add_derived(rows: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    """GFLOP/s, % of sgemm, % of the physical floor, and ratios to the baselines measured in the same run."""
    sgemm, copy = machine.get("sgemm_gflops"), machine.get("copy_gbs")
    by_case: dict[tuple[str, str], dict[str, Any]] = {}
    dense: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["impl"] == REFERENCE:
            by_case[(row["shape"], row["variant"])] = row
        if row["impl"] in (TORCH_CONV2D, TORCH_SDPA):
            dense[row["shape"]] = row
    for row in rows:
        for phase, flops in (("fwd", row["gflop_fwd"]), ("fwdbwd", row["gflop_fwdbwd"])):
            ms = row.get(f"{phase}_ms")
            row[f"{phase}_gflops"] = flops / ms * 1e3 if ms else None
        gflops = row["fwd_gflops"]
        row["fwd_pct_sgemm"] = 100.0 * gflops / sgemm if gflops and sgemm else None
        floor = cost_model.floor_ms(row["gflop_fwd"] * 1e9, row["io_mib"] * 2**20, sgemm, copy)
        row["fwd_floor_ms"] = floor
        row["fwd_pct_floor"] = 100.0 * floor / row["fwd_ms"] if floor and row.get("fwd_ms") else None
        ref = by_case.get((row["shape"], row["variant"]))
        for phase in ("fwd", "fwdbwd"):
            row[f"speedup_vs_reference_{phase}"] = (
                _ratio(ref.get(f"{phase}_ms"), row.get(f"{phase}_ms")) if ref and ref is not row else None)
        base = dense.get(row["shape"])
        row["dense_baseline"] = base["impl"] if base else None
        row["time_vs_dense_baseline_fwd"] = _ratio(row.get("fwd_ms"), base.get("fwd_ms")) if base else None
        row["time_vs_dense_baseline_fwdbwd"] = _ratio(row.get("fwdbwd_ms"), base.get("fwdbwd_ms")) if base else None
        row["bwd_over_fwd"] = _ratio(row.get("fwdbwd_ms"), row.get("fwd_ms"))
        for phase in ("fwd", "fwdbwd"):
            mine, theirs = row.get(f"{phase}_peak_mib"), ref.get(f"{phase}_peak_mib") if ref else None
            row[f"peak_vs_reference_{phase}"] = (mine / theirs if mine is not None and theirs and ref is not row
                                                 else None)


def run_layer_bench(options: CommonOptions, *, shapes: str = "default", batch: Optional[int] = None,
                    variants: Optional[list[str]] = None, argv: Optional[list[str]] = None,
                    progress: bool = True) -> dict[str, Any]:
    """Time every (shape, variant, implementation) and return the report dict (header + rows).

    Every argument is checked before anything is loaded or measured (ValueError naming it)."""
    chosen = shape_set(shapes, batch)
    check_variant_filters(variants)
    options.validate()
    ctx = open_context(options, "layer", argv)
    return layer_rows(ctx, chosen, variants, progress)


def _baselines(ctx: BenchContext) -> Optional[TorchBaselines]:
    try:
        return TorchBaselines(ctx.options.device)
    except (ImportError, RuntimeError) as err:  # no torch, or no CUDA GPU for it: the baselines are skipped
        ctx.skip("torch baselines", f"{type(err).__name__}: {err}")
        return None


def layer_rows(ctx: BenchContext, shapes: tuple[Shape, ...], wanted: Optional[list[str]],
               progress: bool) -> dict[str, Any]:
    """The rows of the layer report for an opened context."""
    opts = ctx.options
    memory = PeakMemory(opts.device) if opts.memory else None
    baselines = _baselines(ctx)
    rows: list[dict[str, Any]] = []
    interrupted = False
    try:
        _fill_rows(ctx, shapes, wanted, baselines, memory, rows, progress)
    except KeyboardInterrupt:
        interrupted = True
    add_derived(rows, ctx.header["machine"])
    report = dict(ctx.header)
    report["memory_method"] = memory.method if memory else "not measured (--no-memory)"
    report["flop_model"] = cost_model.__doc__.strip()
    report["interrupted"] = interrupted
    report["rows"] = rows
    return report


def _fill_rows(ctx: BenchContext, shapes: tuple[Shape, ...], wanted: Optional[list[str]],
               baselines: Optional[TorchBaselines], memory: Optional[PeakMemory], rows: list[dict[str, Any]],
               progress: bool) -> None:
    """Measure every case into rows (appended one by one, so an interruption keeps what was done)."""
    opts = ctx.options
    for shape in shapes:
        for variant in filter_variants(variants_for(shape), wanted):
            cost = case_cost(shape, variant)
            for label, build in contender_builders(baselines, ctx.runners, shape, variant):
                try:
                    row = measure_contender(build(), repeats=opts.repeats, warmup=opts.warmup, memory=memory)
                except Exception as err:  # an error row naming the exception (status 'error'), never a skip
                    runner = ctx.runners.get(label)
                    row = failed_row(label, "backend" if runner else "baseline", opts.device, err,
                                     runner.mode if runner else "eager")
                row.update(shape=shape.label, variant=variant.label, gflop_fwd=cost.forward_flops / 1e9,
                           gflop_fwdbwd=cost.forward_backward_flops / 1e9, io_mib=cost.io_bytes / 2**20)
                rows.append(row)
                if progress:
                    _print_row(row)


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_row(row: dict[str, Any]) -> None:
    status = "" if row["status"] == "ok" else "  [" + "; ".join(row["notes"])[:160] + "]"
    print(f"  {row['shape']:<34} {row['variant']:<26} {row['impl']:<34} fwd {_fmt(row['fwd_ms'])} ms  "
          f"fwd+bwd {_fmt(row['fwdbwd_ms'])} ms{status}", flush=True)
