"""`rlhflab label`: prompts -> AI-labelled preference pairs (RLAIF; docs/judges.md).

Per prompt: k responses sampled from the policy, judged, and one pair written (chosen = the best,
rejected = the worst) in the standard pairwise format, with the judge's scores as
`chosen_reward` / `rejected_reward` (usable by reward-aware losses such as rpo) and its rationales.

- pointwise judge: each response gets its expected score; best and worst by score; the pair is
  kept when the gap is at least `min_gap`.
- pairwise judge: every pair of the k responses is judged (both orders with swap); a response's
  score is its mean probability of winning (a round robin); best and worst by that score; the pair
  is kept only when the judge's own verdict between those two is consistent and not a tie (and
  |p - 0.5| >= min_gap).

`label_prompts` is the library function (the self-rewarding loop calls it with the policy as its
own judge); `run_label` is the command.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhflab.config_feedback import JudgeConfig, check_judge
from rlhflab.errors import ConfigError, DataError

Messages = list[dict[str, str]]


@dataclass
class LabelStats:
    prompts: int = 0
    pairs: int = 0
    skipped_small_gap: int = 0
    """Prompts whose best and worst responses the judge did not separate by min_gap."""
    skipped_inconsistent: int = 0
    """pairwise: prompts whose best-vs-worst verdict flipped with the order (or was a tie)."""
    skipped_identical: int = 0
    """Prompts whose best and worst responses were the same text."""
    judge_calls: int = 0
    consistency: float = math.nan
    """pairwise: fraction of judged pairs whose verdict did not flip with the order."""
    position_bias: float = math.nan
    """pairwise: mean P(first shown wins) - 0.5 over the judged pairs."""
    mean_best: float = math.nan
    mean_worst: float = math.nan
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def label_prompts(policy: Any, judge: Any, prompts: list[Messages], k: int, max_new_tokens: int = 128,
                  temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, min_gap: float = 0.0,
                  progress: Any = None, prompt_values: list[Any] | None = None) -> tuple[list[dict[str, Any]], LabelStats]:
    """Sample k replies per prompt with `policy` (a feedback.generate.ChatModel), judge them with
    `judge` (rewards.judge.Judge), and return pairwise rows and counts. A row's `prompt` is
    `prompt_values[i]` (e.g. the file's own prompt string) when given, else the messages.
    `progress`: a callable advanced by the number of prompts done."""
    t0 = time.perf_counter()
    if k < 2:
        raise ValueError(f"k must be at least 2 to form a pair, got {k}")
    stats = LabelStats(prompts=len(prompts))
    chunk = max(1, policy.batch_size // k)
    calls0 = judge.calls
    rows: list[dict[str, Any]] = []
    best_scores, worst_scores, consistent, first_bias = [], [], [], []
    for c, s in enumerate(range(0, len(prompts), chunk)):
        part = prompts[s:s + chunk]
        replies = policy.reply(part, k, max_new_tokens, temperature, top_p, seed=seed * 1_000_003 + c)
        shown = prompt_values[s:s + chunk] if prompt_values is not None else part
        if judge.cfg.mode == "pointwise":
            new = _pointwise_pairs(judge, part, shown, replies, min_gap, stats)
        else:
            new = _pairwise_pairs(judge, part, shown, replies, min_gap, stats, consistent, first_bias)
        for row in new:
            best_scores.append(row["chosen_reward"])
            worst_scores.append(row["rejected_reward"])
        rows += new
        if progress is not None:
            progress(len(part))
    stats.pairs = len(rows)
    stats.judge_calls = judge.calls - calls0
    if consistent:
        stats.consistency = sum(consistent) / len(consistent)
        stats.position_bias = sum(first_bias) / len(first_bias) - 0.5
    if rows:
        stats.mean_best = sum(best_scores) / len(rows)
        stats.mean_worst = sum(worst_scores) / len(rows)
    stats.seconds = time.perf_counter() - t0
    return rows, stats


def _pointwise_pairs(judge: Any, prompts: list[Messages], shown: list[Any], replies: list[list[str]], min_gap: float,
                     stats: LabelStats) -> list[dict[str, Any]]:
    flat_p = [p for p, rs in zip(prompts, replies) for _ in rs]
    flat_r = [r for rs in replies for r in rs]
    verdicts = judge.pointwise(flat_p, flat_r)
    rows, i = [], 0
    for p, rs in zip(shown, replies):
        vs = verdicts[i:i + len(rs)]
        i += len(rs)
        scores = [v.score if math.isfinite(v.score) else -math.inf for v in vs]
        b = max(range(len(rs)), key=lambda j: scores[j])
        w = min(range(len(rs)), key=lambda j: scores[j])
        if not scores[b] - scores[w] >= max(min_gap, 1e-9):
            stats.skipped_small_gap += 1
            continue
        if rs[b] == rs[w]:
            stats.skipped_identical += 1
            continue
        rows.append({"prompt": p, "chosen": rs[b], "rejected": rs[w], "chosen_reward": scores[b],
                     "rejected_reward": scores[w], "chosen_rationale": vs[b].rationale,
                     "rejected_rationale": vs[w].rationale, "candidate_scores": scores})
    return rows


def _pairwise_pairs(judge: Any, prompts: list[Messages], shown: list[Any], replies: list[list[str]], min_gap: float,
                    stats: LabelStats, consistent: list[bool], first_bias: list[float]) -> list[dict[str, Any]]:
    jobs = [(g, a, b) for g, rs in enumerate(replies) for a in range(len(rs)) for b in range(a + 1, len(rs))]
    verdicts = judge.pairwise([prompts[g] for g, _, _ in jobs], [replies[g][a] for g, a, _ in jobs],
                              [replies[g][b] for g, _, b in jobs])
    wins = [[0.0] * len(rs) for rs in replies]
    direct: dict[tuple[int, int, int], Any] = {}
    for (g, a, b), v in zip(jobs, verdicts):
        wins[g][a] += v.p_a
        wins[g][b] += 1.0 - v.p_a
        direct[(g, a, b)] = v
        consistent.append(v.consistent)
        if v.p_a_second is not None:
            first_bias.append((v.p_a_first + 1.0 - v.p_a_second) / 2)
    rows = []
    for g, (p, rs) in enumerate(zip(shown, replies)):
        score = [w / (len(rs) - 1) for w in wins[g]]
        b = max(range(len(rs)), key=lambda j: score[j])
        w = min(range(len(rs)), key=lambda j: score[j])
        if b == w:  # every comparison a tie
            stats.skipped_inconsistent += 1
            continue
        if rs[b] == rs[w]:
            stats.skipped_identical += 1
            continue
        v = direct[(g, min(b, w), max(b, w))]
        p_b = v.p_a if b < w else 1.0 - v.p_a  # P(best beats worst) in the direct comparison
        if v.winner in (None, "tie") or p_b <= 0.5:
            stats.skipped_inconsistent += 1
            continue
        if p_b - 0.5 < min_gap:
            stats.skipped_small_gap += 1
            continue
        rows.append({"prompt": p, "chosen": rs[b], "rejected": rs[w], "chosen_reward": score[b],
                     "rejected_reward": score[w], "p_chosen_better": p_b, "consistent": v.consistent,
                     "rationales": v.rationales})
    return rows


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class LabelConfig:
    """Settings of `rlhflab label`, checked by `validate` before anything loads."""

    model: str
    """The policy that writes the responses: a local folder or `smollm2-135m`."""
    data: str
    """Prompts: any file with a `prompt` column (string or chat messages)."""
    out: str
    """The pairwise JSONL to write (atomically)."""
    judge: JudgeConfig
    """The judge (its `model` may be the policy's own folder)."""
    k: int = 4
    """Responses sampled per prompt."""
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    min_gap: float = 0.0
    """Keep a pair only when the judge separates best and worst by this much (pointwise: score
    points; pairwise: P(best beats worst) - 0.5)."""
    batch_size: int = 32
    """Sequences generated together."""
    limit: int | None = None
    """Label only the first `limit` prompts."""
    overwrite: bool = False


def validate(cfg: LabelConfig) -> None:
    from rlhflab.config_rl import check_sampling, cli_flag
    from rlhflab.sampling import check_out_path

    if cfg.k < 2:
        raise ConfigError(f"--k must be at least 2 (a pair needs two responses), got {cfg.k}")
    check_sampling(cli_flag, cfg.max_new_tokens, cfg.batch_size, cfg.temperature, cfg.top_p)
    if not cfg.min_gap >= 0:
        raise ConfigError(f"--min-gap must be >= 0, got {cfg.min_gap}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {cfg.limit}")
    check_judge("judge", cfg.judge)
    check_out_path(cfg.out, cfg.data, cfg.overwrite)


def read_prompts(path: str, limit: int | None = None) -> tuple[list[Messages], list[Any], list[str]]:
    """(prompt messages, the rows' original `prompt` values, loader warnings) of a prompt file."""
    from rlhflab.data import examples_from_records, read_records

    records = read_records(path)
    loaded = examples_from_records(records, path, "prompt", "auto")
    examples = loaded.examples[:limit] if limit else loaded.examples
    if not examples:
        raise DataError(path, None, "prompt", "no prompt to label")
    original = {rec.row: rec.data.get("prompt") for rec in records}
    values = [original.get(ex.row) if original.get(ex.row) is not None else ex.prompt for ex in examples]
    return [list(ex.prompt) for ex in examples], values, list(loaded.warnings)


def run_label(cfg: LabelConfig, console: Any) -> LabelStats:
    """Validate, load the policy and the judge (once when they are the same model), label, write."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rlhflab.feedback.generate import ChatModel
    from rlhflab.models import EMBEDDED, resolve_model_path
    from rlhflab.rewards.judge import Judge
    from rlhflab.sampling import write_jsonl_atomic

    validate(cfg)
    prompts, values, warnings = read_prompts(cfg.data, cfg.limit)
    for name in {cfg.model, cfg.judge.model}:
        if name != EMBEDDED:
            resolve_model_path(name)  # a missing folder is reported before anything loads
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = ChatModel.load(cfg.model, device, cfg.batch_size)
    judge = Judge.reusing(cfg.judge, device, policy, cfg.model)
    progress = Progress(TextColumn("labeling prompts"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console)
    with progress:
        task = progress.add_task("label", total=len(prompts))
        rows, stats = label_prompts(policy, judge, prompts, cfg.k, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                    cfg.seed, cfg.min_gap, lambda n: progress.advance(task, n), values)
    if not rows:
        raise ConfigError(f"no pair to write: the judge separated no prompt's best and worst responses "
                          f"({stats.skipped_small_gap} below --min-gap, {stats.skipped_inconsistent} inconsistent, "
                          f"{stats.skipped_identical} identical); {cfg.out} was not written")
    write_jsonl_atomic(Path(cfg.out), rows)
    return stats


def print_summary(stats: LabelStats, cfg: LabelConfig, console: Any) -> None:
    console.print(f"[bold]rlhflab label[/]: {stats.prompts} prompts x {cfg.k} responses, judge {cfg.judge.mode} "
                  f"({stats.judge_calls} judge prompts run)")
    skipped = (f"skipped: {stats.skipped_small_gap} small gap, {stats.skipped_inconsistent} inconsistent, "
               f"{stats.skipped_identical} identical")
    console.print(f"wrote {stats.pairs} pairs to {cfg.out} ({skipped}) in {stats.seconds:.1f} s")
    if stats.pairs:
        console.print(f"judge score: chosen {stats.mean_best:.3f} vs rejected {stats.mean_worst:.3f}")
    if not math.isnan(stats.consistency):
        console.print(f"position consistency {stats.consistency:.3f}, position bias {stats.position_bias:+.3f} "
                      "(P(first shown wins) - 0.5)")
