"""A deterministic all-pairs covering array: every pair of values of every two factors appears in some row.

The full cartesian product of SPEC.md section 3 is far too large to run; pairwise coverage catches
the interactions of two options (the usual source of bugs) in a few dozen rows.
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np


def all_pairs(factors: dict[str, Sequence[Any]], *, seed: int = 0, tries: int = 40) -> list[dict[str, Any]]:
    """Rows (dicts factor -> value) covering every value pair of every two factors; same seed, same rows."""
    names = list(factors)
    levels = [list(factors[n]) for n in names]
    for name, values in zip(names, levels):
        if not values:
            raise ValueError(f"factor {name!r} has no values; give at least one")
    uncovered: set[tuple[int, int, int, int]] = set()
    for a, b in itertools.combinations(range(len(names)), 2):
        for i in range(len(levels[a])):
            for j in range(len(levels[b])):
                uncovered.add((a, i, b, j))
    rng = np.random.default_rng(seed)
    rows: list[list[int]] = []
    while uncovered:
        best, best_gain = None, -1
        for _ in range(tries):
            # start from an uncovered pair so every row makes progress, fill the rest greedily
            a, i, b, j = sorted(uncovered)[int(rng.integers(len(uncovered)))]
            row = [-1] * len(names)
            row[a], row[b] = i, j
            for f in rng.permutation(len(names)):
                if row[f] >= 0:
                    continue
                gains = [_gain(row, f, v, uncovered) for v in range(len(levels[f]))]
                top = max(gains)
                choices = [v for v, g in enumerate(gains) if g == top]
                row[f] = choices[int(rng.integers(len(choices)))]
            gain = sum(1 for p in _pairs(row) if p in uncovered)
            if gain > best_gain:
                best, best_gain = row, gain
        assert best is not None
        uncovered -= set(_pairs(best))
        rows.append(best)
    return [{n: levels[k][v] for k, (n, v) in enumerate(zip(names, row))} for row in rows]


def _pairs(row: list[int]) -> list[tuple[int, int, int, int]]:
    return [(a, row[a], b, row[b]) for a, b in itertools.combinations(range(len(row)), 2)]


def _gain(row: list[int], f: int, v: int, uncovered: set[tuple[int, int, int, int]]) -> int:
    total = 0
    for g, w in enumerate(row):
        if w < 0 or g == f:
            continue
        pair = (g, w, f, v) if g < f else (f, v, g, w)
        total += pair in uncovered
    return total
