"""Judge settings from a YAML file and command-line flags (shared by the commands that judge)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rlhflab.config_feedback import JudgeConfig
from rlhflab.errors import ConfigError


def load_judge_config(path: str | None) -> JudgeConfig:
    """A JudgeConfig from a YAML mapping of its fields (or a mapping under `judge:`); defaults
    when `path` is None."""
    if path is None:
        return JudgeConfig()
    from rlhflab.config import _build, read_yaml

    p = Path(path)
    tree = read_yaml(p, "--judge-config")
    if isinstance(tree, dict) and isinstance(tree.get("judge"), dict):
        tree = tree["judge"]
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: expected a mapping of judge settings (model, mode, template, ...)")
    try:
        return _build(JudgeConfig, tree, "judge.")
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def judge_from_cli(path: str | None, default_model: str, **flags: Any) -> JudgeConfig:
    """The YAML settings (if any) with the flags that were given (not None) on top. Where neither
    names them, the judge model is `default_model` (the policy judging itself) and the mode is
    pairwise (what labeling preference pairs needs)."""
    cfg = load_judge_config(path)
    given = _yaml_keys(path)
    if "model" not in given and flags.get("model") is None:
        flags["model"] = default_model
    if "mode" not in given and flags.get("mode") is None:
        flags["mode"] = "pairwise"
    return replace(cfg, **{k: v for k, v in flags.items() if v is not None})


def _yaml_keys(path: str | None) -> set[str]:
    if path is None:
        return set()
    from rlhflab.config import read_yaml

    tree = read_yaml(path, "--judge-config")
    if isinstance(tree, dict) and isinstance(tree.get("judge"), dict):
        tree = tree["judge"]
    return set(tree) if isinstance(tree, dict) else set()
