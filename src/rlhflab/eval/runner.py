"""`rlhflab eval` end to end: check everything, load each model in turn, evaluate, write.

Order: settings, prompt file(s) and model paths are checked, tokenizers loaded and prompts
rendered before any model loads, so a bad input fails in seconds. The reference (when there is
one) is loaded first and kept: it is evaluated like the models (a baseline row), its completions
are what the models' win rates are measured against, and it gives the KL. Each model is then
loaded, evaluated and released.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from rlhflab.atomic import write_text_atomic
from rlhflab.config_eval import EvalConfig
from rlhflab.errors import ConfigError, DataError
from rlhflab.eval.evaluate import (EvalPrompts, PolicyEval, evaluate_policy, json_safe, read_eval_prompts,
                                   sample_scores, tokenize_prompts, win_metrics, win_rate)


@dataclass
class ModelRun:
    """One evaluated model: its display name, folder, rendered prompts and result."""

    name: str
    path: str
    prompts: list[Any]
    result: PolicyEval | None = None
    win: dict[str, Any] | None = None
    verdicts: list[Any] | None = None


@dataclass
class EvalRun:
    """Everything `run_eval` measured."""

    settings: EvalConfig
    prompts: EvalPrompts
    kept: list[int]
    """Indices (into prompts.examples) of the prompts every model could render within the limit."""
    reference: ModelRun | None
    models: list[ModelRun]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_eval(models: list[tuple[str, str]], reference: tuple[str, str] | None, ev: EvalConfig, data_cfg: Any,
             console: Any, trust_remote_code: bool = False) -> EvalRun:
    """Evaluate `models` ((name, folder) pairs; folder may be `smollm2-135m`) on the prompts of
    `ev.data`, against `reference` ((name, folder) or None). `ev` is fully resolved."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rlhflab.models import load_tokenizer, resolve_model_path

    t0 = time.perf_counter()
    prompts = read_eval_prompts(ev.data, ev.rewards, ev.limit)
    for w in prompts.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    for _, path in models + ([reference] if reference else []):
        resolve_model_path(path)  # a missing folder is reported before anything loads
    ref_run = ModelRun(reference[0], reference[1], []) if reference else None
    runs = ([ref_run] if ref_run else []) + [ModelRun(name, path, []) for name, path in models]
    tokenizers = {run.path: load_tokenizer(resolve_model_path(run.path), trust_remote_code) for run in runs}
    kept = _render(prompts, runs, tokenizers, data_cfg)
    notes = _check_reference(ev, reference, tokenizers, models)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scorer = _scorer(ev, device, trust_remote_code)
    try:
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=console)
        with progress:
            _evaluate_all(ev, ref_run, runs[1:] if ref_run else runs, tokenizers, scorer, device, progress,
                          trust_remote_code)
    finally:
        if scorer is not None:
            scorer.close()
    return EvalRun(ev, prompts, kept, ref_run, runs[1:] if ref_run else runs, notes, time.perf_counter() - t0)


def _render(prompts: EvalPrompts, runs: list[ModelRun], tokenizers: dict[str, Any], data_cfg: Any) -> list[int]:
    """Render the prompts with each model's tokenizer; keep the prompts every model can take."""
    rendered = {path: tokenize_prompts(prompts, tok, data_cfg) for path, tok in tokenizers.items()}
    kept = [i for i in range(len(prompts.examples)) if all(r[i] is not None for r in rendered.values())]
    if not kept:
        limit = data_cfg.max_prompt_length or data_cfg.max_length - 1
        raise DataError(prompts.path, None, "prompt", f"every prompt is longer than the prompt limit ({limit} tokens)")
    for run in runs:
        run.prompts = [rendered[run.path][i] for i in kept]
    return kept


def _check_reference(ev: EvalConfig, reference: tuple[str, str] | None, tokenizers: dict[str, Any],
                     models: list[tuple[str, str]]) -> list[str]:
    if reference is None:
        return ["no reference model: KL and win rates were not measured (pass --reference MODEL)"]
    notes = []
    if ev.kl:
        vocab = tokenizers[reference[1]].get_vocab()
        for name, path in models:
            if tokenizers[path].get_vocab() != vocab:
                raise ConfigError(f"model {name} and the reference {reference[0]} have different vocabularies; "
                                  "the KL compares their next-token distributions on the same tokens. Pass --no-kl")
    if not ev.rewards and ev.judge is None:
        notes.append("no scorer and no judge: win rates were not measured (pass --reward SPEC or --judge-model)")
    return notes


def _scorer(ev: EvalConfig, device: str, trust_remote_code: bool) -> Any:
    from rlhflab.rewards import build_scorer

    return build_scorer(ev.rewards, device, trust_remote_code) if ev.rewards else None


