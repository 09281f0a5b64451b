"""`rlhflab compare`: the judge's win rate of model A over model B on a prompt set.

Both models answer every prompt (greedy by default, so the comparison is deterministic); a
pairwise judge compares the two answers (in both orders with swap), a pointwise judge scores each
and the higher expected score wins. The result is written as JSON (win rate with a 95% bootstrap
interval, wins / losses / ties, position consistency) plus one JSONL row per prompt with both
answers and the verdict.

It is `rlhflab eval A --reference B` with a judge and nothing else: the same generation, prompt
rendering and win-rate code (eval.runner.run_eval), kept as its own command for its output files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhflab.config_feedback import JudgeConfig
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


def eval_settings(cfg: CompareConfig) -> Any:
    """The `rlhflab eval` settings this comparison is: model A against the reference B, judged,
    without scorers or KL."""
    from rlhflab.config_eval import EvalConfig, resolve_defaults

    return resolve_defaults(EvalConfig(data=cfg.data, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                       seed=cfg.seed, limit=cfg.limit, batch_size=cfg.batch_size, kl=False,
                                       judge=cfg.judge))


def validate(cfg: CompareConfig) -> None:
    from rlhflab.config_eval import check_eval

    check_eval(eval_settings(cfg), "--")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")


def run_compare(cfg: CompareConfig, console: Any) -> dict[str, Any]:
    """`rlhflab eval --reference B A` with a judge and nothing else (eval.runner.run_eval); writes
    compare.json and one verdicts.jsonl row per prompt."""
    from rlhflab.config import DataConfig
    from rlhflab.eval.runner import run_eval

    validate(cfg)
    res = run_eval([(cfg.model_a, cfg.model_a)], (cfg.model_b, cfg.model_b), eval_settings(cfg), DataConfig(), console)
    a, b = res.models[0], res.reference
    wr = {k: v for k, v in a.win.items() if k != "by"}
    result = {"model_a": cfg.model_a, "model_b": cfg.model_b, "judge": cfg.judge.model, "prompts": len(res.kept),
              **wr, "seconds": res.seconds}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    with (out / "verdicts.jsonl").open("w", encoding="utf-8") as f:
        for i, ca, cb, v in zip(res.kept, a.result.completions, b.result.completions, a.verdicts):
            f.write(json.dumps({"prompt": res.prompts.values[i], "a": ca.text.strip(), "b": cb.text.strip(),
                                "winner": v.winner, "p_a": v.p_a, "p_a_first": v.p_a_first,
                                "p_a_second": v.p_a_second}, ensure_ascii=False) + "\n")
    return result


def print_result(r: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"win rate of A over B ({r['prompts']} prompts, judge {r['judge']})")
    for col in ("A", "B", "win rate", "95% CI", "W / L / T", "consistent"):
        t.add_column(col)
    t.add_row(str(r["model_a"]), str(r["model_b"]), f"{r['win_rate']:.3f}", f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
              f"{r['wins']} / {r['losses']} / {r['ties']}", f"{r['position_consistency']:.2f}")
    console.print(t)
