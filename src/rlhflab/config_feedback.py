"""Settings of AI feedback: LLM judges (docs/judges.md).

Kept apart from config_rl.py for size; the same rules apply: every field documented, unknown keys
are errors, everything is checked (`check_judge`) before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlhflab.errors import ConfigError


@dataclass(frozen=True)
class JudgeConfig:
    """A local causal LM used as a judge through a prompt template.

    The verdict is read from the judge's constrained output: the probabilities of the allowed
    answer strings (the scale's numbers, or the two labels) at a position the harness writes,
    after the judge's own rationale when `rationale` is on. A completion under judgment cannot
    write its own score there."""

    model: str = "smollm2-135m"
    """The judge: a local Hugging Face causal LM folder or the embedded `smollm2-135m`."""
    mode: Literal["pointwise", "pairwise"] = "pointwise"
    """pointwise: one score on the `scale` per response; pairwise: which of two responses is better."""
    template: str | None = None
    """The judge prompt (a file path or the text) with {prompt} and {response} (pointwise) or
    {response_a} and {response_b} (pairwise), and optionally {min} {max} {labels} {principle};
    None = the built-in template of the mode (rlhflab.rewards.judge_templates)."""
    system_prompt: str | None = None
    """A system message before the judge prompt (None = none)."""
    scale: tuple[int, int] = (1, 5)
    """pointwise: the allowed integer scores, min..max inclusive (the answer strings "1".."5")."""
    labels: tuple[str, str] = ("A", "B")
    """pairwise: the names of the first and second response, also the allowed answers."""
    verdict_prefix: str | None = None
    """The text the harness writes at the start of the verdict (after the rationale), right before
    the answer is read; None = "Score:" (pointwise) or "Better response:" (pairwise)."""
    rationale: bool = False
    """Let the judge write a free-text rationale (greedy, up to max_rationale_tokens) before the
    verdict is read; it is returned with the verdict."""
    max_rationale_tokens: int = 96
    """Longest rationale, in tokens."""
    swap: bool = True
    """pairwise: judge both orders (A, B) and (B, A) and average; the verdicts of the two orders
    must agree (position consistency)."""
    inconsistent: Literal["tie", "drop", "average"] = "tie"
    """pairwise with swap: a verdict that flips with the order counts as a tie (p = 0.5), is
    dropped, or is decided by the order-averaged probability (p1 + p2) / 2 (average: a constant
    preference for one position cancels; for weak, position-biased judges)."""
    parse: Literal["constrained", "text"] = "constrained"
    """constrained: the probabilities of the allowed answers; text: let the judge write freely and
    read the first score / label in its text (unprotected; for comparison only)."""
    escape: bool = True
    """Neutralize the template's own delimiters inside judged texts (a response cannot close its
    block and start a fake instruction); off only to measure what it protects against."""
    max_length: int = 1024
    """Longest judge prompt in tokens: longer responses are cut from the end (the prompt is kept)."""
    batch_size: int = 8
    """Judge prompts per forward pass."""
    cache: str | None = None
    """A JSONL file caching verdicts by (judge, prompt, response) hash across runs (None = in memory)."""


def check_judge(key: str, j: JudgeConfig) -> None:
    """Checks of a judge's settings that need no model (the template is read when it is a file)."""
    lo, hi = j.scale
    if j.mode == "pointwise" and not lo < hi:
        raise ConfigError(f"{key}.scale must be (min, max) with min < max, got {j.scale}")
    if j.mode == "pointwise" and hi - lo > 100:
        raise ConfigError(f"{key}.scale spans {hi - lo + 1} values; a judge reads at most 101 allowed answers")
    a, b = j.labels
    if not a.strip() or not b.strip() or a.strip() == b.strip():
        raise ConfigError(f"{key}.labels must be two different non-empty strings, got {j.labels}")
    if j.max_rationale_tokens < 1 or j.batch_size < 1 or j.max_length < 64:
        raise ConfigError(f"{key}: max_rationale_tokens and batch_size must be >= 1 and max_length >= 64")
    from rlhflab.rewards.judge_templates import load_template, missing_fields

    text = load_template(j.template, j.mode)
    missing = missing_fields(text, j.mode)
    if missing:
        where = f"template {j.template}" if j.template else "the template"
        raise ConfigError(f"{key}: {where} lacks {', '.join('{' + m + '}' for m in missing)} "
                          f"(a {j.mode} judge template needs them)")


