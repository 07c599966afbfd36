"""Fix the CPU thread count of every numerical library before and after they load, and record what was set."""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

from convnn.thread_policy import numba_thread_count_fixed

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")

_LIMITERS: list[Any] = []  # threadpoolctl limiters kept alive for the life of the process


def resolve_threads(threads: Optional[int]) -> int:
    """The thread count to use: the one asked for, else every core of this machine."""
    if threads is None:
        return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r} must be a positive int (or None for all {os.cpu_count()} cores)")
    return threads


def fix_thread_count(threads: Optional[int]) -> dict[str, Any]:
    """Set the thread count of BLAS/OpenMP, numba, torch and XLA to `threads`; return what was applied.

    Environment variables only reach libraries not loaded yet, so this runs before any backend is
    imported; libraries already loaded are capped through their own calls (threadpoolctl, torch,
    numba).
    """
    n = resolve_threads(threads)
    from convnn.thread_policy import describe

    applied: dict[str, Any] = {"threads": n, "thread_policy": describe()}
    for var in THREAD_ENV_VARS:
        if var == "NUMBA_NUM_THREADS" and numba_thread_count_fixed():
            continue
        os.environ[var] = str(n)
    if n == 1 and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "intra_op_parallelism_threads" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1").strip()
        applied["xla"] = "single thread (XLA_FLAGS)"
    else:
        applied["xla"] = "XLA's own pool (not capped below the core count)"
    try:
        from threadpoolctl import threadpool_limits

        _LIMITERS.append(threadpool_limits(limits=n))
        applied["threadpoolctl"] = n
    except ImportError:
        applied["threadpoolctl"] = "not installed"
    try:
        import torch

        torch.set_num_threads(n)
        applied["torch"] = torch.get_num_threads()
    except ImportError:
        applied["torch"] = "not installed"
    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        applied["numba"] = numba.get_num_threads()
    else:
        applied["numba"] = f"NUMBA_NUM_THREADS={n}"
    return applied


def snapshot_thread_state() -> dict[str, Any]:
    """What fix_thread_count changes (environment, torch threads, live limiters), to undo it later."""
    state: dict[str, Any] = {"env": {v: os.environ.get(v) for v in THREAD_ENV_VARS + ("XLA_FLAGS",)},
                             "limiters": len(_LIMITERS)}
    if "torch" in sys.modules:
        state["torch"] = sys.modules["torch"].get_num_threads()
    if "numba" in sys.modules:
        state["numba"] = sys.modules["numba"].get_num_threads()
    return state


def restore_thread_state(state: dict[str, Any]) -> None:
    """Undo fix_thread_count back to a snapshot (used by tests that run the bench in-process)."""
    while len(_LIMITERS) > state["limiters"]:
        _LIMITERS.pop().restore_original_limits()
    for var, value in state["env"].items():
        if var == "NUMBA_NUM_THREADS" and numba_thread_count_fixed():
            continue  # numba may have started its workers with the value set meanwhile
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    if "torch" in state:
        sys.modules["torch"].set_num_threads(state["torch"])
    if "numba" in state:
        sys.modules["numba"].set_num_threads(state["numba"])
