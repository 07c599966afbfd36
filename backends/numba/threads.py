"""Thread control: one numba thread count for every kernel and BLAS held to one thread inside them.

Numba's pool and OpenBLAS's pthreads fighting over the same cores costs 2-3x (numba#6933), so a
parallel region caps BLAS to one thread (threadpoolctl) and restores it on exit. The thread count
is NUMBA_NUM_THREADS by default, or the backend's `threads=` option (at most NUMBA_NUM_THREADS).

Numba's OpenMP workers and OpenBLAS's would also spin after every call on the cores the other needs;
importing convnn sets defaults that make them sleep instead (convnn/thread_policy.py).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import numba

_STATE = {"threads": None, "controller": None}


def configure(threads: Optional[int]) -> int:
    """Set the thread count the kernels run with (None: NUMBA_NUM_THREADS); return it."""
    limit = int(numba.config.NUMBA_NUM_THREADS)
    if threads is None:
        threads = limit
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r} must be an int >= 1")
    if threads > limit:
        raise ValueError(
            f"threads={threads} exceeds NUMBA_NUM_THREADS={limit}; set the environment variable "
            f"NUMBA_NUM_THREADS before importing numba to allow more"
        )
    _STATE["threads"] = threads
    return threads


def current_threads() -> int:
    """The thread count the kernels run with."""
    if _STATE["threads"] is None:
        configure(None)
    return int(_STATE["threads"])


def split_count(n_items: int) -> int:
    """How many independent accumulators a backward kernel splits n_items images into (one per thread)."""
    return max(1, min(n_items, current_threads()))


def _controller():
    if _STATE["controller"] is None:
        import scipy.linalg.cython_blas  # noqa: F401  (numba's np.dot calls this BLAS: load it so it is capped too)
        from threadpoolctl import ThreadpoolController

        _STATE["controller"] = ThreadpoolController()
    return _STATE["controller"]


@contextlib.contextmanager
def parallel_region() -> Iterator[None]:
    """Run numba kernels with the configured thread count and BLAS capped to one thread.

    Loop iterations (row blocks, images) are handed out one at a time rather than in one static
    split, so a thread slowed by other processes on the machine does not hold the others up.
    """
    numba.set_num_threads(current_threads())
    previous = numba.set_parallel_chunksize(1)
    try:
        with _controller().limit(limits=1, user_api="blas"):
            yield
    finally:
        numba.set_parallel_chunksize(previous)