@dataclass(frozen=True)
class PropositionConfig:
    """One proposition of a Rule-Based Reward (Mu et al. 2024, arXiv 2411.01111): a statement about
    a completion ("refuses", "is judgmental", "gives the harmful detail") graded in [0, 1], either
    by a judge (the probability that the answer to `question` is Yes) or by a text rule. The
    reward is bias + sum_k w_k * feature_k with weights fitted by `rlhflab rbr fit` (docs/rewards.md)."""

    name: str = ""
    """The feature's name (required, unique in its scorer): the key of its weight in the weights
    file and of its log, reward/<scorer>/<name>."""
    kind: Literal["judge", "regex", "keyword", "format", "length", "refusal"] = "judge"
    """judge: P(Yes) of the scorer's `judge` asked `question` about the prompt and the response;
    regex | keyword | format | length | refusal: the rule of that kind of a `rules` scorer
    (1.0 when it fires, else 0.0; length gives a value in [0, 1])."""
    question: str | None = None
    """judge: a yes/no question about the response, e.g. 'Does the response refuse the request?'."""
    pattern: str | None = None
    """regex / format: a Python regular expression."""
    keywords: tuple[str, ...] = ()
    """keyword: the words or phrases to look for (case-insensitive)."""
    mode: Literal["any", "all", "none"] = "any"
    """keyword: fire when any / all / none of the keywords appear."""
    min_chars: int = 0
    """length: the shortest full-score completion, in characters."""
    max_chars: int = 1000
    """length: the longest full-score completion, in characters."""
    applies_to: tuple[str, ...] = ()
    """Grade the proposition only on prompts whose row has one of these values in the `category`
    column (e.g. [harmful]); elsewhere the feature is 0. Empty = every prompt."""
    weight: float = 0.0
    """The weight used when the scorer has no `rbr_weights` file (a fitted file replaces it)."""


def check_propositions(key: str, props: tuple[PropositionConfig, ...]) -> None:
    """Checks of an rbr scorer's propositions that need no model: names present and unique, each
    kind's own keys given, regular expressions that compile."""
    import re

    if not props:
        raise ConfigError(f"{key}: type rbr needs a non-empty `propositions` list")
    names = [p.name for p in props]
    for j, p in enumerate(props):
        where = f"{key}[{j}]"
        if not p.name or not p.name.strip() or "/" in p.name:
            raise ConfigError(f"{where}: every proposition needs a `name` (no '/'), e.g. refuses")
        if names.count(p.name) > 1:
            raise ConfigError(f"{where}: proposition name '{p.name}' is used twice; names must be unique")
        if p.kind == "judge" and not (p.question and p.question.strip()):
            raise ConfigError(f"{where} ('{p.name}'): kind judge needs `question`, e.g. 'Does the response refuse?'")
        if p.kind in ("regex", "format"):
            if not p.pattern:
                raise ConfigError(f"{where} ('{p.name}'): kind {p.kind} needs `pattern`")
            try:
                re.compile(p.pattern)
            except re.error as e:
                raise ConfigError(f"{where} ('{p.name}'): invalid regular expression {p.pattern!r}: {e}") from None
        if p.kind == "keyword" and not p.keywords:
            raise ConfigError(f"{where} ('{p.name}'): kind keyword needs `keywords`")
        if p.kind == "length" and not 0 <= p.min_chars <= p.max_chars:
            raise ConfigError(f"{where} ('{p.name}'): length needs 0 <= min_chars <= max_chars")


# --------------------------------------------------------------------------- self-rewarding


class _Module:
    """A module imported on first attribute access. config.py and config_rl.py import this module,
    so their classes (DPOConfig, ScorerConfig) are named through these and resolved only when a
    config is built, after every module has loaded: no import cycle, whatever is imported first."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import importlib

        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._name), attr)


_config = _Module("rlhflab.config")
_config_rl = _Module("rlhflab.config_rl")


@dataclass(frozen=True)
class SelfJudgeConfig(JudgeConfig):
    """The judge of the self-rewarding loop: the settings of a `JudgeConfig`, with the defaults of
    Self-Rewarding Language Models (arXiv 2401.10020): its additive 0-5 LLM-as-a-judge prompt,
    pointwise. The model is never loaded from here: the current policy judges itself."""

    model: str | None = None  # type: ignore[assignment]
    """Not used (leave it unset): each iteration's policy is its own judge."""
    template: str | None = "self_rewarding"
    """The judge prompt; default: the built-in self-rewarding prompt (additive 5-point rubric)."""
    scale: tuple[int, int] = (0, 5)
    """pointwise: the allowed integer scores (the paper's rubric gives 0 to 5 points)."""


