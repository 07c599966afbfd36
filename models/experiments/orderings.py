"""Checking the paper's orderings ('branching >= conv2d > pure ConvNN') on a grid's results and on its reference.

A selector picks rows by their levels; its value is the largest best-epoch top-1 among them (for example the best
branching ratio), averaged over seeds first. A claim holds when every comparison of its chain holds; a margin
smaller than the seed spread of the two sides is flagged.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Optional

from .grid import Grid, Ordering, parse_selector


@dataclass
class Value:
    """A row's statistic: mean over seeds, the seed spread (or None) and the row it came from."""

    mean: float
    spread: Optional[float]
    coords: dict[str, str]


def _matches(coords: dict[str, str], spec: dict[str, set[str]], fixed: dict[str, str]) -> bool:
    if any(coords.get(axis) not in labels for axis, labels in spec.items()):
        return False
    return all(coords.get(axis, label) == label for axis, label in fixed.items())


def _pick(selector: str, axes: list[str], rows: list[dict[str, str]], values: dict[Any, Value],
          fixed: dict[str, str], key: Any) -> tuple[Optional[Value], list[str]]:
    """The selector's value (the largest among its rows) and the rows it needs that have no value yet."""
    spec = parse_selector(selector, axes, "ordering")
    matched = [c for c in rows if _matches(c, spec, fixed)]
    missing = [", ".join(f"{k}={v}" for k, v in c.items()) for c in matched if key(c) not in values]
    present = [values[key(c)] for c in matched if key(c) in values]
    if not matched or missing:
        return None, missing or [f"{selector} (no such cell in this run)"]
    return max(present, key=lambda v: v.mean), []


def check_chain(ordering: Ordering, axes: list[str], rows: list[dict[str, str]], values: dict[Any, Value],
                fixed: dict[str, str], key: Any) -> dict[str, Any]:
    """{'verdict': holds | fails | not evaluated, 'values': [...], 'note': ...} for one ordering in one context."""
    picked, missing = [], []
    for selector in ordering.chain[0::2]:
        value, lacking = _pick(selector, axes, rows, values, fixed, key)
        picked.append(value)
        missing += lacking
    if missing:
        return {"verdict": "not evaluated", "values": None, "note": "missing: " + "; ".join(missing[:3])
                + (" ..." if len(missing) > 3 else "")}
    holds, close = True, []
    for i, op in enumerate(ordering.chain[1::2]):
        a, b = picked[i], picked[i + 1]
        ok = a.mean > b.mean if op == ">" else a.mean >= b.mean
        holds = holds and ok
        spreads = [s for s in (a.spread, b.spread) if s is not None]
        if spreads and abs(a.mean - b.mean) <= max(spreads):
            close.append(f"{ordering.chain[2 * i]} {op} {ordering.chain[2 * i + 2]}: margin "
                         f"{abs(a.mean - b.mean):.2f} within the seed spread {max(spreads):.2f}")
    return {"verdict": "holds" if holds else "fails",
            "values": [{"selector": s, "mean": v.mean, "spread": v.spread, "row": v.coords}
                       for s, v in zip(ordering.chain[0::2], picked)],
            "note": "; ".join(close)}


def contexts(grid: Grid, ordering: Ordering, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Each combination of the levels of the ordering's `per` axes (one context when it has none)."""
    if not ordering.per:
        return [{}]
    levels = [[label for label in dict.fromkeys(c[a] for c in rows if a in c)] for a in ordering.per]
    return [dict(zip(ordering.per, combo)) for combo in itertools.product(*levels)]


def check_orderings(grid: Grid, datasets: list[str], rows: list[dict[str, str]],
                    ours: dict[Any, Value], paper: dict[Any, Value],
                    paper_dataset: dict[str, str]) -> list[dict[str, Any]]:
    """Every ordering of the grid, per dataset and context, on our results (over our `rows`: the cells that were
    asked for) and on the paper's numbers (over the rows the paper has)."""
    axes = [a.name for a in grid.axes] + sorted({k for c in grid.coords() for k in c} - {a.name for a in grid.axes})
    out = []
    for ordering in grid.orderings:
        for dataset in datasets:
            ref_dataset = paper_dataset.get(dataset, dataset)
            for fixed in contexts(grid, ordering, rows):
                mine = check_chain(ordering, axes, rows, ours, fixed,
                                   lambda c, d=dataset: (d, tuple(sorted(c.items()))))
                paper_rows = [v.coords for (d, _), v in paper.items() if d == ref_dataset]
                theirs = check_chain(ordering, axes, paper_rows, paper, fixed,
                                     lambda c, d=ref_dataset: (d, tuple(sorted(c.items()))))
                out.append({"claim": ordering.claim, "chain": " ".join(ordering.chain), "dataset": dataset,
                            "context": fixed, "ours": mine, "paper": theirs})
    return out