def _evaluate_all(ev: EvalConfig, ref_run: ModelRun | None, model_runs: list[ModelRun], tokenizers: dict[str, Any],
                  scorer: Any, device: str, progress: Any, trust_remote_code: bool) -> None:
    from rlhflab.models import load_causal_lm, resolve_model_path

    def load(path: str) -> Any:
        progress.console.print(f"loading {path}")
        model = load_causal_lm(resolve_model_path(path), device=device, trust_remote_code=trust_remote_code)
        return model.requires_grad_(False).eval()

    ref_model = judge = None
    if ref_run is not None:
        ref_model = load(ref_run.path)
        ref_run.result = evaluate_policy(ref_model, tokenizers[ref_run.path], ref_run.prompts, ev, scorer, None,
                                         progress, f"reference {ref_run.name}")
        judge = _judge(ev, ref_run, ref_model, tokenizers, device)
    for run in model_runs:
        model = ref_model if ref_run is not None and run.path == ref_run.path else load(run.path)
        run.result = evaluate_policy(model, tokenizers[run.path], run.prompts, ev, scorer, ref_model, progress, run.name)
        if ref_run is not None and (judge is not None or scorer is not None):
            run.win, run.verdicts = win_rate(run.result, ref_run.result, run.prompts, ev.rewards, judge, ev.seed)
            run.result.metrics.update(win_metrics(run.win))
        del model


def _judge(ev: EvalConfig, ref_run: ModelRun, ref_model: Any, tokenizers: dict[str, Any], device: str) -> Any:
    if ev.judge is None:
        return None
    from rlhflab.rewards.judge import Judge

    chat = SimpleNamespace(model=ref_model, tokenizer=tokenizers[ref_run.path])
    return Judge.reusing(ev.judge, device, chat, ref_run.path)  # the reference is often the judge: loaded once


# --------------------------------------------------------------------------- output


def result_json(run: EvalRun, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The eval.json document (docs/evaluation.md, "eval.json")."""
    from rlhflab.config import to_dict

    def model(m: ModelRun) -> dict[str, Any]:
        out = {"name": m.name, "path": m.path, "metrics": m.result.metrics}
        return out if m is run.reference else {**out, "win_rate": m.win}

    settings = {**to_dict(run.settings), "rewards": [compact_scorer(c) for c in run.settings.rewards],
                "data": run.prompts.path, "prompts": len(run.kept),
                "dropped_prompts": len(run.prompts.examples) - len(run.kept), **(extra or {})}
    for key in ("every", "at_start", "samples", "best_metric", "best_mode", "win_rate"):  # training-only fields
        settings.pop(key, None)
    return json_safe({"settings": settings, "reference": model(run.reference) if run.reference else None,
                      "models": [model(m) for m in run.models], "notes": run.notes,
                      "seconds": round(run.seconds, 2)})


def compact_scorer(c: Any) -> dict[str, Any]:
    """A scorer's settings without the fields left at their defaults (the type always)."""
    from rlhflab.config import to_dict
    from rlhflab.config_rl import ScorerConfig

    full, default = to_dict(c), to_dict(ScorerConfig())
    return {k: v for k, v in full.items() if k == "type" or v != default[k]}


def generation_rows(run: EvalRun) -> list[dict[str, Any]]:
    """generations.jsonl: one row per (model, prompt, sample), the reference's first."""
    rows = []
    for m in ([run.reference] if run.reference else []) + run.models:
        res = m.result
        for i, c in enumerate(res.completions):
            ex = run.kept[c.prompt_index]
            row = {"model": m.name, "role": "reference" if m is run.reference else "model",
                   "row": run.prompts.examples[ex].row, "sample": i % run.settings.n,
                   "prompt": run.prompts.values[ex], "completion": c.text, "finish_reason": c.finish_reason,
                   "tokens": len(c.token_ids), "scores": sample_scores(res.scores, i)}
            if res.kl is not None:
                row["kl"] = float(res.kl[i])
            if m.verdicts is not None:
                row["winner"] = {"a": "model", "b": "reference"}.get(m.verdicts[i].winner, m.verdicts[i].winner)
            rows.append(json_safe(row))
    return rows


def write_outputs(run: EvalRun, out: Path, extra: dict[str, Any] | None = None) -> None:
    """out/eval.json and out/generations.jsonl, each written atomically."""
    from rlhflab.sampling import write_jsonl_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "generations.jsonl", generation_rows(run))
    write_text_atomic(out / "eval.json", json.dumps(result_json(run, extra), indent=1, ensure_ascii=False) + "\n")
