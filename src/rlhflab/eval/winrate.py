"""Win rate of model A over model B as an LLM judge sees it, with a bootstrap confidence interval.

Each prompt gives one outcome from the (order-swapped) pairwise judge: 1 (A wins), 0 (B wins) or
1/2 (a tie, including verdicts that flip with the order); a dropped verdict (judge setting
`inconsistent: drop`) is left out. The win rate is the mean outcome; the 95% interval is the
percentile bootstrap over prompts (seeded, so the same outcomes give the same interval). A scorer
can decide instead of a judge (`verdicts_from_scores`: the higher score wins, equal scores tie).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class WinRate:
    win_rate: float
    """Mean outcome: wins + ties / 2 over judged prompts."""
    ci_low: float
    ci_high: float
    """The 95% percentile-bootstrap interval of the win rate."""
    wins: int
    losses: int
    ties: int
    dropped: int
    mean_p: float
    """Mean judge probability that A is better (order-averaged)."""
    position_consistency: float
    """Fraction of judged prompts whose verdict did not flip with the order."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_ci(outcomes: list[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `outcomes` (resampling them with replacement)."""
    x = torch.tensor(outcomes, dtype=torch.float64)
    if x.numel() == 0:
        return float("nan"), float("nan")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n_boot, x.numel()), generator=gen)
    means = x[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


def win_rate_from_verdicts(verdicts: list[Any], seed: int = 0) -> WinRate:
    """Summarize PairwiseVerdicts (a = model A's response) as a WinRate."""
    outcomes = []
    wins = losses = ties = dropped = 0
    for v in verdicts:
        if v.winner is None:
            dropped += 1
        elif v.winner == "a":
            wins += 1
            outcomes.append(1.0)
        elif v.winner == "b":
            losses += 1
            outcomes.append(0.0)
        else:
            ties += 1
            outcomes.append(0.5)
    lo, hi = bootstrap_ci(outcomes, seed=seed)
    kept = [v for v in verdicts if v.winner is not None]
    return WinRate(sum(outcomes) / len(outcomes) if outcomes else float("nan"), lo, hi, wins, losses, ties, dropped,
                   sum(v.p_a for v in kept) / len(kept) if kept else float("nan"),
                   sum(v.consistent for v in verdicts) / len(verdicts) if verdicts else float("nan"))


def judge_win_rate(judge: Any, prompts: list[list[dict[str, str]]], responses_a: list[str], responses_b: list[str],
                   seed: int = 0) -> tuple[WinRate, list[Any]]:
    """The judge's win rate of A over B on these prompts, and the per-prompt verdicts. A pairwise
    judge compares the two; a pointwise judge scores both and the higher expected score wins
    (p_a = 1, 0 or 1/2; equal scores are a tie)."""
    if judge.cfg.mode == "pairwise":
        verdicts = judge.pairwise(prompts, responses_a, responses_b)
    else:
        sa, sb = judge.pointwise(prompts, responses_a), judge.pointwise(prompts, responses_b)
        verdicts = verdicts_from_scores([x.score for x in sa], [y.score for y in sb],
                                        [[r for r in (x.rationale, y.rationale) if r] for x, y in zip(sa, sb)])
    return win_rate_from_verdicts(verdicts, seed), verdicts


def verdicts_from_scores(scores_a: list[float], scores_b: list[float],
                         rationales: list[list[str]] | None = None) -> list[Any]:
    """One PairwiseVerdict per pair of scores: the higher score wins (p_a = 1 or 0), equal scores
    tie (p_a = 1/2). Always position-consistent (nothing was shown in an order)."""
    from rlhflab.rewards.judge import PairwiseVerdict

    if len(scores_a) != len(scores_b):
        raise ValueError(f"{len(scores_a)} scores for A but {len(scores_b)} for B")
    out = []
    for i, (x, y) in enumerate(zip(scores_a, scores_b)):
        p = 1.0 if x > y else 0.0 if x < y else 0.5
        out.append(PairwiseVerdict(p, "a" if p == 1 else "b" if p == 0 else "tie", True, p, None,
                                   rationales[i] if rationales else []))
    return out
