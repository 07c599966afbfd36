"""What each finished cell measured (read back from its run folder) and the per-row summary over seeds."""
from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .cells import Cell
from .cost import model_gflops
from .folder import GridFolder

LAST_N = 5  # the paper's second statistic: the average of the last five epochs


@dataclass
class CellResult:
    """One finished run: best-epoch and last-5-average top-1 (validation, %), size, cost and speed."""

    cell: Cell
    best: float
    avg5: float
    best_epoch: int
    epochs: int
    params: Optional[int]
    gflops: Optional[float]
    epoch_seconds: Optional[float]


def read_cell(folder: GridFolder, cell: Cell) -> Optional[CellResult]:
    """The result of a finished cell, or None when it has not finished."""
    if not folder.finished(cell):
        return None
    run_dir = folder.run_dir(cell.id)
    with open(run_dir / "epochs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    top1 = [100.0 * float(r["val_top1"]) for r in rows]
    seconds = [float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds")]
    config = json.loads((run_dir / "config.json").read_text())
    best_index = max(range(len(top1)), key=lambda i: top1[i])
    gflops = model_gflops(config["model_config"]) if "model_config" in config else None
    return CellResult(cell, best=top1[best_index], avg5=statistics.fmean(top1[-LAST_N:]), best_epoch=best_index + 1,
                      epochs=len(top1), params=config.get("num_params"), gflops=gflops,
                      epoch_seconds=statistics.fmean(seconds) if seconds else None)


def row_key(dataset: str, coords: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return dataset, tuple(sorted(coords.items()))


@dataclass
class Row:
    """One row of a report: a dataset and coordinates, aggregated over the seeds that finished."""

    dataset: str
    coords: dict[str, str]
    seeds_total: int
    results: list[CellResult]

    @property
    def done(self) -> int:
        return len(self.results)

    def mean(self, name: str) -> Optional[float]:
        values = [getattr(r, name) for r in self.results if getattr(r, name) is not None]
        return statistics.fmean(values) if values else None

    def spread(self, name: str) -> Optional[float]:
        """The sample standard deviation over seeds (None with fewer than two)."""
        values = [getattr(r, name) for r in self.results if getattr(r, name) is not None]
        return statistics.stdev(values) if len(values) > 1 else None


def collect(folder: GridFolder, cells: list[Cell]) -> list[Row]:
    """Rows in grid order, each with the finished results of its seeds."""
    rows: dict[Any, Row] = {}
    for cell in cells:
        key = row_key(cell.dataset, cell.coords)
        row = rows.setdefault(key, Row(cell.dataset, dict(cell.coords), 0, []))
        row.seeds_total += 1
        result = read_cell(folder, cell)
        if result is not None:
            row.results.append(result)
    return list(rows.values())


def row_label(coords: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in coords.items())


def load_reference(name: Optional[str]) -> Optional[dict[str, Any]]:
    """The paper's numbers shipped for a grid (reference/<name>.json), or None."""
    if not name:
        return None
    from importlib import resources

    path = resources.files(__package__) / "reference" / f"{name}.json"
    if not path.is_file():
        return None
    return json.loads(Path(str(path)).read_text())


def reference_rows(reference: Optional[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    if reference is None:
        return {}
    return {row_key(r["dataset"], r["coords"]): r for r in reference["rows"]}
