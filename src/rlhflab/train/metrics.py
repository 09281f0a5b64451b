"""Where metrics go: metrics.jsonl (every step), the trackers (TensorBoard, W&B, MLflow), and a rich
progress bar with ETA."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOOP_METRIC_DOCS = {
    "step": "optimizer steps completed (1-based)",
    "loss": "sum over the step's micro-batches of the loss summed over units, / units in the step",
    "lr": "learning rate used for this step",
    "grad_norm": "global L2 norm of the gradient before clipping, sqrt(sum_p ||g_p||^2)",
    "units": "normalization units in the step (loss tokens for SFT, pairs for reward models)",
    "examples": "examples (sequences, packed rows or pairs) in the step",
    "skipped": "1 if the step was skipped by the non-finite guard (nonfinite: skip), else 0",
    "time/step_s": "wall-clock seconds of the step (forward, backward, optimizer)",
    "throughput/tokens_per_s": "input tokens (padding excluded) processed per second in the step",
    "epoch": "fractional epoch: examples drawn so far / examples in the training set",
}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible
    return value


class MetricsWriter:
    """Appends one JSON object per optimizer step; mirrors the scalars to the enabled trackers
    (TensorBoard by default, W&B and MLflow when configured: train/trackers.py)."""

    def __init__(self, out_dir: Path, cfg: Any, resume_step: int | None, console: Any = None):
        from rlhflab.train.trackers import TrackerSet, make_trackers

        from rlhflab.report.runlog import drop_rows_after

        self.path = out_dir / "metrics.jsonl"
        if resume_step is not None:  # drop rows written after the checkpoint we resume from (the run was killed later)
            drop_rows_after(self.path, resume_step)
        else:
            self.path.unlink(missing_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self.trackers = TrackerSet(make_trackers(cfg, out_dir, resume_step, console), console)

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._file.flush()
        self.trackers.log(row)

    def close(self, ok: bool = True) -> None:
        self._file.close()
        self.trackers.close(ok)


class NullWriter:
    """The writer of ranks other than 0: a multi-process run logs once, from rank 0."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        pass


def make_progress(console: Console, label: str = "train") -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
