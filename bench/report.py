"""Write a bench report: JSON (everything, machine and versions included), Markdown tables and PNG plots."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

LAYER_COLUMNS = (
    "layer", "implementation", "fwd ms", "1st fwd ms", "fwd CV %", "fwd+bwd ms", "(f+b)/f", "peak MiB fwd", "peak MiB f+b",
    "GFLOP/s fwd", "% sgemm", "% floor", "x faster than authors' fwd", "x faster than authors' f+b",
    "time / conv2d or SDPA fwd",
)
MODEL_COLUMNS = (
    "model", "backend", "params", "batch", "train img/s", "inference img/s", "train step ms", "inference ms",
    "peak MiB train", "peak MiB inference", "status",
)
SWEEP_COLUMNS = ("axis", "value", "sampling", "implementation", "fwd ms", "GFLOP", "GFLOP/s", "fwd+bwd ms")


def _num(value: Optional[float], digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _table(columns: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def impl_label(row: dict[str, Any]) -> str:
    """'numba (eager)', 'jax (jit, cuda)' for backends; the baseline's name otherwise."""
    where = f", {row['device']}" if row.get("device") not in (None, "cpu") else ""
    if row.get("role") == "backend":
        return f"{row['impl']} ({row.get('mode') or '?'}{where})"
    return row["impl"] + (f" ({row['device']})" if where else "")


def machine_lines(report: dict[str, Any]) -> list[str]:
    """The header lines: device, measured ceilings, threads, versions, skipped backends."""
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    lines = [
        f"- command: `{report['command']}` ({report['created']})",
        f"- device: {m['device_name']}; {m['os']}; Python {m['python']}",
        f"- measured ceilings: sgemm {_num(m['sgemm_gflops'], 1)} GFLOP/s, copy {_num(m['copy_gbs'], 1)} GB/s "
        f"({m['limits_note']})",
        f"- threads: {m.get('threads')}",
        f"- versions: {versions}",
        f"- repeats: median of {report['settings']['repeats']} after {report['settings']['warmup']} warm-up call(s)",
    ]
    if report.get("interrupted"):
        lines.append("- INTERRUPTED: the run was stopped early; the tables hold only what was measured")
    if report.get("memory_method"):
        lines.append(f"- peak memory: {report['memory_method']}")
    for skip in report.get("skipped", []):
        lines.append(f"- skipped {skip['backend']}: {skip['reason']}")
    return lines


def _errors(rows: list[dict[str, Any]], label: Callable[[dict[str, Any]], str]) -> list[str]:
    out = []
    for row in rows:
        if row.get("status") != "ok" or row.get("notes"):
            out.append(f"- {label(row)}: {'; '.join(row.get('notes') or [row.get('status', '')])}")
    return out


SUMMARY_COLUMNS = (
    "shape", "layer", "implementation", "fwd ms", "x faster than authors' fwd", "x faster than authors' f+b",
    "(f+b)/f", "peak memory / authors' f+b", "% sgemm fwd", "time / conv2d or SDPA fwd",
)
SUMMARY_VARIANTS = ("convnn feature/all", "convnn feature/random", "convnn attention/all")


def layer_summary(report: dict[str, Any]) -> str:
    """The headline rows (dense and random feature selection, dense ConvNN attention) of every backend."""
    rows = [r for r in report["rows"] if r["variant"] in SUMMARY_VARIANTS and r.get("role") == "backend"]
    table = [[
        r["shape"], r["variant"], impl_label(r), _num(r.get("fwd_ms")), _num(r.get("speedup_vs_reference_fwd")),
        _num(r.get("speedup_vs_reference_fwdbwd")), _num(r.get("bwd_over_fwd")),
        _num(r.get("peak_vs_reference_fwdbwd")), _num(r.get("fwd_pct_sgemm"), 1),
        _num(r.get("time_vs_dense_baseline_fwd")),
    ] for r in rows]
    return _table(SUMMARY_COLUMNS, table)


