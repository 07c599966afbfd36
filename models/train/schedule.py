"""Learning-rate schedules as a multiplier of the base LR per optimizer step."""
from __future__ import annotations

import math


def lr_scale(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier for the update that produces step `step + 1` (0-based step): linear warmup, then constant or
    cosine decay to 0 over the remaining steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"schedule={schedule!r} is not allowed; choose constant or cosine")
