"""Grid files: a small declarative TOML file per study, read and checked into a `Grid`.

A grid names a model, the datasets and seeds, the settings shared by every cell, and axes whose levels
change settings; the cells are the cross product of the axes (plus any `[[extra]]` cells), times the
datasets, times the seeds. The file format is described in `FORMAT` (and in the README).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

FORMAT = """\
name = "my-grid"                  # the grid's name (letters, digits, '-', '_')
title = "what the grid studies"
model = "vgg11"                   # a zoo model (convnn train --list-models)
datasets = ["cifar10", "cifar100"]
seeds = [42]
reference = "my-grid"             # optional: reference/<name>.json holds the paper's numbers
plot_axis = "ratio"               # optional: the numeric axis on the plot's x axis

[train]                           # training options of every cell (any `convnn train --set` key)
epochs = 150
[model_options]                   # model options of every cell
layer = "branching"

[[axes]]                          # an axis of values: each sets `option`
name = "ratio"
option = "model_options.ratio"
values = [0.0, 0.5, 1.0]

[[axes]]                          # an axis of named levels: each sets a table of settings
name = "pe"
[axes.levels]
"Col/Col" = { model_options = { select = "feature" } }
"Loc_Col/Col" = { model_options = { select = "blend" } }

[[extra]]                         # optional: a cell outside the product (coords name its row)
coords = { variant = "conv2d" }
settings = { model_options = { layer = "conv" } }

[scales.cpu]                      # optional: this grid's own settings at a scale (smoke, cpu, paper)
epochs = 10

[[orderings]]                     # optional: claims the report checks (best-epoch top-1, max over a selector)
claim = "branching >= conv2d > pure ConvNN"
chain = ["ratio=0.5", ">=", "ratio=0.0", ">", "ratio=1.0"]
per = ["pe"]                      # checked separately for each level of these axes (and each dataset)
"""

KNOWN_KEYS = {"name", "title", "model", "datasets", "seeds", "reference", "plot_axis", "train", "model_options",
              "axes", "extra", "scales", "orderings", "paper", "about"}
COMPARATORS = (">", ">=")


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file with tomllib (Python >= 3.11) or the tomli package (older Pythons)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - this project's CI runs 3.11
        try:
            import tomli as tomllib
        except ImportError as err:
            raise ImportError("reading grid files on Python < 3.11 needs the 'tomli' package: pip install tomli") \
                from err
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"grid file {path} does not exist") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"grid file {path} is not valid TOML ({err})") from err


def label_of(value: Any) -> str:
    """The text that names a level: strings as they are, numbers as Python writes them, booleans lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else repr(value)


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model_options': {'k': 9}, 'epochs': 3} -> {'model_options.k': 9, 'epochs': 3} (the trainer's override keys)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class Axis:
    """One axis: its name and its levels in order, each a label and the settings (flat override keys) it applies."""

    name: str
    levels: tuple[tuple[str, dict[str, Any]], ...]

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.levels]


@dataclass(frozen=True)
class Ordering:
    """A claim of the paper the report checks: selectors joined by '>' or '>=', per dataset and per `per` axes."""

    claim: str
    chain: tuple[str, ...]
    per: tuple[str, ...] = ()


@dataclass
class Grid:
    """A parsed, checked grid file."""

    name: str
    title: str
    model: str
    datasets: list[str]
    seeds: list[int]
    train: dict[str, Any]
    model_options: dict[str, Any]
    axes: list[Axis]
    extra: list[tuple[dict[str, str], dict[str, Any]]]
    scales: dict[str, dict[str, Any]]
    orderings: list[Ordering]
    reference: Optional[str] = None
    plot_axis: Optional[str] = None
    paper: str = ""
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def coords(self) -> list[dict[str, str]]:
        """Every cell's coordinates (axis name -> level label) in order: the product of the axes, then the extras."""
        rows: list[dict[str, str]] = [{}]
        for axis in self.axes:
            rows = [{**row, axis.name: label} for row in rows for label in axis.labels]
        return rows + [dict(c) for c, _ in self.extra]

    def settings_for(self, coords: dict[str, str]) -> dict[str, Any]:
        """The flat settings the levels (or the extra cell) with these coordinates apply."""
        for c, settings in self.extra:
            if c == coords:
                return dict(settings)
        out: dict[str, Any] = {}
        for axis in self.axes:
            out.update(dict(axis.levels)[coords[axis.name]])
        return out


