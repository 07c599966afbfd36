"""The cells of a grid at a scale: each one an ordinary `convnn train` configuration with a stable name."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .grid import Grid
from .scales import Scale, scale_settings

AT_SCALE = "at_scale."
SAFE = re.compile(r"[^A-Za-z0-9._=+-]")


@dataclass
class Cell:
    """One training run of a grid: its folder name, dataset, seed, coordinates and the trainer's settings."""

    id: str
    dataset: str
    seed: int
    coords: dict[str, str]
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "dataset": self.dataset, "seed": self.seed, "coords": self.coords,
                "preset": self.preset, "overrides": self.overrides}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Cell":
        return cls(data["id"], data["dataset"], int(data["seed"]), dict(data["coords"]), data["preset"],
                   dict(data["overrides"]))


def cell_id(dataset: str, coords: dict[str, str], seed: int) -> str:
    """'cifar10__ratio=0.5__pe=Col_Col__seed=42': readable, and safe as a folder name."""
    parts = [dataset, *(f"{k}={v}" for k, v in coords.items()), f"seed={seed}"]
    return "__".join(SAFE.sub("_", p) for p in parts)


def _level_settings(settings: dict[str, Any], scale: str) -> dict[str, Any]:
    """A level's settings at a scale: the plain ones, then its `at_scale.<scale>.*` ones."""
    plain = {k: v for k, v in settings.items() if not k.startswith(AT_SCALE)}
    prefix = f"{AT_SCALE}{scale}."
    plain.update({k[len(prefix):]: v for k, v in settings.items() if k.startswith(prefix)})
    return plain


def expand(grid: Grid, scale: Scale, *, datasets: Optional[list[str]] = None, seeds: Optional[list[int]] = None,
           where: Optional[dict[str, set[str]]] = None, overrides: Optional[dict[str, Any]] = None) -> list[Cell]:
    """The grid's cells at `scale`, optionally restricted to some datasets, seeds and levels (`where`), with extra
    trainer settings (`overrides`, the `--set` of the command line) applied last."""
    wanted = list(grid.datasets if datasets is None else datasets)
    unknown = [d for d in wanted if d not in grid.datasets]
    if unknown:
        raise ValueError(f"--dataset {', '.join(unknown)}: grid {grid.name!r} runs on {', '.join(grid.datasets)}")
    if scale.dataset is not None:  # smoke: one dataset stands in for all
        wanted = [scale.dataset]
    seeds = list(grid.seeds if seeds is None else seeds)
    where = where or {}
    for axis, labels in where.items():
        known = {c.get(axis) for c in grid.coords()} - {None}
        if not known:
            raise ValueError(f"--where {axis}=...: grid {grid.name!r} has no axis {axis!r}")
        missing = sorted(labels - known)
        if missing:
            raise ValueError(f"--where {axis}={'|'.join(sorted(labels))}: {missing} not among the levels "
                             f"{sorted(known)}")
    base = {**grid.train, "model": grid.model, **{f"model_options.{k}": v for k, v in grid.model_options.items()},
            **scale_settings(scale, grid.model), **grid.scales.get(scale.name, {})}
    cells = []
    for dataset in wanted:
        for coords in grid.coords():
            if any(coords.get(axis) not in labels for axis, labels in where.items()):
                continue
            for seed in seeds:
                settings = {**base, **_level_settings(grid.settings_for(coords), scale.name), "dataset": dataset,
                            "seed": seed, **(overrides or {})}
                cells.append(Cell(cell_id(dataset, coords, seed), dataset, seed, coords, scale.preset, settings))
    if not cells:
        raise ValueError(f"grid {grid.name!r}: no cell matches the selection (--where / --dataset / --seeds)")
    return cells


def check_cells(cells: list[Cell]) -> None:
    """Build every cell's TrainConfig and check its model options' names, so a bad grid fails before training."""
    from ..registry import model_defaults
    from ..train.config import build_config

    for cell in cells:
        try:
            cfg = build_config(cell.preset, None, cell.overrides)
            allowed = set(model_defaults(cfg.model))
            unknown = sorted(set(cfg.model_options) - allowed)
            if unknown:
                raise ValueError(f"model {cfg.model!r} has no option(s) {unknown}; allowed: "
                                 f"{', '.join(sorted(allowed))}")
        except ValueError as err:
            raise ValueError(f"cell {cell.id}: {err}") from err
