"""The `evaluation:` section of a run: generation-based evaluation inside the training loop.

Every `evaluation.every` optimizer steps and after the last step (and before the first with
`at_start`), for any algorithm, the policy (`algo.policy(model)` where the algorithm wraps it)
answers the evaluation prompts and `eval.evaluate.evaluate_policy` measures it, as `rlhflab eval`
does. Each evaluation appends one row to RUN_DIR/evals.jsonl,

    {"step": 16, "metrics": {"reward": 0.75, "accuracy": 0.75, "kl": 0.12, "length/mean": 11.6, ...},
     "samples": [{"prompt": "...", "completion": "...", "scores": {"math": 1.0}}, ...]}

and returns the same metrics prefixed `eval/gen/` for that step's metrics.jsonl row. With
`best_metric`, RUN_DIR/best/ holds the policy of the best evaluation so far (saved like final/)
and RUN_DIR/best.json says which: {"step", "metric", "value"}.

The reference is the algorithm's own when it holds one (`algo.ref_model`), else the LoRA policy
with its adapter disabled, else (full fine-tuning, only when the KL or a win rate needs it) the
run's `ref_model` or a frozen copy of the initial policy, taken in `attach` before any update or
checkpoint restore.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from rlhflab.atomic import write_text_atomic
from rlhflab.config_eval import resolve_for_run
from rlhflab.errors import DataError
from rlhflab.eval.evaluate import (ADAPTER_DISABLED, evaluate_policy, json_safe, read_eval_prompts, sample_scores,
                                   tokenize_prompts, win_metrics, win_rate)


class TrainingEvaluator:
    """Runs the run config's `evaluation:` section; built before any model loads."""

    def __init__(self, cfg: Any, console: Any):
        self.run_cfg, self.console = cfg, console
        self.ev = resolve_for_run(cfg.evaluation, cfg)
        self.prompts = read_eval_prompts(self.ev.data, self.ev.rewards, self.ev.limit)  # DataError before loading
        for w in self.prompts.warnings:
            console.print(f"[yellow]warning:[/] evaluation: {w}")
        self.best: dict[str, Any] | None = None
        self.ref_eval = None
        self.judge = None

    @classmethod
    def from_config(cls, cfg: Any, console: Any) -> "TrainingEvaluator | None":
        return cls(cfg, console) if cfg.evaluation is not None else None

    # ------------------------------------------------------------------ setup
    def policy(self, model: torch.nn.Module) -> torch.nn.Module:
        get = getattr(self.algo, "policy", None)
        return get(model) if callable(get) else model

    def attach(self, algo: Any, model: torch.nn.Module, tokenizer: Any, out_dir: Path, device: torch.device) -> None:
        """Once the model is built, before any update or checkpoint restore (the model is the
        initial policy): render the prompts, build the scorer and the reference, and generate the
        reference's completions when win rates are asked for."""
        from rlhflab.rewards import build_scorer

        self.algo, self.tokenizer, self.out_dir, self.device = algo, tokenizer, Path(out_dir), device
        rendered = tokenize_prompts(self.prompts, tokenizer, self.run_cfg.data)
        self.index = [i for i, p in enumerate(rendered) if p is not None]
        self.items = [rendered[i] for i in self.index]
        if not self.items:
            raise DataError(self.prompts.path, None, "prompt", "every evaluation prompt is longer than the prompt limit",
                            "raise data.max_length / data.max_prompt_length")
        if len(self.items) < len(rendered):
            self.console.print(f"[yellow]warning:[/] evaluation: {len(rendered) - len(self.items)} prompts longer than "
                               "the prompt limit are left out")
        dev = str(device)
        self.scorer = build_scorer(self.ev.rewards, dev, self.run_cfg.trust_remote_code) if self.ev.rewards else None
        policy = self.policy(model)
        self.reference = self._reference(policy)
        if self.ev.win_rate:
            self._reference_completions(policy)

    def _reference(self, policy: torch.nn.Module) -> Any:
        from rlhflab.models import frozen_copy, is_peft

        own = getattr(self.algo, "ref_model", None)
        if own is not None:
            return own
        if is_peft(policy):
            return ADAPTER_DISABLED
        if not self.ev.kl:
            return None
        if self.run_cfg.ref_model is not None:
            from rlhflab.algorithms.reference import load_reference_model

            return load_reference_model(self.run_cfg, self.device)
        return frozen_copy(policy)

    def _reference_completions(self, policy: torch.nn.Module) -> None:
        from rlhflab.models.logps import reference_context
        from rlhflab.train.loop import autocast

        ref_model = None if isinstance(self.reference, str) or self.reference is None else self.reference
        bar = _OwnProgress(self.console)
        with reference_context(policy, ref_model, initial_policy_ok=True) as ref, autocast(self.run_cfg, self.device):
            self.ref_eval = evaluate_policy(ref, self.tokenizer, self.items, self.ev, self.scorer, None, bar,
                                            "evaluation: the reference")
        bar.close()
        if self.ev.judge is not None:
            from rlhflab.rewards.judge import Judge

            self.judge = Judge(self.ev.judge, str(self.device), trust_remote_code=self.run_cfg.trust_remote_code)

    # ------------------------------------------------------------------ resume
    @property
    def evals_path(self) -> Path:
        return self.out_dir / "evals.jsonl"

    def start(self, step: int) -> None:
        """Before the first step of this process: keep the evals.jsonl rows up to `step` (the
        checkpoint resumed from; none for a fresh run) and the best checkpoint if it is among them."""
        from rlhflab.report.runlog import drop_rows_after

        self.evals_path.parent.mkdir(parents=True, exist_ok=True)
        if step > 0 and self.evals_path.exists():
            drop_rows_after(self.evals_path, step)
        else:
            self.evals_path.write_text("", encoding="utf-8")  # a fresh run starts an empty file
        rows = [json.loads(line) for line in self.evals_path.read_text(encoding="utf-8").splitlines()]
        saved = self._read_best()
        if saved is not None and saved.get("step", step + 1) <= step and saved.get("metric") == self.ev.best_metric:
            self.best = saved
            return
        shutil.rmtree(self.out_dir / "best", ignore_errors=True)  # written after the checkpoint: redone below
        (self.out_dir / "best.json").unlink(missing_ok=True)
        for r in rows:  # the best among the kept evaluations (its weights were replaced by a later one)
            self._consider(r["step"], r["metrics"], save=None)

    def _read_best(self) -> dict[str, Any] | None:
        path = self.out_dir / "best.json"
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        except json.JSONDecodeError:
            return None

    # ------------------------------------------------------------------ evaluation
    def due(self, step: int, last: bool) -> bool:
        return last or bool(self.ev.every and step % self.ev.every == 0)

    def run(self, model: torch.nn.Module, step: int, progress: Any = None) -> dict[str, float]:
        """Evaluate the policy now (after `step` optimizer steps); append to evals.jsonl, update
        best/, and return the metrics as `eval/gen/<name>`."""
        from rlhflab.train.loop import autocast

        policy = self.policy(model)
        bar = _LoopProgress(progress) if progress is not None else _OwnProgress(self.console)
        with autocast(self.run_cfg, self.device):
            res = evaluate_policy(policy, self.tokenizer, self.items, self.ev, self.scorer, self.reference, bar,
                                  f"evaluation at step {step}")
        bar.close()
        metrics = dict(res.metrics)
        if self.ref_eval is not None:
            wr, _ = win_rate(res, self.ref_eval, self.items, self.ev.rewards, self.judge, self.ev.seed)
            metrics.update(win_metrics(wr))
        self._append(step, metrics, res)
        self._consider(step, metrics, save=model)
        return {f"eval/gen/{k}": v for k, v in metrics.items()}

    def _append(self, step: int, metrics: dict[str, float], res: Any) -> None:
        n = self.ev.n
        samples = []
        for i, c in enumerate(res.completions[:self.ev.samples * n]):
            samples.append({"prompt": self.prompts.values[self.index[c.prompt_index]], "completion": c.text,
                            "scores": sample_scores(res.scores, i)})
        row = json_safe({"step": step, "metrics": metrics, "samples": samples})
        with self.evals_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def _consider(self, step: int, metrics: dict[str, Any], save: torch.nn.Module | None) -> None:
        """Make this evaluation the best when it beats the best so far (strictly)."""
        name = self.ev.best_metric
        value = metrics.get(name) if name else None
        if value is None or value != value:  # no metric, or nan
            return
        if self.best is not None:
            better = value > self.best["value"] if self.ev.best_mode == "max" else value < self.best["value"]
            if not better:
                return
        self.best = {"step": step, "metric": name, "value": value}
        if save is None:
            return
        self.algo.save_final(save, self.tokenizer, str(self.out_dir / "best"))
        write_text_atomic(self.out_dir / "best.json", json.dumps(self.best) + "\n")

    def summary(self) -> dict[str, Any]:
        """summary.json entries: the best evaluation and where its model is."""
        if self.best is None:
            return {}
        folder = self.out_dir / "best"
        return {"best": {**self.best, "path": str(folder) if folder.is_dir() else None}}


class _LoopProgress:
    """Tasks on the training loop's progress display (its columns need an `info` field); removed
    when the evaluation ends."""

    def __init__(self, progress: Any):
        self.progress, self.tasks = progress, []

    def add_task(self, description: str, total: int) -> Any:
        task = self.progress.add_task(description, total=total, info=description)
        self.tasks.append(task)
        return task

    def advance(self, task: Any, k: int) -> None:
        self.progress.advance(task, k)

    def close(self) -> None:
        for task in self.tasks:
            self.progress.remove_task(task)


class _OwnProgress(_LoopProgress):
    """A progress display of its own (outside the training loop's), started on first use."""

    def __init__(self, console: Any):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        super().__init__(Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=console))
        self.started = False

    def add_task(self, description: str, total: int) -> Any:
        if not self.started:
            self.progress.start()
            self.started = True
        return super().add_task(description, total)

    def close(self) -> None:
        if self.started:
            self.progress.stop()
