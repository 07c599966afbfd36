"""Running cells: one cell is an ordinary training run (the trainer, in this process or a Ray worker) in the grid's
folder; a grid runs its unfinished cells one after another here, or as Ray tasks (see ray_runner.py).

A finished cell is skipped, a cell with a checkpoint resumes from it, and a failed cell is recorded (with the
trainer's one-line reason) without stopping the others. SIGINT / SIGTERM stop the grid after the current cell saved
its checkpoint.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from convnn.thread_policy import numba_thread_count_fixed

from .cells import Cell
from .folder import GridFolder

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


class GridInterrupted(Exception):
    """A signal stopped the grid; the cell it stopped keeps its checkpoint and resumes on the next run."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def thread_limit(threads: Optional[int], backend: str) -> Iterator[None]:
    """Run with `threads` compute threads: the environment variables (for libraries loaded from now on) and
    torch's intra-op pool (when torch is, or will be, the backend); restored afterwards."""
    if not threads:
        yield
        return
    # NUMBA_NUM_THREADS only while numba is not loaded: once its workers run, numba refuses another value at
    # the next compile, so a later cell keeps the count the first numba cell started with
    names = [k for k in THREAD_VARS if not (k == "NUMBA_NUM_THREADS" and numba_thread_count_fixed())]
    saved_env = {k: os.environ.get(k) for k in names}
    os.environ.update({k: str(threads) for k in names})
    torch = None
    if "torch" in sys.modules or backend in ("auto", "torch"):
        try:
            import torch
        except ImportError:
            torch = None
    saved_torch = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch is not None and saved_torch is not None:
            torch.set_num_threads(saved_torch)
        for k, v in saved_env.items():
            if k == "NUMBA_NUM_THREADS" and numba_thread_count_fixed():
                continue  # numba loaded during the cell and started its workers with this value
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _set_aside(folder: GridFolder, cell: Cell) -> Optional[Path]:
    """A run folder with files but no checkpoint (a cell that failed before its first save) cannot be resumed and
    would be refused by a new run: move it to discarded/ (kept for inspection) and return where it went."""
    run_dir = folder.run_dir(cell.id)
    if not run_dir.is_dir() or folder.resumable(cell) or not any(p.name != ".lock" for p in run_dir.iterdir()):
        return None
    target = folder.root / "discarded" / f"{cell.id}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), str(target))
    return target


def run_cell(root: str, cell_data: dict[str, Any], backend: str = "auto", data_dir: Optional[str] = None,
             threads: Optional[int] = None) -> dict[str, Any]:
    """Train one cell in the grid folder `root` (fresh, or resumed from its checkpoint); a dict saying how it ended.

    Exceptions of the run become {'state': 'failed', 'error': one line}; a signal (SIGINT/SIGTERM) is re-raised as
    GridInterrupted after the trainer saved its checkpoint. Importable by Ray workers (no closure).
    """
    from ..cli import describe_error
    from ..train import Trainer
    from ..train.config import build_config
    from ..train.loop import TrainingInterrupted

    folder = GridFolder(Path(root))
    cell = Cell.from_json(cell_data)
    if folder.finished(cell):
        return {"id": cell.id, "state": "done", "skipped": True}
    t0 = time.time()
    moved = _set_aside(folder, cell)
    resume = str(folder.run_dir(cell.id)) if folder.resumable(cell) else None
    folder.record(cell.id, "running", resumed=resume is not None)
    log_path = folder.log_file(cell.id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log_file:
        def log(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()

        if moved is not None:
            log(f"an earlier attempt left files but no checkpoint; moved them to {moved}")
        try:
            settings = {**cell.overrides, "out_dir": str(folder.root / "cells"), "run_name": cell.id,
                        "progress": False, "backend": backend}
            if data_dir is not None:
                settings["data_dir"] = data_dir
            cfg = build_config(cell.preset, None, settings)
            with thread_limit(threads, backend):
                result = Trainer(cfg, resume=resume, log=log).run()
        except (TrainingInterrupted, KeyboardInterrupt) as err:
            line, code = describe_error(err, "train")
            log(line)
            folder.record(cell.id, "interrupted", error=line)
            raise GridInterrupted(f"cell {cell.id}: {line.split(': ', 1)[-1]}", code) from err
        except Exception as err:
            line, _ = describe_error(err, "train")
            reason = line.split("error: ", 1)[-1]
            log(line)
            folder.record(cell.id, "failed", error=reason, seconds=time.time() - t0)
            return {"id": cell.id, "state": "failed", "error": reason, "seconds": time.time() - t0}
    folder.record(cell.id, "done", seconds=time.time() - t0, best=result.best)
    return {"id": cell.id, "state": "done", "seconds": time.time() - t0, "resumed": resume is not None,
            "best_val_top1": result.best.get("val_top1")}


def run_in_process(folder: GridFolder, cells: list[Cell], *, backend: str, data_dir: Optional[str],
                   threads: Optional[int], on_result: Callable[[Cell, dict[str, Any]], None]) -> None:
    """Run the cells one after another in this process."""
    for cell in cells:
        on_result(cell, run_cell(str(folder.root), cell.to_json(), backend, data_dir, threads))