def layer_markdown(report: dict[str, Any]) -> str:
    """A summary of the headline rows, one table per shape, then the notes and errors of individual rows."""
    parts = ["## Layer benchmark", "", *machine_lines(report), "", "### Summary", "", layer_summary(report), ""]
    shapes: list[str] = []
    for row in report["rows"]:
        if row["shape"] not in shapes:
            shapes.append(row["shape"])
    for shape in shapes:
        rows = [r for r in report["rows"] if r["shape"] == shape]
        table = [[
            r["variant"], impl_label(r), _num(r.get("fwd_ms")), _num(r.get("fwd_first_ms")),
            _num(100.0 * r["fwd_cv"] if r.get("fwd_cv") is not None else None, 0), _num(r.get("fwdbwd_ms")), _num(r.get("bwd_over_fwd")),
            _num(r.get("fwd_peak_mib"), 1), _num(r.get("fwdbwd_peak_mib"), 1), _num(r.get("fwd_gflops"), 1),
            _num(r.get("fwd_pct_sgemm"), 1), _num(r.get("fwd_pct_floor"), 1),
            _num(r.get("speedup_vs_reference_fwd")), _num(r.get("speedup_vs_reference_fwdbwd")),
            _num(r.get("time_vs_dense_baseline_fwd")),
        ] for r in rows]
        parts += [f"### {shape}", "", _table(LAYER_COLUMNS, table), ""]
    notes = _errors(report["rows"], lambda r: f"{r['shape']} / {r['variant']} / {impl_label(r)}")
    if notes:
        parts += ["### Notes and errors", "", *notes, ""]
    return "\n".join(parts)


def model_markdown(report: dict[str, Any]) -> str:
    """One table of images/s and peak memory per model and backend."""
    table = [[
        r["model"], r["backend"], f"{r['params']:,}" if r.get("params") else "-", str(r.get("batch", "-")), _num(r.get("train_images_per_s"), 1),
        _num(r.get("infer_images_per_s"), 1), _num(r.get("train_ms")), _num(r.get("infer_ms")),
        _num(r.get("train_peak_mib"), 1), _num(r.get("infer_peak_mib"), 1), r.get("status", "?"),
    ] for r in report["rows"]]
    parts = ["## Model benchmark", "", *machine_lines(report), "", _table(MODEL_COLUMNS, table), ""]
    notes = _errors(report["rows"], lambda r: f"{r['model']} / {r['backend']}")
    if notes:
        parts += ["### Notes and errors", "", *notes, ""]
    return "\n".join(parts)


