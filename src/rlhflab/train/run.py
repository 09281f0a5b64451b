"""`rlhflab train`: validate everything, then load, train, save, summarize.

Order matters: config, batch plan and data rows are checked before the tokenizer loads, and token
lengths before the model loads, so a bad input fails in seconds with nothing lost.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rlhflab.algorithms import get_algorithm
from rlhflab.config import RunConfig, dump_config
from rlhflab.errors import DataError, UserError
from rlhflab.train.checkpoint import list_checkpoints
from rlhflab.train.loop import Loop


@dataclass
class RunResult:
    out_dir: Path
    history: list[dict[str, Any]]
    final_dir: Path | None
    initial_eval: dict[str, float]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """The run's device; in a multi-process run on GPUs, the GPU of the rank's LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' was asked for, but no CUDA GPU is available; use device=cpu")
    if device.type == "cuda" and local_rank is not None:
        if device.index is not None and device.index != local_rank:
            raise UserError(f"device '{name}' names one GPU, but in a multi-process run each rank uses the GPU of its "
                            f"LOCAL_RANK ({local_rank} here): use device=cuda or device=auto")
        device = torch.device("cuda", local_rank)
    return device


def _check_out_dir(cfg: RunConfig) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from; refuses to clobber a run by accident."""
    out = Path(cfg.output_dir)
    ckpts = list_checkpoints(out / "checkpoints")
    if cfg.resume:
        return out, (ckpts[-1] if ckpts else None)
    if (out / "metrics.jsonl").exists() or ckpts or (out / "final").exists():
        if not cfg.overwrite:
            raise UserError(
                f"output_dir '{out}' already holds a run. Pass resume=true to continue it, "
                "overwrite=true to start over there, or choose another output_dir."
            )
    return out, None


def _clear_previous_run(out: Path) -> None:
    """overwrite=true: remove the old run's outputs, only once every input has been validated."""
    for sub in ("checkpoints", "final", "tensorboard", "metrics.jsonl", "summary.json", "evals.jsonl", "best",
                "best.json", "eval"):
        p = out / sub
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _split_eval(examples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    n_eval = max(1, round(len(examples) * fraction))
    if n_eval >= len(examples):
        raise UserError(f"data.eval_fraction {fraction} leaves no training rows out of {len(examples)}")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def load_data(cfg: RunConfig, algo_kind: str, console: Console,
              check: Any = None) -> tuple[Any, list[Any], list[Any] | None]:
    """Read and validate the rows (no tokenizer yet); `check(loaded)` runs on the train and the eval
    file. Returns (train info, train examples, eval examples)."""
    from rlhflab.data.load import concat_loaded, load_files

    train = concat_loaded(load_files(cfg.data.train, algo_kind, cfg.data.format, check))
    for w in train.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    examples, eval_examples = train.examples, None
    if cfg.data.eval:
        ev = concat_loaded(load_files(cfg.data.eval, algo_kind, cfg.data.format, check))
        for w in ev.warnings:
            console.print(f"[yellow]warning:[/] {w}")
        eval_examples = ev.examples
    elif cfg.data.eval_fraction > 0:
        examples, eval_examples = _split_eval(examples, cfg.data.eval_fraction, cfg.seed)
    return train, examples, eval_examples


@dataclass
class ValidatedInputs:
    """What `validate_inputs` checked and read: everything before the process group and the models."""

    algo: Any
    plan: Any
    train_info: Any
    examples: list[Any]
    eval_examples: list[Any] | None
    gen_eval: Any
    out: Path
    resume_ckpt: Path | None


def validate_inputs(cfg: RunConfig, console: Console) -> ValidatedInputs:
    """Every check `rlhflab train` makes before it joins the other ranks or loads a tokenizer: the
    algorithm's settings, the batch plan for the launcher's world size, the data rows, the
    `evaluation:` prompts and the output directory (also what `rlhflab preflight` runs)."""
    algo = get_algorithm(cfg)
    plan = algo.batch_plan()  # with the launcher's world size (WORLD_SIZE)
    train_info, examples, eval_examples = load_data(cfg, algo.data_kind, console, check=algo.check_data)
    from rlhflab.eval.during_training import TrainingEvaluator

    gen_eval = TrainingEvaluator.from_config(cfg, console)  # the `evaluation:` prompts are checked here
    out, resume_ckpt = _check_out_dir(cfg)
    return ValidatedInputs(algo, plan, train_info, examples, eval_examples, gen_eval, out, resume_ckpt)


def run(cfg: RunConfig, console: Console | None = None, stop_at: int | None = None) -> RunResult:
    """Run the configured training. `stop_at` ends the loop early (for tests of resume)."""
    console = console or Console(stderr=True)
    if cfg.algorithm == "self_rewarding":  # a driver of several DPO runs (docs/self_rewarding.md)
        from rlhflab.feedback.self_rewarding import run_self_rewarding
        from rlhflab.train.distributed import launched_world_size

        if launched_world_size() > 1:
            raise UserError("algorithm self_rewarding runs in one process (its sampling and judging are not sharded "
                            "yet); start it without torchrun / accelerate")

        return run_self_rewarding(cfg, console)
    t_start = time.perf_counter()
    v = validate_inputs(cfg, console)
    dist = join_process_group(cfg)  # every input is valid on this rank: join the others (docs/distributed.md)
    try:
        return _run(cfg, console if dist.is_main else Console(stderr=True, quiet=True), stop_at, dist, t_start, v)
    finally:
        from rlhflab.train.distributed import shutdown

        shutdown(dist)


def join_process_group(cfg: RunConfig) -> Any:
    """This rank's DistContext: the launcher's process group with the config's backend and timeouts, or
    the single process (also what `rlhflab preflight` joins)."""
    from rlhflab.train.distributed import init_distributed, launched_world_size

    if launched_world_size() == 1:
        return init_distributed()
    device_type = pick_device(cfg.device).type
    return init_distributed(cfg.distributed.backend, vars(cfg.distributed.timeouts), device_type)


def _run(cfg: RunConfig, console: Console, stop_at: int | None, dist: Any, t_start: float,
         v: ValidatedInputs) -> RunResult:
    algo, plan, train_info, examples, eval_examples = v.algo, v.plan, v.train_info, v.examples, v.eval_examples
    gen_eval, out, resume_ckpt = v.gen_eval, v.out, v.resume_ckpt
    main = dist.is_main
    algo.dist = dist
    if dist.enabled:  # rank 0 decides what to resume from; every rank reads it (a shared output_dir)
        resume_ckpt = dist.broadcast_object(resume_ckpt)

    from rlhflab.data import tokenize_examples
    from rlhflab.models import load_tokenizer, resolve_model_path

    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(str(model_path), trust_remote_code=cfg.trust_remote_code)
    items, report = tokenize_examples(examples, tokenizer, cfg.data, path=train_info.path)
    ev = cfg.data.eval
    eval_path = train_info.path if not ev else ev if isinstance(ev, str) else " + ".join(ev)
    eval_items = tokenize_examples(eval_examples, tokenizer, cfg.data, path=eval_path)[0] if eval_examples else None
    console.print(f"data: {train_info.path} ({train_info.format}): {report.summary()}")
    if not items:
        raise DataError(train_info.path, None, None, f"no rows left after tokenization and truncation ({report.summary()})",
                        "raise data.max_length, use data.truncation: truncate, or check the chat template")
    algo.setup(tokenizer)
    items = algo.prepare_items(items)
    eval_items = algo.prepare_items(eval_items) if eval_items else None

    if cfg.overwrite and not cfg.resume and main:
        _clear_previous_run(out)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        dump_config(cfg, out / "config.yaml")
    tokens_per_item = sum(_item_tokens(i) for i in items) / len(items)
    step_tokens = tokens_per_item * cfg.batch_size if algo.data_kind != "prompt" else None
    plan_text = plan.describe(algo.plan_unit) + (f", ~{step_tokens:,.0f} tokens/step" if step_tokens else "")
    console.print(plan_text)
    from rlhflab.report import runlog  # run.json, warnings.jsonl, samples.jsonl and the report (docs/report.md)

    if main:
        runlog.start_run_files(out, cfg.resume)
        runlog.write_run_info(out, cfg, plan, algo.plan_unit, plan_text, len(items), len(eval_items or []), step_tokens)
    console.print(f"  {len(items)} training {algo.item_name}, {len(eval_items or [])} eval; "
                  f"{cfg.max_steps} steps = {cfg.max_steps * cfg.batch_size / len(items):.2f} epochs")

    seed_everything(cfg.seed, cfg.deterministic)
    device = pick_device(cfg.device, dist.local_rank if dist.enabled else None)
    model = algo.load_model(str(model_path), device)
    from rlhflab.models import count_parameters

    trainable, total = count_parameters(model)
    console.print(f"model: {cfg.model} ({total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable) on {device}")
    if main:
        runlog.update_run_info(out, **runlog.model_info(model, trainable, total, device, cfg.dtype),
                               world_size=dist.world_size, strategy=cfg.distributed.strategy if dist.enabled else "none")

    from rlhflab.algorithms.base import TrainContext

    t_ref = time.perf_counter()
    from rlhflab.train.loop import autocast

    with autocast(cfg, device), dist.phase("data"):  # the reference pass computes in the training precision
        algo.before_training(model, items, eval_items, TrainContext(str(model_path), device, console, cfg.micro_batch_size, dist))
    prep_seconds = time.perf_counter() - t_ref
    loop = Loop(cfg, algo, model, items, eval_items, out, device, console, dist)
    if gen_eval is not None and main:  # the other ranks keep only its schedule (Loop.run asks `due`)
        gen_eval.attach(algo, model, tokenizer, out, device)  # the model is still the initial policy
    initial_eval: dict[str, float] = {}
    if resume_ckpt is not None:
        loop.resume_from(resume_ckpt)
        console.print(f"resumed from {resume_ckpt} (step {loop.state.step})")
    elif cfg.resume:
        console.print("[yellow]warning:[/] resume=true but no complete checkpoint found; starting from step 0")
    if cfg.resume and main:  # rows logged after the checkpoint are redone
        runlog.drop_rows_after(out / "warnings.jsonl", loop.state.step)
        runlog.drop_rows_after(out / "samples.jsonl", loop.state.step)
    if gen_eval is not None:
        if main:
            gen_eval.start(loop.state.step)
        loop.gen_eval = gen_eval
    if loop.state.step == 0 and eval_items:
        initial_eval = loop.evaluate()
    if gen_eval is not None and loop.state.step == 0 and gen_eval.ev.at_start:
        with dist.phase("evaluation", 0), loop.engine.gathered():
            if main:
                initial_eval.update(gen_eval.run(model, 0))
            dist.barrier()
    try:
        state = loop.run(stop_at=stop_at)
    except BaseException as e:  # a halted, interrupted or failed run still gets its report
        if main:
            runlog.finish_run(out, loop.state.step, cfg.max_steps, e, console)
        raise

    final_dir = None
    if state.step >= cfg.max_steps:
        final_dir = out / "final"
        with dist.phase("checkpoint", state.step), loop.engine.gathered():  # FSDP: the full weights, as for best/
            if main:
                algo.save_final(model, tokenizer, str(final_dir))
            dist.barrier()
    if not main:
        return RunResult(out, state.history, final_dir, initial_eval)
    if state.step >= cfg.max_steps:
        summary = _summary(cfg, state.history, initial_eval, time.perf_counter() - t_start, final_dir)
        summary["before_training_s"] = round(prep_seconds, 3)
        summary.update(algo.summary_extra())
        summary.update(gen_eval.summary() if gen_eval is not None else {})
        summary["warnings"] = state.warnings
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        _print_summary(console, summary)
    runlog.finish_run(out, state.step, cfg.max_steps, None, console)
    return RunResult(out, state.history, final_dir, initial_eval)


def _item_tokens(item: Any) -> int:
    if hasattr(item, "chosen"):
        return len(item.chosen.input_ids) + len(item.rejected.input_ids)
    return len(item.seq.input_ids) if hasattr(item, "seq") else len(item.input_ids)


def _summary(cfg: RunConfig, history: list[dict[str, Any]], initial_eval: dict[str, float],
             seconds: float, final_dir: Path) -> dict[str, Any]:
    finite = [h for h in history if h.get("skipped") == 0]
    summary: dict[str, Any] = {
        "algorithm": cfg.algorithm,
        "model": cfg.model,
        "steps": cfg.max_steps,
        "first_loss": finite[0]["loss"] if finite else None,
        "last_loss": finite[-1]["loss"] if finite else None,
        "seconds": round(seconds, 1),
        "final": str(final_dir),
    }
    if initial_eval:
        summary["eval_before"] = initial_eval
    last_eval = {k: v for k, v in (history[-1] if history else {}).items() if k.startswith("eval/")}
    if last_eval:
        summary["eval_after"] = last_eval
    from rlhflab.eval.hacking import summarize as hacking_summary
    from rlhflab.report.load import read_jsonl

    # every round of the run: after a resume, `history` holds only the steps since the checkpoint
    rows = read_jsonl(final_dir.parent / "metrics.jsonl", []) if cfg.resume else history
    hacking = hacking_summary(rows)  # None unless the rounds logged a gold metric
    if hacking is not None:
        summary["reward_hacking"] = hacking  # docs/reward_hacking.md
    return summary


def _print_summary(console: Console, s: dict[str, Any]) -> None:
    console.print(f"[bold green]done[/]: {s['algorithm']} on {s['model']}, {s['steps']} steps in {s['seconds']} s")
    if s["first_loss"] is not None:
        console.print(f"  train loss {s['first_loss']:.4f} (step 1) -> {s['last_loss']:.4f} (step {s['steps']})")
    before, after = s.get("eval_before", {}), s.get("eval_after", {})
    for key, value in after.items():
        prev = f"{before[key]:.4f} -> " if key in before else ""
        console.print(f"  {key}: {prev}{value:.4f}")
    if "reward_hacking" in s:
        from rlhflab.eval.hacking import describe

        for line in describe(s["reward_hacking"]):
            console.print(f"  {line}")
    console.print(f"  model saved to {s['final']}")
