"""Rule-based rewards (Mu et al. 2024, "Rule Based Rewards for Language Model Safety", OpenAI,
arXiv 2411.01111).

Each rule maps a completion to a value in [0, 1]; the reward is sum_k weight_k * value_k, and
`parts` holds each rule's raw value under its name (RuleConfig.name, else f"{kind}{index}").
The paper's propositions are graded by an LLM and its weights fitted; these rules are
deterministic text checks with configured weights.

- regex:   1 when `pattern` matches anywhere in the completion (re.search), else 0.
- format:  1 when `pattern` matches the whole stripped completion (re.fullmatch), else 0.
           Use (?s) in the pattern to let `.` cross lines.
- keyword: case-insensitive substring test of `keywords`; `mode` any | all | none.
- length:  n = len(completion) characters; 1 for min_chars <= n <= max_chars, n / min_chars
           below, max(0, (2 max_chars - n) / max_chars) above (0 at 0 and at 2 * max_chars).
- refusal: 1 when the stripped completion starts with one of `REFUSAL_PREFIXES` (case-insensitive,
           curly apostrophes read as straight ones).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from rlhflab.config_rl import RuleConfig
from rlhflab.errors import ConfigError
from rlhflab.rewards.base import Sample, Scorer, Scores

REFUSAL_PREFIXES: tuple[str, ...] = (
    "i can't", "i cannot", "i can not", "i won't", "i will not", "i'm not able to", "i am not able to",
    "i'm unable to", "i am unable to", "i'm sorry, but", "i am sorry, but", "i'm sorry, i can't",
    "sorry, but", "sorry, i can't", "i apologize, but", "i must decline", "i'm afraid i can't",
    "unfortunately, i can't", "unfortunately, i cannot", "as an ai", "as a language model",
    "i'm not going to help", "i refuse",
)
"""Openings that read as a refusal (the completion is compared after strip() and lower())."""


def length_value(n: int, min_chars: int, max_chars: int) -> float:
    """1 inside [min_chars, max_chars], linear to 0 at 0 chars and at 2 * max_chars."""
    if min_chars <= n <= max_chars:
        return 1.0
    if n < min_chars:
        return n / min_chars
    return max(0.0, (2 * max_chars - n) / max_chars) if max_chars > 0 else 0.0


def is_refusal(text: str) -> bool:
    """The completion opens with a refusal phrase of `REFUSAL_PREFIXES`."""
    t = text.strip().lower().replace("\u2019", "'")
    return t.startswith(REFUSAL_PREFIXES)


def rule_fn(rule: RuleConfig, name: str) -> Callable[[str], float]:
    kind = rule.kind
    if kind in ("regex", "format"):
        if not rule.pattern:
            raise ConfigError(f"rule '{name}': kind {kind} needs `pattern`")
        try:
            pattern = re.compile(rule.pattern)
        except re.error as e:
            raise ConfigError(f"rule '{name}': invalid regular expression {rule.pattern!r}: {e}") from e
        if kind == "regex":
            return lambda text: 1.0 if pattern.search(text) else 0.0
        return lambda text: 1.0 if pattern.fullmatch(text.strip()) else 0.0
    if kind == "keyword":
        if not rule.keywords:
            raise ConfigError(f"rule '{name}': kind keyword needs `keywords`")
        words = tuple(k.lower() for k in rule.keywords)
        test = {"any": any, "all": all, "none": lambda hits: not any(hits)}.get(rule.mode)
        if test is None:
            raise ConfigError(f"rule '{name}': mode must be any, all or none, got {rule.mode!r}")
        return lambda text: 1.0 if test(w in text.lower() for w in words) else 0.0
    if kind == "length":
        if not 0 <= rule.min_chars <= rule.max_chars:
            raise ConfigError(f"rule '{name}': length needs 0 <= min_chars <= max_chars")
        return lambda text: length_value(len(text), rule.min_chars, rule.max_chars)
    if kind == "refusal":
        return lambda text: 1.0 if is_refusal(text) else 0.0
    raise ConfigError(f"rule '{name}': unknown kind {kind!r} (regex, format, keyword, length, refusal)")


class RuleBasedScorer(Scorer):
    """sum_k weight_k * rule_k(completion); parts[name_k] = rule_k(completion)."""

    name = "rules"

    def __init__(self, rules: tuple[RuleConfig, ...]):
        if not rules:
            raise ConfigError("a rules scorer needs at least one rule")
        self.names = [r.name or f"{r.kind}{i}" for i, r in enumerate(rules)]
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"rule names must be unique, got {self.names}")
        self.weights = [float(r.weight) for r in rules]
        self.fns = [rule_fn(r, n) for r, n in zip(rules, self.names)]

    def score(self, samples: list[Sample]) -> Scores:
        parts = {n: torch.tensor([fn(s.completion) for s in samples], dtype=torch.float32)
                 for n, fn in zip(self.names, self.fns)}
        values = torch.zeros(len(samples), dtype=torch.float32)
        for n, w in zip(self.names, self.weights):
            values = values + w * parts[n]
        return Scores(values, parts)
