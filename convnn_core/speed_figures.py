"""The shipped CPU benchmark figures the `auto` backend policy ranks by (written by `convnn bench readme`).

The file holds, per purpose, one figure per backend (layer forward ms for 'op'; geometric-mean training
images/s for 'train' and 'train_plain') with the machine, date and command that measured it, so `explain`
can say which figure decided and a re-run of the command refreshes policy, README and results together.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

FIGURES_PATH = Path(__file__).with_name("cpu_figures.json")
LAST = ("numpy",)  # the float64 oracle is never ranked above a fast backend, whatever a figure says


def load(path: Path = FIGURES_PATH) -> Optional[dict]:
    """The figures, or None when the package ships none (the static order then decides)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def ranked(entry: dict, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """Backends best first by the entry's figure, then those without a figure in fallback order, numpy last."""
    values = entry.get("values", {})
    lower = entry.get("better") == "lower"
    measured = sorted(values, key=lambda b: values[b] if lower else -values[b])
    rest = [b for b in fallback if b not in values and b not in LAST]
    return tuple(b for b in measured if b not in LAST) + tuple(rest) + LAST


def reason(entry: dict, figures: dict) -> str:
    """'<figure>: torch 61, jax 34 (<machine>, <date>, `<command>`)': the line `explain` prints."""
    values = entry.get("values", {})
    lower = entry.get("better") == "lower"
    listed = ", ".join(f"{b} {values[b]:g}" for b in sorted(values, key=lambda b: values[b] if lower else -values[b]))
    return (f"shipped benchmark, {entry['figure']}: {listed} ({figures['machine']}; {figures['date']}; "
            f"`{figures['command']}`)")


def policy(purpose: str, fallback: tuple[tuple[str, ...], str],
           figures: Optional[dict] = None) -> tuple[tuple[str, ...], str]:
    """(order, reason) for a purpose ('op', 'train', 'train_plain') from the figures, else the fallback."""
    figures = load() if figures is None else figures
    entry = (figures or {}).get(purpose)
    if not entry or not entry.get("values"):
        return fallback
    return ranked(entry, fallback[0]), reason(entry, figures)
