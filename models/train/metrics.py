"""Per-sample accuracy and the run's metric files: JSONL per step, CSV per epoch (both rewritten atomically on resume)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .checkpoint import atomic_write_text

EPOCH_FIELDS = ("epoch", "step", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
                "lr", "epoch_seconds", "images_per_second")


def topk_correct(logits: np.ndarray, labels: np.ndarray, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the k largest logits (ties counted by the stable order)."""
    order = np.argsort(-logits, axis=1, kind="stable")
    out = {}
    for k in ks:
        k_eff = min(k, logits.shape[1])
        out[k] = int(np.sum(np.any(order[:, :k_eff] == labels[:, None], axis=1)))
    return out


class MetricsFiles:
    """metrics.jsonl (one record per step) and epochs.csv (one row per epoch) in the run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "epochs.csv"

    def truncate_after(self, step: int) -> None:
        """Drop step records past `step` (a crashed run may have logged steps that the checkpoint does not hold)."""
        if not self.jsonl.exists():
            return
        kept = []
        for line in self.jsonl.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                break  # a line cut by the crash
        atomic_write_text(self.jsonl, "".join(k + "\n" for k in kept))

    def step(self, record: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")

    def epochs(self, history: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EPOCH_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_text(self.csv, buf.getvalue())

    def read_steps(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
