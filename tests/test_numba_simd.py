"""The numba vector steps (backends/numba/simd.py) against plain NumPy: lane-wise max, the at-or-above mask
(including a float64 bar between two float32 values: rounded, but no entry at or above it is lost), the
k-th largest of one vector, and the ranks of up to one vector of entries, ties and -inf included."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
from numba import njit  # noqa: E402

from convnn.backends.numba.simd import (LANES, at_least_each_mask, at_least_mask, kth_largest_lane,  # noqa: E402
                                        lane_max_into, rank_counts)


@njit(cache=False)
def _lane_max(acc, acc_idx, src, idx):
    lane_max_into(acc, acc_idx, src, idx)
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
        acc = rng.standard_normal(LANES + 3).astype(dtype)
        want = acc.copy()
        want[3:] = np.maximum(acc[3:], src[idx:idx + LANES])
        np.testing.assert_array_equal(_lane_max(acc.copy(), 3, src, idx), want)


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


@njit(cache=False)
def _each(src, idx, bars, bidx):
    return at_least_each_mask(src, idx, bars, bidx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_at_least_each_mask_compares_entry_by_entry(dtype):
    rng = np.random.default_rng(2)
    src = rng.standard_normal(LANES + 4).astype(dtype)
    bars = rng.standard_normal(LANES + 2).astype(dtype)
    bars[5] = src[4 + 5]  # a tie
    assert _bits(int(_each(src, 4, bars, 2 - 2))) == list(src[4:4 + LANES] >= bars[:LANES])
    assert _bits(int(_each(src, 0, bars, 2))) == list(src[:LANES] >= bars[2:2 + LANES])


@njit(cache=False)
def _kth(acc, k):
    return kth_largest_lane(acc, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kth_largest_lane_is_the_kth_of_the_sorted_vector(dtype):
    rng = np.random.default_rng(3)
    for trial in range(200):
        acc = rng.standard_normal(LANES).astype(dtype)
        if trial % 3 == 0:
            acc = np.round(acc).astype(dtype)  # many ties
        if trial % 4 == 0:
            acc[rng.integers(0, LANES, 5)] = -np.inf  # lanes that saw no entry
        want = np.sort(acc)[::-1]
        for k in range(1, LANES + 1):
            assert _kth(acc, k) == want[k - 1], (acc, k)


@njit(cache=False)
def _ranks(vals, n, ranks):
    rank_counts(vals, n, ranks)
    return ranks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_counts_orders_by_value_then_position(dtype):
    rng = np.random.default_rng(4)
    for trial in range(300):
        n = int(rng.integers(0, LANES + 1))
        vals = rng.standard_normal(LANES).astype(dtype)
        if trial % 2:
            vals = np.round(vals * 2).astype(dtype)  # ties, which the earlier entry wins
        vals[n:] = np.inf  # past n: ignored, whatever they hold
        order = sorted(range(n), key=lambda e: (-vals[e], e))
        want = np.empty(n, dtype=np.int64)
        want[order] = np.arange(n)
        got = _ranks(vals, n, np.full(LANES, -1, dtype=np.int64))
        np.testing.assert_array_equal(got[:n], want)
