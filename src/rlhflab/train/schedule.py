"""Learning-rate schedules as pure functions of the optimizer step (nothing to checkpoint)."""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, max_steps: int, warmup_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then constant/linear/cosine decay
    to `min_lr_ratio * lr` at `max_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        factor = 1.0 - progress
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * factor)
