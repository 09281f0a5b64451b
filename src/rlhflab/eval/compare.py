"""`rlhflab compare`: the judge's win rate of model A over model B on a prompt set.

Both models answer every prompt (greedy by default, so the comparison is deterministic); a
pairwise judge compares the two answers (in both orders with swap), a pointwise judge scores each
and the higher expected score wins. The result is written as JSON (win rate with a 95% bootstrap
interval, wins / losses / ties, position consistency) plus one JSONL row per prompt with both
answers and the verdict.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhflab.config_feedback import JudgeConfig, check_judge
from rlhflab.errors import ConfigError


@dataclass(frozen=True)
class CompareConfig:
    model_a: str
    """The candidate (e.g. the trained model's final/ folder)."""
    model_b: str
    """The baseline (e.g. the model before training)."""
    data: str
    """Held-out prompts (a `prompt` column)."""
    judge: JudgeConfig
    """A pairwise judge."""
    out: str
    """A folder for compare.json and verdicts.jsonl."""
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 = greedy answers."""
    seed: int = 0
    limit: int | None = None
    batch_size: int = 32


def validate(cfg: CompareConfig) -> None:
    from rlhflab.config_rl import check_sampling, cli_flag

    check_judge("judge", cfg.judge)
    check_sampling(cli_flag, cfg.max_new_tokens, cfg.batch_size, cfg.temperature, 1.0, greedy_ok=True)
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {cfg.limit}")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")


def run_compare(cfg: CompareConfig, console: Any) -> dict[str, Any]:
    from rlhflab.eval.winrate import judge_win_rate
    from rlhflab.feedback.generate import ChatModel
    from rlhflab.feedback.label import read_prompts
    from rlhflab.models import EMBEDDED, resolve_model_path
    from rlhflab.rewards.judge import Judge

    t0 = time.perf_counter()
    validate(cfg)
    prompts, values, _ = read_prompts(cfg.data, cfg.limit)
    for name in (cfg.model_a, cfg.model_b, cfg.judge.model):
        if name != EMBEDDED:
            resolve_model_path(name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    answers = {}
    for key, name in (("a", cfg.model_a), ("b", cfg.model_b)):
        console.print(f"answering {len(prompts)} prompts with {name}")
        model = ChatModel.load(name, device, cfg.batch_size)
        answers[key] = [r[0] for r in model.reply(prompts, 1, cfg.max_new_tokens, cfg.temperature, 1.0, cfg.seed)]
    how = "scores" if cfg.judge.mode == "pointwise" else "both orders" if cfg.judge.swap else "one order"
    console.print(f"judging with {cfg.judge.model} ({cfg.judge.mode}, {how})")
    judge = Judge.reusing(cfg.judge, device, model, cfg.model_b)  # model B is often the judge: loaded once
    del model
    wr, verdicts = judge_win_rate(judge, prompts, answers["a"], answers["b"], cfg.seed)
    result = {"model_a": cfg.model_a, "model_b": cfg.model_b, "judge": cfg.judge.model, "prompts": len(prompts),
              **wr.as_dict(), "seconds": time.perf_counter() - t0}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    with (out / "verdicts.jsonl").open("w", encoding="utf-8") as f:
        for p, a, b, v in zip(values, answers["a"], answers["b"], verdicts):
            f.write(json.dumps({"prompt": p, "a": a, "b": b, "winner": v.winner, "p_a": v.p_a,
                                "p_a_first": v.p_a_first, "p_a_second": v.p_a_second}, ensure_ascii=False) + "\n")
    return result


def print_result(r: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"win rate of A over B ({r['prompts']} prompts, judge {r['judge']})")
    for col in ("A", "B", "win rate", "95% CI", "W / L / T", "consistent"):
        t.add_column(col)
    t.add_row(str(r["model_a"]), str(r["model_b"]), f"{r['win_rate']:.3f}", f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
              f"{r['wins']} / {r['losses']} / {r['ties']}", f"{r['position_consistency']:.2f}")
    console.print(t)
