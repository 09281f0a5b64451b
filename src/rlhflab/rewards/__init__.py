"""Rewards, costs, verifiers: everything behind the one `Scorer` interface (docs/rewards.md).

`build_scorer` turns a list of `ScorerConfig` into a `WeightedSum`; `required_columns` tells the
trainer which dataset columns the scorers read, so every row can be checked before a model loads.
"""

from __future__ import annotations

from rlhflab.config_rl import ScorerConfig
from rlhflab.errors import ConfigError
from rlhflab.rewards.base import Sample, Scorer, Scores
from rlhflab.rewards.combine import WeightedSum
from rlhflab.rewards.math import extract_answer

__all__ = ["Sample", "Scores", "Scorer", "WeightedSum", "build_scorer", "extract_answer",
           "required_columns", "scorer_names"]


def scorer_names(configs: tuple[ScorerConfig, ...]) -> list[str]:
    """Each scorer's label: its `name`, else its type, with _2, _3, ... for repeated types."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for c in configs:
        if c.name:
            names.append(c.name)
            continue
        seen[c.type] = seen.get(c.type, 0) + 1
        names.append(c.type if seen[c.type] == 1 else f"{c.type}_{seen[c.type]}")
    if len(set(names)) != len(names):
        raise ConfigError(f"scorer names must be unique, got {names}; set `name` on the repeated ones")
    return names


def _one(c: ScorerConfig, device: str, trust_remote_code: bool) -> Scorer:
    if c.type == "rules":
        from rlhflab.rewards.rules import RuleBasedScorer

        return RuleBasedScorer(c.rules)
    if c.type == "math":
        from rlhflab.rewards.math import MathVerifier

        return MathVerifier(c.answer_field, c.tolerance)
    if c.type == "code":
        from rlhflab.rewards.code import CodeSandbox

        return CodeSandbox(c.tests_field, c.timeout_s, c.memory_mb, c.max_output_bytes)
    if c.type == "python":
        from rlhflab.rewards.python_fn import PythonScorer

        if not c.function:
            raise ConfigError("type python needs `function: 'module:function'` or 'file.py:function'")
        return PythonScorer(c.function)
    if c.type == "reward_model":
        from rlhflab.rewards.reward_model import RewardModelScorer

        if not c.path:
            raise ConfigError("type reward_model needs `path`, the model folder")
        return RewardModelScorer(c.path, c.batch_size, device, trust_remote_code, system_prompt=c.system_prompt)
    if c.type == "judge":
        from rlhflab.rewards.judge import JudgeScorer

        if c.judge is None:
            raise ConfigError("type judge needs a `judge:` section (model, mode, ...)")
        return JudgeScorer(c.judge, c.reference_field, device, trust_remote_code)
    if c.type == "rbr":
        from rlhflab.rewards.rbr import build_rbr

        return build_rbr(c, device, trust_remote_code)
    if c.type == "ensemble":
        from rlhflab.rewards.ensemble import EnsembleScorer

        return EnsembleScorer.from_config(c, device, trust_remote_code)
    raise ConfigError(f"unknown scorer type {c.type!r} (reward_model, rules, math, code, python, judge, rbr, ensemble)")


def build_scorer(configs: tuple[ScorerConfig, ...], device: str = "cpu", trust_remote_code: bool = False) -> WeightedSum:
    """The weighted sum of the configured scorers (always a WeightedSum, even for one)."""
    if not configs:
        raise ConfigError("at least one scorer is needed")
    members = []
    for name, c in zip(scorer_names(configs), configs):
        scorer = _one(c, device, trust_remote_code)
        scorer.name = name
        members.append((name, scorer, float(c.weight), c.normalize))
    return WeightedSum(members)


def required_columns(configs: tuple[ScorerConfig, ...]) -> dict[str, str]:
    """{dataset column: the scorer(s) that read it} (math: answer_field, code: tests_field)."""
    need: dict[str, list[str]] = {}
    for name, c in zip(scorer_names(configs), configs):
        column = {"math": c.answer_field, "code": c.tests_field}.get(c.type)
        if c.type == "rbr" and any(p.applies_to for p in c.propositions):
            column = "category"  # rlhflab.rewards.rbr.CATEGORY_FIELD, read by `applies_to`
        if column:
            need.setdefault(column, []).append(name)
    return {column: ", ".join(names) for column, names in need.items()}
