"""Experiment trackers: W&B and MLflow get the config and every step's scalars when enabled, are
never imported when not, resume the same tracker run, and a failing tracker never stops training.

The real packages are not installed in CI; recording stand-ins with the same call surface are put
in sys.modules (docs/logging.md lists the calls rlhflab makes)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
import types

import pytest
from rich.console import Console

from conftest import sft_rows, tiny_config_dict, write_jsonl
from rlhflab.config import config_from_dict
from rlhflab.config_logging import MlflowConfig, WandbConfig, check_trackers
from rlhflab.errors import ConfigError
from rlhflab.train.run import run
from rlhflab.train.trackers import flatten, scalars

QUIET = Console(quiet=True)


class _Blocker(importlib.abc.MetaPathFinder):
    """Fails any import of the named packages, so a test sees an unwanted import."""

    def __init__(self, names):
        self.names, self.tried = set(names), []

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.names:
            self.tried.append(fullname)
            raise ImportError(f"{fullname} must not be imported")
        return None


def _fake_wandb(calls, fail_log_at=None):
    mod = types.ModuleType("wandb")

    class Run:
        summary = {}

        def log(self, row, step):
            if fail_log_at == step:
                raise RuntimeError("server went away")
            calls.append(("log", step, dict(row)))

        def finish(self, exit_code=0):
            calls.append(("finish", exit_code))

    def init(**kw):
        calls.append(("init", kw))
        return Run()

    mod.init = init
    return mod


def _fake_mlflow(calls):
    mod = types.ModuleType("mlflow")
    mod.set_tracking_uri = lambda uri: calls.append(("uri", uri))
    mod.set_experiment = lambda name: calls.append(("experiment", name))

    def start_run(run_id=None, run_name=None, tags=None):
        calls.append(("start", run_id, run_name, tags))
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or "run42"))

    mod.start_run = start_run
    mod.log_params = lambda p: calls.append(("params", dict(p)))
    mod.log_metrics = lambda m, step: calls.append(("metrics", step, dict(m)))
    mod.end_run = lambda status: calls.append(("end", status))
    return mod


def _cfg(tiny_dir, tmp_path, **over):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(16))
    tree = tiny_config_dict(tiny_dir, tmp_path / "run", data={"train": str(data), "max_length": 64}, **over)
    return tree


def _installed(monkeypatch, **mods):
    for name, mod in mods.items():
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec answers from sys.modules
        monkeypatch.setitem(sys.modules, name, mod)


def test_no_tracker_package_is_imported_unless_enabled(tiny_dir, tmp_path, monkeypatch):
    blocker = _Blocker({"wandb", "mlflow"})
    monkeypatch.setattr(sys, "meta_path", [blocker] + sys.meta_path)
    for name in ("wandb", "mlflow"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    run(config_from_dict(_cfg(tiny_dir, tmp_path, max_steps=2)), QUIET)
    assert blocker.tried == []


def test_wandb_and_mlflow_get_config_and_every_step(tiny_dir, tmp_path, monkeypatch):
    wb, ml = [], []
    _installed(monkeypatch, wandb=_fake_wandb(wb), mlflow=_fake_mlflow(ml))
    cfg = config_from_dict(_cfg(tiny_dir, tmp_path, max_steps=3, wandb={"project": "p", "mode": "offline", "tags": ["x"]},
                                mlflow={"experiment": "e", "tags": ["team=rl", "smoke"]}))
    run(cfg, QUIET)
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    init = wb[0][1]
    assert init["project"] == "p" and init["mode"] == "offline" and init["tags"] == ["x"]
    assert len(init["id"]) == 12 and init["resume"] == "allow" and init["name"] == "run"
    assert init["config"]["optim"]["lr"] == cfg.optim.lr
    logged = [c for c in wb if c[0] == "log"]
    assert [c[1] for c in logged] == [1, 2, 3]
    assert logged[1][2]["loss"] == pytest.approx(rows[1]["loss"]) and "step" not in logged[1][2]
    assert wb[-1] == ("finish", 0)
    assert (out / "wandb_id").read_text().strip() == init["id"]

    assert ("uri", f"sqlite:///{(out / 'mlflow.db').resolve()}") in ml and ("experiment", "e") in ml
    start = next(c for c in ml if c[0] == "start")
    assert start == ("start", None, "run", {"team": "rl", "smoke": "true"})
    params = next(c[1] for c in ml if c[0] == "params")
    assert params["optim.lr"] == str(cfg.optim.lr) and params["algorithm"] == "sft"
    assert [c[1] for c in ml if c[0] == "metrics"] == [1, 2, 3]
    assert ml[-1] == ("end", "FINISHED")
    assert (out / "mlflow_run_id").read_text().strip() == "run42"


def test_resumed_run_continues_the_same_tracker_runs(tiny_dir, tmp_path, monkeypatch):
    wb, ml = [], []
    _installed(monkeypatch, wandb=_fake_wandb(wb), mlflow=_fake_mlflow(ml))
    tree = _cfg(tiny_dir, tmp_path, max_steps=4, checkpoint_every=2, wandb={"mode": "offline"}, mlflow={})
    run(config_from_dict(tree), QUIET, stop_at=2)
    wb.clear(), ml.clear()
    run(config_from_dict({**tree, "resume": True}), QUIET)
    first_id = (tmp_path / "run" / "wandb_id").read_text().strip()
    assert next(c[1] for c in wb if c[0] == "init")["id"] == first_id
    assert [c[1] for c in wb if c[0] == "log"] == [3, 4]
    assert next(c for c in ml if c[0] == "start")[1] == "run42"  # resumed by id
    assert not any(c[0] == "params" for c in ml)  # parameters are logged once, by the first run


def test_a_failing_tracker_is_dropped_and_training_goes_on(tiny_dir, tmp_path, monkeypatch):
    wb = []
    _installed(monkeypatch, wandb=_fake_wandb(wb, fail_log_at=2))
    result = run(config_from_dict(_cfg(tiny_dir, tmp_path, max_steps=3, wandb={"mode": "offline"})), QUIET)
    assert result.final_dir is not None and len(result.history) == 3
    assert [c[1] for c in wb if c[0] == "log"] == [1]  # off after the failure at step 2


def test_missing_package_is_a_config_error_before_any_model_loads():
    with pytest.raises(ConfigError, match="wandb package is not installed.*pip install wandb"):
        check_trackers(WandbConfig(), None, find_spec=lambda name: None)
    with pytest.raises(ConfigError, match="mlflow package"):
        check_trackers(None, MlflowConfig(), find_spec=lambda name: None)
    with pytest.raises(ConfigError, match="mlflow.tags"):
        check_trackers(None, MlflowConfig(tags=("=x",)), find_spec=lambda name: object())
    check_trackers(None, None, find_spec=lambda name: None)  # nothing enabled: nothing needed


def test_scalars_and_flatten():
    assert scalars({"step": 3, "loss": 0.5, "skipped": 0, "nan": float("nan"), "name": "x", "flag": True}) == {
        "loss": 0.5, "skipped": 0.0}
    assert flatten({"optim": {"lr": 1e-5, "betas": [0.9, 0.99]}, "lora": None}) == {
        "optim.lr": 1e-5, "optim.betas": "[0.9, 0.99]", "lora": None}