@dataclass(frozen=True)
class SelfRewardingConfig:
    """Settings of `algorithm: self_rewarding` (docs/self_rewarding.md): for each iteration the
    current policy samples candidates, judges them itself, and one DPO run on best-vs-worst pairs
    (plus optional Con-J judge-training pairs) gives the next policy."""

    iterations: int = 2
    """Self-rewarding iterations k; iteration i's final/ is the policy of iteration i + 1."""
    prompts_per_iteration: int | None = None
    """Prompts of data.train used per iteration: consecutive slices of one seeded permutation
    (fresh prompts each iteration while they last, then wrapping around); None = all prompts."""
    num_candidates: int = 4
    """Candidate responses sampled per prompt (N in the paper)."""
    max_new_tokens: int = 128
    """Longest candidate response, in tokens."""
    temperature: float = 0.7
    """Sampling temperature of the candidates (> 0; the paper samples with 0.7)."""
    top_p: float = 0.9
    """Nucleus sampling mass of the candidates (the paper uses 0.9)."""
    generation_batch_size: int = 32
    """Sequences generated together."""
    judge: SelfJudgeConfig = field(default_factory=SelfJudgeConfig)
    """The LLM-as-a-judge settings (template, scale, mode, rationale, ...); `model` is not used."""
    min_gap: float = 0.0
    """Keep a prompt's best-vs-worst pair only when the judge separates them by at least this
    (pointwise: score points; pairwise: P(best beats worst) - 0.5); equal scores are always skipped."""
    steps_per_iteration: int | None = None
    """DPO optimizer steps of each iteration (batch_size pairs each); None = max_steps."""
    dpo: _config.DPOConfig = field(default_factory=lambda: _config.DPOConfig())
    """The DPO step of each iteration: any pairwise loss and its settings, as in `algorithm: dpo`.
    The reference is always the iteration's starting policy."""
    con_j: bool = False
    """Also train the judge: Con-J contrastive judgments (arXiv 2410.03742) from the iteration's
    pairs, mixed into the DPO data (the policy is the judge)."""
    con_j_samples: int = 4
    """Con-J: judgments sampled per pair and per order (>= 3, so that a majority and a dissenting
    judgment can both occur in one order)."""
    con_j_temperature: float = 1.0
    """Con-J: sampling temperature of the judgments (> 0)."""
    con_j_max_tokens: int = 64
    """Con-J: longest sampled rationale, in tokens."""
    con_j_max_pairs: int | None = None
    """Con-J: judge at most this many of the iteration's response pairs (a seeded subsample; the
    cost is 2 * con_j_samples sampled judgments per pair); None = all of them."""
    con_j_mix: float = 1.0
    """Con-J: at most this many judge-training rows per response pair in the DPO data (a seeded
    subsample when there are more); 0 = build and count them (con_j.jsonl) but train on none."""
    gold: tuple[_config_rl.ScorerConfig, ...] = ()
    """Optional known-good scorers (any scorer type): the chosen and rejected of every kept pair are
    scored, never trained on, to measure how often the self-judge agrees with the gold."""


def check_self_rewarding(cfg: Any) -> None:
    """Checks of a RunConfig with `algorithm: self_rewarding`, before any model loads."""
    from rlhflab.config import _validate_dpo
    from rlhflab.config_rl import _check_scorers

    s: SelfRewardingConfig = cfg.self_rewarding
    key = "self_rewarding"
    if s.iterations < 1:
        raise ConfigError(f"{key}.iterations must be at least 1, got {s.iterations}")
    if s.prompts_per_iteration is not None and s.prompts_per_iteration < 1:
        raise ConfigError(f"{key}.prompts_per_iteration must be at least 1 (or null = all prompts)")
    if s.num_candidates < 2:
        raise ConfigError(f"{key}.num_candidates must be at least 2 (a pair needs two responses), got {s.num_candidates}")
    from rlhflab.config_rl import check_sampling

    check_sampling(lambda f: f"{key}.{'generation_batch_size' if f == 'batch_size' else f}", s.max_new_tokens,
                   s.generation_batch_size, s.temperature, s.top_p, why="greedy candidates would be identical")
    if not s.min_gap >= 0:
        raise ConfigError(f"{key}.min_gap must be >= 0, got {s.min_gap}")
    if s.steps_per_iteration is not None and s.steps_per_iteration < 1:
        raise ConfigError(f"{key}.steps_per_iteration must be at least 1 (or null = max_steps)")
    if s.judge.model is not None:
        raise ConfigError(f"{key}.judge.model is not used: each iteration's policy judges itself; remove the key")
    check_judge(f"{key}.judge", s.judge)
    try:
        _validate_dpo(s.dpo)
    except ConfigError as e:
        raise ConfigError(f"{key}.{e}") from None
    if s.con_j:
        if s.con_j_samples < 3:
            raise ConfigError(f"{key}.con_j_samples must be at least 3: a training row needs a majority judgment "
                              f"and a dissenting one in the same order, got {s.con_j_samples}")
        if not s.con_j_temperature > 0 or s.con_j_max_tokens < 1 or s.con_j_mix < 0:
            raise ConfigError(f"{key}: con_j_temperature must be > 0, con_j_max_tokens >= 1 and con_j_mix >= 0")
        if s.con_j_max_pairs is not None and s.con_j_max_pairs < 1:
            raise ConfigError(f"{key}.con_j_max_pairs must be at least 1 (or null = every pair)")
        losses = [s.dpo.loss] if isinstance(s.dpo.loss, str) else list(s.dpo.loss)
        if "rpo" in losses:
            raise ConfigError(f"{key}: dpo.loss rpo needs judge scores on every row, which Con-J rows lack; "
                              "use another loss or con_j: false")
    _check_scorers(f"{key}.gold", s.gold, False)
    if cfg.ref_model is not None:
        raise ConfigError("ref_model is not used by self_rewarding: each iteration's reference is its starting "
                          "policy; remove the key")
    if cfg.data.eval is not None or cfg.data.eval_fraction > 0:
        raise ConfigError("self_rewarding does not use data.eval / data.eval_fraction: data.train holds the "
                          "prompts and each iteration trains on its own pairs")
