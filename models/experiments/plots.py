"""The report's figure: best-epoch top-1 per row, ours (solid) beside the paper's (dashed), one panel per dataset.

With a numeric plot axis (the branching ratio, k, r) each other combination of levels is a line over it; rows
without that axis (reference cells) are horizontal dotted lines. Otherwise the rows are paired bars.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def _float(text: Any) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def plot_report(report: dict[str, Any], axis: Optional[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in report["rows"]))
    fig, panels = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(panels[0], datasets):
        rows = [r for r in report["rows"] if r["dataset"] == dataset]
        if axis is not None:
            _lines(ax, rows, axis)
        else:
            _bars(ax, rows)
        ax.set_title(f"{dataset}")
        ax.set_ylabel("best-epoch top-1 %")
        ax.grid(alpha=0.3)
    style = "solid: ours, dashed: paper" if axis is not None else "plain: ours, hatched: paper"
    fig.suptitle(f"{report['title']}\n(scale {report['scale']}; {style})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lines(ax: Any, rows: list[dict[str, Any]], axis: str) -> None:
    series: dict[str, list[dict[str, Any]]] = {}
    flat = []
    for r in rows:
        if _float(r["coords"].get(axis)) is None:
            flat.append(r)
            continue
        rest = ", ".join(f"{k}={v}" for k, v in r["coords"].items() if k != axis) or "ours"
        series.setdefault(rest, []).append(r)
    for i, (name, members) in enumerate(series.items()):
        members.sort(key=lambda r: _float(r["coords"][axis]))
        color = f"C{i % 10}"
        xs = [_float(r["coords"][axis]) for r in members]
        ours = [(x, r["best"]) for x, r in zip(xs, members) if r["best"] is not None]
        paper = [(x, r["paper_best"]) for x, r in zip(xs, members) if r["paper_best"] is not None]
        if ours:
            ax.plot(*zip(*ours), "o-", color=color, label=name)
        if paper:
            ax.plot(*zip(*paper), "--", color=color, alpha=0.6)
    for j, r in enumerate(flat):
        color = f"C{(len(series) + j) % 10}"
        if r["best"] is not None:
            ax.axhline(r["best"], color=color, linestyle=":", label=r["row"])
        if r["paper_best"] is not None:
            ax.axhline(r["paper_best"], color=color, linestyle="--", alpha=0.4)
    ax.set_xlabel(axis)
    ax.legend(fontsize=7)


def _bars(ax: Any, rows: list[dict[str, Any]]) -> None:
    labels = [r["row"] for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["best"] or 0.0 for r in rows], width=0.4, label="ours")
    ax.bar([x + 0.2 for x in xs], [r["paper_best"] or 0.0 for r in rows], width=0.4, label="paper", alpha=0.6,
           hatch="//")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
    ax.legend(fontsize=7)
