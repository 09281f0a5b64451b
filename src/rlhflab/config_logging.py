"""Settings of the optional experiment trackers (Weights & Biases, MLflow); docs/logging.md.

Both are off unless their section is present in the run config. Whether the package is
installed is checked before any model loads (without importing it), so a missing tracker stops
the run in a second with the command that installs it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Literal

from rlhflab.errors import ConfigError


@dataclass(frozen=True)
class WandbConfig:
    project: str = "rlhflab"
    """W&B project to log to."""
    entity: str | None = None
    """W&B entity (user or team); None = the logged-in default."""
    name: str | None = None
    """Run name; None = the last part of output_dir."""
    group: str | None = None
    """Optional run group (e.g. one sweep)."""
    tags: tuple[str, ...] = ()
    """Run tags."""
    mode: Literal["online", "offline", "disabled"] = "online"
    """online (needs `wandb login` or WANDB_API_KEY), offline (files under output_dir/wandb, sync them later
    with `wandb sync`), or disabled."""


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None = None
    """MLflow tracking URI; None = MLFLOW_TRACKING_URI if set, else a SQLite store, output_dir/mlflow.db
    (MLflow 3 no longer creates file stores; SQLite needs sqlalchemy, which full `mlflow` installs)."""
    experiment: str = "rlhflab"
    """Experiment name (created when missing)."""
    run_name: str | None = None
    """Run name; None = the last part of output_dir."""
    tags: tuple[str, ...] = ()
    """Tags, each `key=value` or a bare key (set to "true")."""


TRACKER_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(wandb: WandbConfig | None, mlflow: MlflowConfig | None,
                   find_spec: Any = importlib.util.find_spec) -> None:
    """Each enabled tracker's package must be importable; checked without importing it."""
    for key, section in (("wandb", wandb), ("mlflow", mlflow)):
        if section is None:
            continue
        if find_spec(TRACKER_PACKAGES[key]) is None:
            raise ConfigError(f"`{key}:` is set in the config, but the {key} package is not installed. "
                              f"Install it (`.venv/bin/pip install {key}`) or remove the `{key}:` section.")
    if mlflow is not None:
        for tag in mlflow.tags:
            if not tag or tag.startswith("="):
                raise ConfigError(f"mlflow.tags: '{tag}' is not `key=value` or a key")
