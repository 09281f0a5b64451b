"""Files a training run writes for its report, beside metrics.jsonl (docs/report.md):

- `run.json`: written when the run starts (batch plan, model, parameter counts, device, dtype,
  versions, start time, command line) and updated when it ends (`end`: time, step, outcome).
- `warnings.jsonl`: one `{"step", "message"}` per warning, appended as it is raised, so a killed
  run still shows its warnings.
- `samples.jsonl`: `{"step", "prompt", "completion", "scores"}` rows of online runs' rollouts,
  `SAMPLES_PER_POINT` per sampled round at `SAMPLE_POINTS` rounds of the run (`sample_rounds`).

Only the standard library: the loop calls these on every run.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from rlhflab.atomic import write_text_atomic

SAMPLE_POINTS = 8
"""Rounds of an online run whose rollouts are logged to samples.jsonl: the first, the last and evenly between."""
SAMPLES_PER_POINT = 4
"""Completions logged per sampled round, each for a different prompt when there are enough."""
RUN_FILES = ("run.json", "warnings.jsonl", "samples.jsonl", "report.html")
"""What a fresh (not resumed) run removes from its output_dir before it starts."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=str))


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line (flushed at once, so a killed run keeps every row written)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")


def drop_rows_after(path: Path, step: int) -> None:
    """Resume: keep the rows of `path` whose `step` is at most `step` (the rest are redone)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(row, dict) and (row.get("step") or 0) <= step:
            kept.append(line + "\n")
    path.write_text("".join(kept), encoding="utf-8")


def start_run_files(out: Path, resume: bool) -> None:
    """A fresh run clears the previous run's report files; a resumed one keeps them."""
    if not resume:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("rlhflab", "torch", "transformers", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_run_info(out: Path, cfg: Any, plan: Any, unit: str, plan_text: str, n_items: int, n_eval: int,
                   tokens_per_step: float | None) -> dict[str, Any]:
    """run.json at the start: the batch plan with its numbers, versions, host, command line. A
    resumed run keeps the first start time and adds this one to `resumed`."""
    path = out / "run.json"
    previous = _read(path) if cfg.resume else {}
    info: dict[str, Any] = {
        "algorithm": cfg.algorithm,
        "model": cfg.model,
        "started": previous.get("started", _now()),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "versions": _versions(),
        "plan": {
            "text": plan_text,
            "unit": unit,
            "batch_size": plan.batch_size,
            "micro_batch_size": plan.micro_batch_size,
            "accumulation": plan.accumulation,
            "world_size": getattr(plan, "world_size", 1),
            "items": n_items,
            "eval_items": n_eval,
            "max_steps": cfg.max_steps,
            "epochs": cfg.max_steps * cfg.batch_size / max(n_items, 1),
            "tokens_per_step": tokens_per_step,
        },
    }
    if cfg.resume:
        info["resumed"] = previous.get("resumed", []) + [_now()]
    write_json_atomic(path, info)
    return info


def update_run_info(out: Path, **fields: Any) -> None:
    """Add or replace top-level fields of run.json (model size and device once loaded; `end`)."""
    path = out / "run.json"
    info = _read(path)
    info.update(fields)
    write_json_atomic(path, info)


def model_info(model: Any, trainable: int, total: int, device: Any, dtype_setting: str) -> dict[str, Any]:
    """The model facts run.json records once the model is loaded."""
    param = next(iter(model.parameters()), None)
    param_dtype = str(param.dtype).replace("torch.", "") if param is not None else None
    return {"parameters": total, "trainable_parameters": trainable, "device": str(device),
            "dtype": dtype_setting, "param_dtype": param_dtype}


def end_run_info(out: Path, step: int, max_steps: int, error: BaseException | None) -> None:
    """run.json's `end`: when, at which step, and why the run ended."""
    if error is None:
        outcome = "finished" if step >= max_steps else "stopped"
    else:
        outcome = f"{type(error).__name__}: {error}".strip()[:500]
    update_run_info(out, end={"time": _now(), "step": step, "outcome": outcome})


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def record_warning(out: Path, step: int | None, message: str) -> None:
    """Append a warning to warnings.jsonl as soon as it is raised (an unwritable folder is not the
    run's problem: the warning is still printed and kept in summary.json)."""
    try:
        append_jsonl(out / "warnings.jsonl", {"step": step, "message": message, "time": _now()})
    except OSError:
        pass


# ---------------------------------------------------------------------- rollout samples
def sample_rounds(total_rounds: int, points: int = SAMPLE_POINTS) -> set[int]:
    """`points` rounds spread over 0..total_rounds-1: the first, the last and evenly between
    (every round when there are no more than `points`)."""
    if total_rounds <= points:
        return set(range(max(total_rounds, 0)))
    return {round(i * (total_rounds - 1) / (points - 1)) for i in range(points)}


def prompt_text(messages: Any) -> str:
    """A chat prompt as text: the message content when it is one user turn, else `role: content` lines."""
    if isinstance(messages, str):
        return messages
    if len(messages) == 1:
        return str(messages[0].get("content", ""))
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in messages)


def pick_samples(prompt_index: list[int], k: int = SAMPLES_PER_POINT) -> list[int]:
    """Indices of `k` completions, the first of each prompt before a second of any."""
    seen: dict[int, int] = {}
    ranked = []
    for i, p in enumerate(prompt_index):
        ranked.append((seen.get(p, 0), i))
        seen[p] = seen.get(p, 0) + 1
    return [i for _, i in sorted(ranked)[:k]]


def write_rollout_samples(out: Path, step: int, prompts: list[Any], completions: list[Any],
                          scores: dict[str, Any]) -> None:
    """Append a handful of a round's completions, with every score they got, to samples.jsonl.
    `scores` maps a name (reward, cost, gold) to a Scores (values (N,), parts name -> (N,)).
    Nothing is written when `out` is not a folder (an algorithm used outside `rlhflab train`)."""
    if not out.is_dir():
        return
    rows = []
    for i in pick_samples([c.prompt_index for c in completions]):
        c = completions[i]
        row_scores: dict[str, float] = {}
        for name, sc in scores.items():
            row_scores[name] = float(sc.values[i])
            for part, pv in sc.parts.items():
                if part != name:
                    row_scores[f"{name}/{part}"] = float(pv[i])
        rows.append({"step": step, "prompt": prompt_text(prompts[c.prompt_index].messages), "completion": c.text,
                     "scores": row_scores, "finish_reason": getattr(c, "finish_reason", None)})
    try:
        with (out / "samples.jsonl").open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, default=str) + "\n" for r in rows))
    except OSError:
        pass  # samples are for the report; losing them must not stop training


def finish_run(out: Path, step: int, max_steps: int, error: BaseException | None, console: Any) -> Path | None:
    """At the end of a run: run.json's `end`, then RUN_DIR/report.html, whose path is printed.
    A failure here is a printed warning, never a failed run."""
    try:
        end_run_info(out, step, max_steps, error)
        from rlhflab.report.html import write_report

        path = write_report([out])
    except Exception as e:  # noqa: BLE001  (the run's outcome must not depend on its report)
        console.print(f"[yellow]warning:[/] could not write the run report: {type(e).__name__}: {e}")
        return None
    console.print(f"report: {path}")
    return path
