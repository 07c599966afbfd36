"""The numba vector steps (backends/numba/simd.py) against plain NumPy: lane-wise max, and the at-or-above
mask, including a float64 bar between two float32 values (rounded, but no entry at or above it is lost)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
from numba import njit  # noqa: E402

from convnn.backends.numba.simd import LANES, at_least_mask, lane_max_into  # noqa: E402


@njit(cache=False)
def _lane_max(acc, src, idx):
    lane_max_into(acc, src, idx)
    return acc


@njit(cache=False)
def _mask(src, idx, bar):
    return at_least_mask(src, idx, bar)


def _bits(mask: int) -> list[bool]:
    return [bool(mask >> lane & 1) for lane in range(LANES)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lane_max_into_is_the_lane_wise_max_at_any_offset(dtype):
    rng = np.random.default_rng(0)
    src = rng.standard_normal(3 * LANES + 5).astype(dtype)
    src[7] = -np.inf
    for idx in (0, 5, 2 * LANES + 5):
        acc = rng.standard_normal(LANES).astype(dtype)
        want = np.maximum(acc, src[idx:idx + LANES])
        np.testing.assert_array_equal(_lane_max(acc.copy(), src, idx), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_at_least_mask_marks_the_entries_at_or_above_the_bar(dtype):
    rng = np.random.default_rng(1)
    src = rng.standard_normal(2 * LANES + 3).astype(dtype)
    src[4] = src[9]  # a tie with the bar
    for idx in (0, 3, LANES + 3):
        bar = float(src[9])
        assert _bits(int(_mask(src, idx, bar))) == list(src[idx:idx + LANES] >= bar)
    assert int(_mask(src, 0, -np.inf)) == (1 << LANES) - 1
    assert int(_mask(src, 0, np.inf)) == 0


def test_a_float64_bar_between_float32_values_loses_no_entry():
    x = np.float32(0.3)
    above = np.nextafter(x, np.float32(1))
    src = np.array([x, above] * (LANES // 2), dtype=np.float32)
    for bar in (float(x), float(x) + 1e-12, float(above) - 1e-12, float(above)):
        kept = _bits(int(_mask(src, 0, bar)))
        assert all(k for k, v in zip(kept, src) if float(v) >= bar)
