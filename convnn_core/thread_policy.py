"""Thread-pool defaults set when convnn is imported, so numba's workers and BLAS's stop taking turns spinning.

After each parallel region OpenMP workers (numba's, and torch's, which share one libgomp) busy-wait
by default, and OpenBLAS's workers spin for about 2^28 cycles after each call, on the cores the next
kernel needs. Sleeping at once made a numba VGG-11 training step 1.7-2x faster on 2 cores. These are
defaults only (the environment wins), and a library reads them when it loads: one loaded before
convnn keeps its own behaviour, which `describe()` reports.
"""
from __future__ import annotations

import os
import sys

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
_READERS = ("numpy", "torch", "numba", "scipy")  # libraries whose thread pools read these when they load

for _name, _value in DEFAULTS.items():
    os.environ.setdefault(_name, _value)
LOADED_BEFORE = tuple(m for m in _READERS if m in sys.modules)


def describe() -> str:
    """The values in effect and which libraries had loaded before convnn set them (those kept their own)."""
    values = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in DEFAULTS)
    if LOADED_BEFORE:
        return f"{values} (loaded before convnn, so not affected: {', '.join(LOADED_BEFORE)})"
    return values


def numba_thread_count_fixed() -> bool:
    """Whether NUMBA_NUM_THREADS must stay as it is: once numba is loaded it re-reads the variable at every
    compile and refuses any other value after its workers start, so code that sets thread counts for a
    while (benchmarks, experiment cells) must neither set it nor restore it then."""
    return "numba" in sys.modules
