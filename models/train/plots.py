"""PNG curves of a run: loss (per step and per epoch) and top-1 accuracy (train and validation)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional

from .checkpoint import atomic_write_bytes


def plot_curves(path: Path, history: list[dict[str, Any]], steps: list[dict[str, Any]], title: str) -> Optional[Path]:
    """Write curves.png; returns None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        per_epoch = max(1, max(s["step"] for s in steps) / max(1, max(s["epoch"] for s in steps) + 1))
        ax_loss.plot([s["step"] / per_epoch for s in steps], [s["loss"] for s in steps], color="0.75", lw=0.8,
                     label="train (per step)")
    if history:
        epochs = [h["epoch"] + 1 for h in history]
        ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (epoch mean)")
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
        ax_acc.plot(epochs, [100 * h["train_top1"] for h in history], "o-", label="train top-1")
        ax_acc.plot(epochs, [100 * h["val_top1"] for h in history], "s-", label="validation top-1")
        ax_acc.plot(epochs, [100 * h["val_top5"] for h in history], "^--", label="validation top-5", alpha=0.6)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
