"""Scoped thread limits (experiment cells, in-process benchmarks) never change NUMBA_NUM_THREADS under a
running numba: numba re-reads it at every compile and refuses a new value once its workers run."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

SCRIPT = r"""
import os
os.environ["NUMBA_NUM_THREADS"] = "1"
import numpy as np
from numba import njit, prange
from convnn.models.experiments.runner import thread_limit
from convnn.bench.threads import fix_thread_count, restore_thread_state, snapshot_thread_state

@njit(parallel=True)
def first(a):
    for i in prange(a.shape[0]):
        a[i] += 1.0
    return a

first(np.zeros(8))  # numba's workers start with 1 thread
with thread_limit(2, "numba"):
    @njit
    def inside(a):
        return a * 2.0
    inside(np.ones(2))
state = snapshot_thread_state()
fix_thread_count(2)
restore_thread_state(state)

@njit
def after(a):
    return a + 1.0

after(np.ones(2))
print("ok", os.environ["NUMBA_NUM_THREADS"])
"""


def test_scoped_thread_limits_leave_a_running_numba_alone() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "1"]
