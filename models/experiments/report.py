"""`convnn experiment report`: one table per grid (Markdown, CSV, JSON) beside the paper's numbers, the orderings
the paper reports checked on our results, and a plot.

Our statistics are validation top-1 (the official test split is held back on this project's machines): the best
epoch, and the average of the last five epochs (the paper's two statistics, which it took on the test split).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional

from .folder import GridFolder
from .grid import Grid
from .orderings import Value, check_orderings
from .results import Row, collect, load_reference, reference_rows, row_key, row_label

# the embedded sample is a CIFAR-10 subset: smoke runs compare against the CIFAR-10 column
PAPER_DATASET = {"sample": "cifar10"}
FIELDS = ("dataset", "row", "seeds_done", "seeds_total", "best", "best_spread", "avg5", "avg5_spread", "best_epoch",
          "params", "gflops", "epoch_seconds", "paper_best", "paper_avg5", "paper_params", "paper_gflops")


def _num(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row_record(row: Row, paper: Optional[dict[str, Any]]) -> dict[str, Any]:
    params = [r.params for r in row.results if r.params is not None]
    return {"dataset": row.dataset, "coords": row.coords, "row": row_label(row.coords), "seeds_done": row.done,
            "seeds_total": row.seeds_total, "seeds": [r.cell.seed for r in row.results],
            "best": row.mean("best"), "best_spread": row.spread("best"), "avg5": row.mean("avg5"),
            "avg5_spread": row.spread("avg5"), "best_epoch": row.mean("best_epoch"),
            "params": params[0] if params else None, "gflops": row.mean("gflops"),
            "epoch_seconds": row.mean("epoch_seconds"),
            "paper_best": paper.get("best") if paper else None, "paper_avg5": paper.get("avg5") if paper else None,
            "paper_params": paper.get("params") if paper else None,
            "paper_gflops": paper.get("gflops") if paper else None}


def build_report(grid: Grid, folder: GridFolder) -> dict[str, Any]:
    """Everything the report files hold, as one JSON-able dict."""
    manifest = folder.read_manifest()
    cells = folder.cells()
    rows = collect(folder, cells)
    reference = load_reference(grid.reference)
    ref_rows = reference_rows(reference)
    records = [_row_record(r, ref_rows.get(row_key(PAPER_DATASET.get(r.dataset, r.dataset), r.coords)))
               for r in rows]
    ours = {row_key(r.dataset, r.coords): Value(r.mean("best"), r.spread("best"), r.coords)
            for r in rows if r.results}
    paper = {k: Value(float(v["best"]), None, dict(v["coords"])) for k, v in ref_rows.items()}
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    coords = list({tuple(sorted(r.coords.items())): r.coords for r in rows}.values())
    orderings = check_orderings(grid, datasets, coords, ours, paper, PAPER_DATASET)
    return {"grid": grid.name, "title": grid.title, "scale": manifest["scale"], "paper_table": grid.paper,
            "reference_source": reference.get("source") if reference else None,
            "reference_epochs": reference.get("epochs") if reference else None,
            "cells_total": len(cells), "cells_done": sum(r.done for r in rows),
            "statistic": "validation top-1 %: best epoch, and the mean of the last 5 epochs",
            "rows": records, "orderings": orderings}


def to_markdown(report: dict[str, Any], plot: Optional[str]) -> str:
    lines = [f"# {report['title']} ({report['grid']}, scale {report['scale']})", ""]
    paper = f" The paper's numbers are test top-1 of {report['paper_table']} " \
            f"({report['reference_epochs']} epochs)." if report.get("paper_table") else ""
    lines += [f"{report['cells_done']} of {report['cells_total']} cells done. Ours: {report['statistic']}, mean over "
              f"the seeds that finished (± their standard deviation where several did).{paper} GFLOPs: forward, per "
              f"image, from the cost model; the paper's are profiler counts (compare ratios). At a reduced scale "
              f"absolute numbers differ from the paper's; the orderings below are what carries over.", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in report["rows"]):
        lines += [f"## {dataset}", "",
                  "| cell | best % | last-5 % | seeds | paper best (last-5) % | params | GFLOPs | paper GFLOPs | "
                  "s/epoch |", "|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in report["rows"] if r["dataset"] == dataset):
            spread = (lambda s: "" if s is None else f" ± {s:.2f}")
            paper_cell = "-" if r["paper_best"] is None else f"{r['paper_best']:.2f} ({_num(r['paper_avg5'])})"
            lines.append(f"| {r['row']} | {_num(r['best'])}{spread(r['best_spread'])} | {_num(r['avg5'])}"
                         f"{spread(r['avg5_spread'])} | {r['seeds_done']}/{r['seeds_total']} | {paper_cell} | "
                         f"{'-' if r['params'] is None else format(r['params'], ',')} | {_num(r['gflops'], 4)} | "
                         f"{_num(r['paper_gflops'], 4)} | {_num(r['epoch_seconds'], 1)} |")
        lines.append("")
    if report["orderings"]:
        lines += ["## Orderings", "", "Each claim is checked on our cells and on the paper's numbers.", "",
                  "| claim | dataset | where | ours | paper | note |",
                  "|---|---|---|---|---|---|"]
        for o in report["orderings"]:
            where = ", ".join(f"{k}={v}" for k, v in o["context"].items()) or "-"
            paper = o["paper"]["verdict"] if report.get("reference_source") else "no reference"
            cells = [f"{o['claim']} (`{o['chain']}`)", o["dataset"], where, o["ours"]["verdict"], paper,
                     o["ours"]["note"] or "-"]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    if plot:
        lines += [f"![{report['grid']}]({plot})", ""]
    return "\n".join(lines)


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in report["rows"]:
        writer.writerow({k: ("" if r[k] is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]))
                         for k in FIELDS})
    return buf.getvalue()


def write_report(grid: Grid, folder: GridFolder, plot: bool = True) -> dict[str, Path]:
    """Write report/<grid>.md, .csv, .json and .png into the grid folder; return their paths."""
    report = build_report(grid, folder)
    out = folder.report_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"{grid.name}.{kind}" for kind in ("md", "csv", "json")}
    png = None
    if plot and any(r["best"] is not None for r in report["rows"]):
        from .plots import plot_report

        png = out / f"{grid.name}.png"
        plot_report(report, grid.plot_axis, png)
        paths["png"] = png
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["csv"].write_text(to_csv(report))
    paths["md"].write_text(to_markdown(report, png.name if png else None))
    return paths
