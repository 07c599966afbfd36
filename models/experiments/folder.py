"""A grid's folder: grid.json (the cells), cells/<id>/ (ordinary run folders), status/<id>.json, logs/, report/.

A cell's state is read from its run folder first (summary.json: done; checkpoints/last: resumable), then from its
status record (failed, or running on some host).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from .cells import Cell

STATES = ("done", "running", "interrupted", "failed", "pending")


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class GridFolder:
    """The folder of one grid at one scale."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    @property
    def manifest(self) -> Path:
        return self.root / "grid.json"

    def run_dir(self, cell_id: str) -> Path:
        return self.root / "cells" / cell_id

    def status_file(self, cell_id: str) -> Path:
        return self.root / "status" / f"{cell_id}.json"

    def log_file(self, cell_id: str) -> Path:
        return self.root / "logs" / f"{cell_id}.log"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    # ------------------------------------------------------------------ the manifest
    def write_manifest(self, grid_name: str, scale: str, source: str, cells: list[Cell],
                       grid_data: Optional[dict[str, Any]] = None) -> None:
        """Record the grid's cells; a folder that already holds another grid or scale is refused. Cells already
        recorded keep their settings (a later run may add cells, e.g. another dataset or seed)."""
        known: dict[str, Any] = {}
        if self.manifest.exists():
            old = self.read_manifest()
            if (old.get("grid"), old.get("scale")) != (grid_name, scale):
                raise ValueError(f"{self.root} holds grid {old.get('grid')!r} at scale {old.get('scale')!r}, not "
                                 f"{grid_name!r} at {scale!r}; choose another --out-dir")
            known = {c["id"]: c for c in old["cells"]}
            for cell in cells:
                if cell.id in known and known[cell.id]["overrides"] != _jsonable(cell.overrides):
                    raise ValueError(f"cell {cell.id} in {self.root} was recorded with other settings "
                                     f"({_diff(known[cell.id]['overrides'], cell.overrides)}); the grid file or "
                                     f"--set changed since: use another --out-dir, or remove that cell's folder "
                                     f"to rerun it")
        for cell in cells:
            known.setdefault(cell.id, cell.to_json())
        atomic_write_json(self.manifest, {"grid": grid_name, "scale": scale, "source": source,
                                          "grid_file": grid_data or {}, "cells": list(known.values())})

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest.exists():
            raise FileNotFoundError(f"{self.root} holds no grid (no grid.json); run `convnn experiment run` first")
        return json.loads(self.manifest.read_text())

    def cells(self) -> list[Cell]:
        return [Cell.from_json(c) for c in self.read_manifest()["cells"]]

    # ------------------------------------------------------------------ status records
    def record(self, cell_id: str, state: str, **info: Any) -> None:
        atomic_write_json(self.status_file(cell_id), {"state": state, "time": time.time(),
                                                      "host": socket.gethostname(), "pid": os.getpid(), **info})

    def read_record(self, cell_id: str) -> Optional[dict[str, Any]]:
        path = self.status_file(cell_id)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    # ------------------------------------------------------------------ state
    def finished(self, cell: Cell) -> bool:
        """The run wrote summary.json after its last epoch (and has as many epochs as the cell asks for)."""
        run_dir = self.run_dir(cell.id)
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
            config = json.loads((run_dir / "config.json").read_text())
        except (FileNotFoundError, ValueError):
            return False
        last = summary.get("last") or {}
        return last.get("epoch", -1) + 1 >= int(config.get("epochs", 0)) > 0

    def resumable(self, cell: Cell) -> bool:
        return (self.run_dir(cell.id) / "checkpoints" / "last.safetensors").exists()

    def state(self, cell: Cell) -> tuple[str, str]:
        """(one of STATES, a short note) for a cell."""
        if self.finished(cell):
            return "done", ""
        record = self.read_record(cell.id) or {}
        if record.get("state") == "running":
            if record.get("host") != socket.gethostname():
                return "running", f"on {record.get('host')}"
            if _alive(record.get("pid")) and self._locked(cell):
                return "running", f"pid {record.get('pid')}"
        if self.resumable(cell):
            return "interrupted", "resumes from its checkpoint"
        if record.get("state") == "failed":
            return "failed", str(record.get("error", ""))
        return "pending", ""

    def _locked(self, cell: Cell) -> bool:
        """Whether a live process holds (or is about to hold) the run folder's lock."""
        lock = self.run_dir(cell.id) / ".lock"
        if not lock.exists():
            return True  # not yet created: the cell is starting (its data may be loading)
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            return True
        return _alive(pid)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    new = _jsonable(new)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4])