def _fail(source: str, what: str) -> ValueError:
    return ValueError(f"grid {source}: {what}")


def _str_list(raw: dict[str, Any], key: str, source: str) -> list[str]:
    value = raw.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(source, f"{key}={value!r} must be a non-empty list of strings")
    return list(value)


def _table(raw: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise _fail(source, f"[{key}] must be a table of settings, got {value!r}")
    return value


def _axis(entry: Any, index: int, source: str) -> Axis:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise _fail(source, f"axes[{index}] must be a table with a name, got {entry!r}")
    name = entry["name"]
    unknown = sorted(set(entry) - {"name", "option", "values", "levels"})
    if unknown:
        raise _fail(source, f"axis {name!r} has unknown key(s) {unknown}; allowed: name, option, values, levels")
    levels: list[tuple[str, dict[str, Any]]] = []
    if "values" in entry:
        option, values = entry.get("option"), entry["values"]
        if not isinstance(option, str) or not option:
            raise _fail(source, f"axis {name!r} has values but option={option!r}; give the setting they change, "
                                f"e.g. option = \"model_options.ratio\"")
        if not isinstance(values, list) or not values:
            raise _fail(source, f"axis {name!r}: values={values!r} must be a non-empty list")
        levels += [(label_of(v), {option: v}) for v in values]
    if "levels" in entry:
        table = entry["levels"]
        if not isinstance(table, dict) or not table or not all(isinstance(v, dict) for v in table.values()):
            raise _fail(source, f"axis {name!r}: levels must be a table of label = {{ settings }}, got {table!r}")
        levels += [(label, flatten(settings)) for label, settings in table.items()]
    if not levels:
        raise _fail(source, f"axis {name!r} has neither values nor levels")
    labels = [label for label, _ in levels]
    if len(set(labels)) != len(labels):
        raise _fail(source, f"axis {name!r} repeats a level: {labels}")
    return Axis(name, tuple(levels))


def _ordering(entry: Any, index: int, axes: list[str], source: str) -> Ordering:
    if not isinstance(entry, dict) or not isinstance(entry.get("claim"), str):
        raise _fail(source, f"orderings[{index}] must be a table with claim and chain, got {entry!r}")
    chain, per = entry.get("chain"), entry.get("per", [])
    if (not isinstance(chain, list) or len(chain) < 3 or len(chain) % 2 == 0
            or not all(isinstance(c, str) for c in chain)
            or any(chain[i] not in COMPARATORS for i in range(1, len(chain), 2))):
        raise _fail(source, f"ordering {entry['claim']!r}: chain={chain!r} must alternate selectors and "
                            f"comparators ({', '.join(COMPARATORS)}), e.g. [\"ratio=0.5\", \">=\", \"ratio=0.0\"]")
    for selector in chain[0::2]:
        parse_selector(selector, axes, f"grid {source}: ordering {entry['claim']!r}")
    if not isinstance(per, list) or any(p not in axes for p in per):
        raise _fail(source, f"ordering {entry['claim']!r}: per={per!r} must list axis names ({', '.join(axes)})")
    return Ordering(entry["claim"], tuple(chain), tuple(per))


def parse_selector(text: str, axes: list[str], where: str) -> dict[str, set[str]]:
    """'ratio=0.5|0.625,pe=Col/Col' -> {'ratio': {'0.5', '0.625'}, 'pe': {'Col/Col'}} (axes named must exist)."""
    out: dict[str, set[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"{where}: selector part {part!r} is not AXIS=LABEL[|LABEL...]")
        axis, labels = part.split("=", 1)
        axis = axis.strip()
        if axis not in axes:
            raise ValueError(f"{where}: selector {text!r} names axis {axis!r}; this grid's axes: {', '.join(axes)}")
        out[axis] = {label.strip() for label in labels.split("|")}
    return out


def parse_grid(raw: dict[str, Any], source: str) -> Grid:
    """Check a grid's TOML data and build the Grid (ValueError naming the key, the value and what is allowed)."""
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise _fail(source, f"unknown key(s) {unknown}; allowed: {', '.join(sorted(KNOWN_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_" for ch in name):
        raise _fail(source, f"name={name!r} must be letters, digits, '-' or '_'")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise _fail(source, f"model={model!r} must name a zoo model (convnn train --list-models)")
    seeds = raw.get("seeds", [42])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds):
        raise _fail(source, f"seeds={seeds!r} must be a non-empty list of ints >= 0")
    axes_raw = raw.get("axes", [])
    if not isinstance(axes_raw, list):
        raise _fail(source, f"axes must be an array of tables ([[axes]]), got {axes_raw!r}")
    axes = [_axis(entry, i, source) for i, entry in enumerate(axes_raw)]
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise _fail(source, f"axis names repeat: {names}")
    extra = []
    for i, entry in enumerate(raw.get("extra", [])):
        coords, settings = (entry.get("coords"), entry.get("settings", {})) if isinstance(entry, dict) else (None, None)
        if not isinstance(coords, dict) or not coords or not all(isinstance(v, str) for v in coords.values()):
            raise _fail(source, f"extra[{i}].coords={coords!r} must be a table of axis = \"label\"")
        if not isinstance(settings, dict):
            raise _fail(source, f"extra[{i}].settings={settings!r} must be a table of settings")
        extra.append(({k: v for k, v in coords.items()}, flatten(settings)))
    scales = _table(raw, "scales", source)
    if not all(isinstance(v, dict) for v in scales.values()):
        raise _fail(source, "[scales.NAME] must each be a table of settings")
    coord_axes = names + sorted({k for c, _ in extra for k in c} - set(names))
    orderings = [_ordering(entry, i, coord_axes, source) for i, entry in enumerate(raw.get("orderings", []))]
    plot_axis = raw.get("plot_axis")
    if plot_axis is not None and plot_axis not in names:
        raise _fail(source, f"plot_axis={plot_axis!r} is not one of the axes ({', '.join(names)})")
    grid = Grid(name=name, title=str(raw.get("title", name)), model=model,
                datasets=_str_list({"datasets": raw.get("datasets", ["cifar10"])}, "datasets", source),
                seeds=list(seeds), train=flatten(_table(raw, "train", source)),
                model_options=dict(_table(raw, "model_options", source)), axes=axes, extra=extra,
                scales={k: flatten(v) for k, v in scales.items()}, orderings=orderings,
                reference=raw.get("reference"), plot_axis=plot_axis, paper=str(raw.get("paper", "")),
                source=source, raw=raw)
    coords = [tuple(sorted(c.items())) for c in grid.coords()]
    if len(set(coords)) != len(coords):
        raise _fail(source, "two cells have the same coordinates (an extra cell repeats a product cell?)")
    return grid


def packaged_grids() -> dict[str, Path]:
    """The grids shipped with convnn (name -> file)."""
    folder = resources.files(__package__) / "grids"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def load_grid(name_or_path: Union[str, Path]) -> Grid:
    """A packaged grid by name, or a grid file by path."""
    text = str(name_or_path)
    shipped = packaged_grids()
    if text in shipped:
        path = shipped[text]
    elif text.endswith(".toml") or Path(text).exists():
        path = Path(text)
    else:
        raise ValueError(f"grid {text!r} is neither a shipped grid ({', '.join(sorted(shipped))}) nor a .toml file")
    return parse_grid(load_toml(path), str(path))