def sweep_markdown(report: dict[str, Any]) -> str:
    """One table per swept axis, plus the fitted log-log slopes (2 = quadratic, 1 = linear)."""
    parts = ["## Scaling sweep", "", *machine_lines(report), ""]
    if report.get("slopes"):
        parts += ["Fitted slope of log(time) against log(value) over the three largest values of each axis "
                  "(2 = quadratic, 1 = linear, 0 = flat):", ""]
        parts.append(_table(("axis", "sampling", "implementation", "slope"),
                            [[s["axis"], s["sampling"], s["impl"], _num(s["slope"])] for s in report["slopes"]]))
        parts.append("")
    for axis in dict.fromkeys(r["axis"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["axis"] == axis]
        table = [[r["axis"], str(r["value"]), r["sampling"], impl_label(r), _num(r.get("fwd_ms")),
                  _num(r.get("gflop_fwd"), 3), _num(r.get("fwd_gflops"), 1), _num(r.get("fwdbwd_ms"))]
                 for r in rows]
        parts += [f"### {axis}: {report['axes'][axis]['description']}", "", _table(SWEEP_COLUMNS, table), ""]
    notes = _errors(report["rows"], lambda r: f"{r['axis']}={r['value']} / {r['sampling']} / {impl_label(r)}")
    if notes:
        parts += ["### Notes and errors", "", *notes, ""]
    return "\n".join(parts)


MARKDOWN = {"layer": layer_markdown, "model": model_markdown, "sweep": sweep_markdown}


# ----------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer(report: dict[str, Any], path: Path) -> Optional[Path]:
    """Forward time per variant and implementation, one log-scale panel per shape."""
    rows = [r for r in report["rows"] if r.get("fwd_ms")]
    if not rows:
        return None
    plt = _pyplot()
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    impls = list(dict.fromkeys(impl_label(r) for r in rows))
    fig, axes = plt.subplots(len(shapes), 1, figsize=(11, 3.2 * len(shapes)), squeeze=False)
    width = 0.8 / max(len(impls), 1)
    for ax, shape in zip(axes[:, 0], shapes):
        srows = [r for r in rows if r["shape"] == shape]
        variants = list(dict.fromkeys(r["variant"] for r in srows))
        for j, impl in enumerate(impls):
            xs, ys = [], []
            for i, variant in enumerate(variants):
                hit = [r for r in srows if r["variant"] == variant and impl_label(r) == impl]
                if hit:
                    xs.append(i + j * width)
                    ys.append(hit[0]["fwd_ms"])
            if xs:
                ax.bar(xs, ys, width=width, label=impl, color=f"C{j % 10}")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(variants))])
        ax.set_xticklabels(variants, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("forward ms")
        ax.set_title(shape, fontsize=9)
    seen: dict[str, Any] = {}
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    top = 1.0 - 0.35 / fig.get_figheight()
    fig.legend(list(seen.values()), list(seen), loc="upper center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, top - 0.25 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_model(report: dict[str, Any], path: Path) -> Optional[Path]:
    """Training and inference images/s per model, one bar per backend."""
    rows = [r for r in report["rows"] if r.get("train_images_per_s") or r.get("infer_images_per_s")]
    if not rows:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key, title in ((axes[0], "train_images_per_s", "training images/s"),
                           (axes[1], "infer_images_per_s", "inference images/s")):
        labels = [f"{r['model']}\n{r['backend']}" for r in rows]
        ax.bar(range(len(rows)), [r.get(key) or 0.0 for r in rows])
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, fontsize=6, rotation=60)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweep(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """One log-log plot per axis: forward time against the swept value, a line per sampling and implementation."""
    paths = []
    plt = None
    for axis, meta in report.get("axes", {}).items():
        rows = [r for r in report["rows"] if r["axis"] == axis and r.get("fwd_ms")]
        if not rows:
            continue
        plt = plt or _pyplot()
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        impls = list(dict.fromkeys(impl_label(r) for r in rows))
        for key in dict.fromkeys((r["sampling"], impl_label(r)) for r in rows):
            pts = sorted((r["value"], r["fwd_ms"]) for r in rows if (r["sampling"], impl_label(r)) == key)
            slope = next((s["slope"] for s in report.get("slopes", [])
                          if s["axis"] == axis and s["sampling"] == key[0] and s["impl"] == key[1]), None)
            label = f"{key[1]} {key[0]}" + (f" (slope {slope:.2f})" if slope is not None else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                    color=f"C{impls.index(key[1]) % 10}", linestyle="-" if key[0] == "all" else "--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(meta["label"])
        ax.set_ylabel("forward ms")
        ax.set_title(meta["description"], fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"sweep_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write <kind>.json, <kind>.md and the plots into out_dir; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = report["kind"]
    written: dict[str, Path] = {}
    json_path = out_dir / f"{kind}.json"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    written["json"] = json_path
    md_path = out_dir / f"{kind}.md"
    md_path.write_text(MARKDOWN[kind](report), encoding="utf-8")
    written["markdown"] = md_path
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no PNG plots (pip install 'convnn[zoo]')")
        return written
    if kind == "layer":
        png = plot_layer(report, out_dir / "layer.png")
        if png:
            written["plot"] = png
    elif kind == "model":
        png = plot_model(report, out_dir / "model.png")
        if png:
            written["plot"] = png
    else:
        for i, png in enumerate(plot_sweep(report, out_dir)):
            written[f"plot_{png.stem}"] = png
    return written
