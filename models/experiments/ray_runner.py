"""Grid cells as Ray tasks: a local Ray instance on this machine (`--ray`) or an existing cluster
(`--ray-address ADDR`). Each cell is one task asking for its resources (N CPUs, or GPUs); Ray schedules them.
The tasks write into the same grid folder as an in-process run (on a cluster it must be on a shared file system).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from .cells import Cell
from .folder import GridFolder
from .runner import GridInterrupted, run_cell

OBJECT_STORE_BYTES = 100 * 2 ** 20  # the tasks pass small dicts only


def import_ray() -> Any:
    """The ray module, or an ImportError naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("running a grid on Ray needs the 'ray' package: pip install 'convnn[ray]' (or run without "
                          "--ray, one cell after another in this process)") from err
    return ray


def run_on_ray(folder: GridFolder, cells: list[Cell], *, backend: str, data_dir: Optional[str],
               threads: Optional[int], cpus_per_cell: float, gpus_per_cell: float, address: Optional[str],
               local_cpus: Optional[int], on_result: Callable[[Cell, dict[str, Any]], None]) -> None:
    """Submit every cell as a task and report each result as it arrives; a task that raises is a failed cell."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        if address is not None:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=local_cpus, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                     log_to_driver=False)
    try:
        task = ray.remote(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=0)(run_cell)
        pending = {task.remote(str(folder.root.resolve()), cell.to_json(), backend, data_dir, threads): cell
                   for cell in cells}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    cell = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as err:  # the task raised (GridInterrupted in a worker, or a lost worker)
                        cause = getattr(err, "cause", None)
                        if isinstance(cause, GridInterrupted):
                            raise cause from err
                        reason = " ".join(str(cause or err).split())[-500:]
                        folder.record(cell.id, "failed", error=reason)
                        result = {"id": cell.id, "state": "failed", "error": reason}
                    on_result(cell, result)
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
    finally:
        if started:
            ray.shutdown()
