"""Where a run's scalars go besides metrics.jsonl: TensorBoard, Weights & Biases, MLflow (docs/logging.md).

Each tracker is imported only when its config enables it (`import rlhflab` and a run without
them never import wandb or mlflow). A resumed run continues the same tracker run: the W&B run id
and the MLflow run id are kept in the run directory (`wandb_id`, `mlflow_run_id`), (TensorBoard purges the
steps after the resume point). A tracker that fails while logging prints one warning
and is switched off; it never stops the training.
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

MAX_PARAM_CHARS = 500  # MLflow rejects longer parameter values


class Tracker(Protocol):
    name: str

    def log(self, row: dict[str, float], step: int) -> None: ...

    def close(self, ok: bool) -> None: ...


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a metrics row, without `step`."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-5}} -> {"optim.lr": 1e-5}; lists become strings."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree if isinstance(tree, (int, float, str, bool)) or tree is None else str(tree)}


def _run_id(path: Path, make: Any) -> str:
    """The id kept in `path`, or a new one from `make()` written there (for resuming the same run)."""
    if path.exists():
        return path.read_text().strip()
    value = make()
    path.write_text(value + "\n")
    return value


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, out_dir: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self._w = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)

    def log(self, row: dict[str, float], step: int) -> None:
        for key, value in row.items():
            self._w.add_scalar(key, value, step)

    def close(self, ok: bool) -> None:
        self._w.close()


class WandbTracker:
    name = "wandb"

    def __init__(self, cfg: Any, config_tree: dict[str, Any], out_dir: Path):
        import wandb

        w = cfg.wandb
        self._wandb = wandb
        run_id = _run_id(out_dir / "wandb_id", lambda: secrets.token_hex(6))
        self._run = wandb.init(project=w.project, entity=w.entity, name=w.name or out_dir.name, group=w.group,
                               tags=list(w.tags), mode=w.mode, dir=str(out_dir), config=config_tree, id=run_id,
                               resume="allow")

    def log(self, row: dict[str, float], step: int) -> None:
        self._run.log(row, step=step)

    def close(self, ok: bool) -> None:
        self._run.finish(exit_code=0 if ok else 1)


class MlflowTracker:
    name = "mlflow"

    def __init__(self, cfg: Any, config_tree: dict[str, Any], out_dir: Path):
        import mlflow

        m = cfg.mlflow
        self._mlflow = mlflow
        if m.tracking_uri:
            mlflow.set_tracking_uri(m.tracking_uri)
        elif not os.environ.get("MLFLOW_TRACKING_URI"):  # MLflow 3 refuses new file stores: a SQLite file
            mlflow.set_tracking_uri(f"sqlite:///{(out_dir / 'mlflow.db').resolve()}")
        mlflow.set_experiment(m.experiment)
        id_file = out_dir / "mlflow_run_id"
        tags = dict(t.split("=", 1) if "=" in t else (t, "true") for t in m.tags)
        if id_file.exists():
            self._run = mlflow.start_run(run_id=id_file.read_text().strip())
        else:
            self._run = mlflow.start_run(run_name=m.run_name or out_dir.name, tags=tags)
            id_file.write_text(self._run.info.run_id + "\n")
            params = {k: ("None" if v is None else str(v))[:MAX_PARAM_CHARS] for k, v in flatten(config_tree).items()}
            mlflow.log_params(params)

    def log(self, row: dict[str, float], step: int) -> None:
        self._mlflow.log_metrics(row, step=step)

    def close(self, ok: bool) -> None:
        self._mlflow.end_run(status="FINISHED" if ok else "FAILED")


def make_trackers(cfg: Any, out_dir: Path, resume_step: int | None, console: Console | None = None) -> list[Any]:
    """The trackers `cfg` enables (TensorBoard by default). A tracker that cannot start prints a
    warning and is left out; missing packages were already refused by config validation."""
    from rlhflab.config import to_dict

    console = console or Console(stderr=True)
    out: list[Any] = []
    tree = to_dict(cfg)
    makers = [("tensorboard", cfg.tensorboard, lambda: TensorBoardTracker(out_dir, resume_step)),
              ("wandb", cfg.wandb is not None, lambda: WandbTracker(cfg, tree, out_dir)),
              ("mlflow", cfg.mlflow is not None, lambda: MlflowTracker(cfg, tree, out_dir))]
    for name, enabled, make in makers:
        if not enabled:
            continue
        try:
            out.append(make())
        except ImportError as e:
            console.print(f"[yellow]warning:[/] {name} logging is off: {e}")
        except Exception as e:  # a tracker's server or login problem must not stop training
            console.print(f"[yellow]warning:[/] {name} logging could not start ({type(e).__name__}: {e}); going on without it")
    return out


class TrackerSet:
    """Fans rows out to trackers; a tracker that raises is reported once and dropped."""

    def __init__(self, trackers: list[Any], console: Console | None = None):
        self.trackers, self.console = list(trackers), console or Console(stderr=True)

    def _each(self, what: str, fn: Any) -> None:
        for t in list(self.trackers):
            try:
                fn(t)
            except Exception as e:
                self.console.print(f"[yellow]warning:[/] {t.name} {what} failed ({type(e).__name__}: {e}); "
                                   f"{t.name} logging is off for the rest of the run")
                self.trackers.remove(t)

    def log(self, row: dict[str, Any]) -> None:
        step, values = int(row["step"]), scalars(row)
        self._each("logging", lambda t: t.log(values, step))

    def close(self, ok: bool = True) -> None:
        for t in list(self.trackers):
            try:
                t.close(ok)
            except Exception as e:
                self.console.print(f"[yellow]warning:[/] closing {t.name} failed ({type(e).__name__}: {e})")
        self.trackers = []
