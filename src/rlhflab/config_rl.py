"""Settings of the online algorithms: generation, scorers, advantages and policy losses.

Kept apart from config.py (which holds the run and the offline sections) only for size; the same
rules apply: every field documented, unknown keys are errors, everything is checked before any
model loads. Fields left `None` take the algorithm's own default (`RL_DEFAULTS`), so the
configuration written to the run directory shows the values that really ran.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from rlhflab.config_feedback import JudgeConfig, PropositionConfig, check_judge, check_propositions
from rlhflab.config_vllm import VLLMConfig, check_vllm
from rlhflab.errors import ConfigError


@dataclass(frozen=True)
class RuleConfig:
    """One rule of a rule-based reward (Rule-Based Rewards, OpenAI 2024): it fires (1.0) or not (0.0);
    the reward is the weighted sum of the rules."""

    kind: Literal["regex", "keyword", "format", "length", "refusal"] = "regex"
    """regex: the completion contains a match of `pattern`; format: the whole (stripped) completion
    matches `pattern`; keyword: `keywords` appear (`mode` any | all | none, case-insensitive);
    length: a score in [0, 1] that is 1 within [`min_chars`, `max_chars`] and falls linearly to 0 at
    0 and at 2 * max_chars; refusal: the completion reads as a refusal ("I can't help with...")."""
    weight: float = 1.0
    """Weight of this rule in the sum (negative weights penalize)."""
    name: str | None = None
    """Label in the logs (reward/<name>); default: the kind and its index."""
    pattern: str | None = None
    """regex / format: a Python regular expression."""
    keywords: tuple[str, ...] = ()
    """keyword: the words or phrases to look for."""
    mode: Literal["any", "all", "none"] = "any"
    """keyword: fire when any / all / none of the keywords appear."""
    min_chars: int = 0
    """length: the shortest full-score completion, in characters."""
    max_chars: int = 1000
    """length: the longest full-score completion, in characters."""


@dataclass(frozen=True)
class ScorerConfig:
    """One scorer; several in a list are added up with their weights."""

    type: Literal["reward_model", "rules", "math", "code", "python", "judge", "rbr", "ensemble"] = "math"
    """reward_model: a scalar-head model folder (from `algorithm: reward_model`); rules: weighted
    rules; math: extract the final answer and compare it numerically with the row's
    `answer_field`; code: run the completion's code against the row's `tests_field` in a sandboxed
    subprocess; python: any function `f(samples) -> list[float]` given by `function`; judge: an LLM
    judge (`judge`), pointwise (its expected score) or pairwise against the row's
    `reference_field` (the probability the sample is better); rbr: a Rule-Based Reward, bias +
    sum_k w_k * proposition_k with weights fitted by `rlhflab rbr fit` (`propositions`,
    `rbr_weights`); ensemble: several reward models, mean - uncertainty_coef * std of their scores
    with an out-of-distribution flag (`paths` or `calibration`; docs/rewards.md, "Ensembles and
    uncertainty")."""
    weight: float = 1.0
    """Weight in the sum of scorers."""
    normalize: Literal["none", "batch", "group"] = "none"
    """Before weighting: none; batch = z-score over the rollout batch; group = z-score within
    each prompt's group of samples."""
    name: str | None = None
    """Label in the logs (reward/<name>); default: the type (and index when repeated)."""
    path: str | None = None
    """reward_model: the model folder."""
    function: str | None = None
    """python: 'package.module:function' or 'path/to/file.py:function'."""
    answer_field: str = "answer"
    """math: the dataset column holding the reference answer."""
    tests_field: str = "tests"
    """code: the dataset column holding test code (asserts) run after the completion's code."""
    rules: tuple[RuleConfig, ...] = ()
    """rules: the rules."""
    tolerance: float = 1.0e-6
    """math: relative tolerance of the numeric comparison."""
    timeout_s: float = 5.0
    """code: wall-clock limit per program (also a CPU-time limit)."""
    memory_mb: int = 512
    """code: address-space limit per program."""
    max_output_bytes: int = 65536
    """code: stdout + stderr beyond this are cut (and the program fails)."""
    batch_size: int = 16
    """reward_model, ensemble: sequences per forward pass (per member)."""
    paths: tuple[str, ...] = ()
    """ensemble: the member model folders (two or more), scored as they are; or give `calibration`."""
    calibration: str | None = None
    """ensemble: the ensemble JSON written by `rlhflab ensemble train` / `calibrate`: its members, and
    once calibrated each member's held-out mean (subtracted from its scores) and the OOD threshold.
    Give this or `paths`, not both."""
    uncertainty_coef: float = 0.0
    """ensemble: k >= 0 of the reward mean - k * std (std = the members' sample std; 0 = the mean)."""
    ood_threshold: float | None = None
    """ensemble: flag a sample as out of distribution (part `ood` = 1.0) when its std is above this;
    None = the calibrated threshold of `calibration`, else no flag."""
    judge: JudgeConfig | None = None
    """judge: the judge's settings (docs/judges.md)."""
    reference_field: str = "reference"
    """judge in pairwise mode: the dataset column holding the response each sample is compared with."""
    propositions: tuple[PropositionConfig, ...] = ()
    """rbr: the propositions (judge questions or text rules), each one feature in [0, 1]; judge
    questions are asked to `judge` (docs/rewards.md, "Safety rewards")."""
    rbr_weights: str | None = None
    """rbr: the JSON file of fitted weights written by `rlhflab rbr fit`; None = each proposition's
    `weight` and bias 0."""
    system_prompt: str | None = None
    """reward_model: a system message put before every prompt when scoring: the condition of a
    conditional reward model (COOL RLHF, arXiv 2403.17297), e.g. the harmlessness preference;
    merged into the prompt's own system message when it has one (rlhflab.data.conditions)."""


@dataclass(frozen=True)
class GenerationConfig:
    """How the rollout engine samples."""

    backend: Literal["hf", "vllm"] = "hf"
    """hf: the training model itself with a KV cache (no weight copy, no sync needed); vllm: a
    colocated vLLM engine on the GPU that receives the trainer's weights before each rollout
    (settings in `vllm`; docs/vllm.md)."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Settings of the vLLM engine (used when backend is vllm)."""
    num_generations: int = 8
    """Samples per prompt (the group size of GRPO-style estimators)."""
    max_new_tokens: int = 64
    """Longest completion, in tokens."""
    temperature: float = 1.0
    """Sampling temperature (> 0 for training rollouts; the policy's log-probs use the same)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = off)."""
    stop: tuple[str, ...] = ()
    """Stop strings (the completion ends after the first one); the end-of-turn token always stops."""
    batch_size: int = 64
    """Sequences generated together (memory bound)."""


@dataclass(frozen=True)
class RLConfig:
    """Settings of ppo, safe_ppo and the critic-free family (grpo, dr_grpo, rloo, reinforce_pp, remax)."""

    rewards: tuple[ScorerConfig, ...] = ()
    """The scorers whose weighted sum is the reward (required)."""
    costs: tuple[ScorerConfig, ...] = ()
    """safe_ppo: the scorers whose weighted sum is the cost (required there)."""
    gold: tuple[ScorerConfig, ...] = ()
    """Optional held-out gold metric: scored on every rollout but never optimized; the run warns
    when the reward rises while the gold score falls."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Sampling settings of the rollouts."""
    advantage: Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "remax"] | None = None
    """Advantage estimator; default per algorithm (ppo/safe_ppo: gae, grpo: grpo, ...)."""
    scale_rewards: bool | None = None
    """grpo: divide by the group's reward std (False = Dr.GRPO's advantage)."""
    reinforce_pp_baseline: Literal["none", "group"] = "none"
    """reinforce_pp: subtract each group's mean reward before the global normalization."""
    gamma: float = 1.0
    """Discount of the per-token returns (gae, reinforce_pp)."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool | None = None
    """Normalize advantages over the rollout batch (mean 0, std 1); default on for gae."""
    kl_coef: float | None = None
    """Weight beta of the KL to the reference (ppo 0.05 in the reward; grpo 0.04 in the loss; 0 = no
    reference model is run)."""
    log_kl: bool = True
    """Run the reference on every rollout to log the KL even when kl_coef is 0."""
    kl_estimator: Literal["k1", "k2", "k3"] | None = None
    """Schulman's estimator of the per-token KL: k1 in the reward, k3 in the loss by default."""
    kl_in: Literal["reward", "loss"] | None = None
    """Apply the KL penalty in the reward (InstructGPT) or as a loss term (GRPO)."""
    aggregation: Literal["token-mean", "sequence-mean-token-mean", "sequence-mean-token-sum",
                         "sequence-mean-token-sum-norm"] | None = None
    """How per-token losses become one number (formulas in docs/policy_losses.md)."""
    clip_low: float = 0.2
    """PPO clip range below: the ratio is clipped at 1 - clip_low."""
    clip_high: float | None = None
    """PPO clip range above (DAPO's clip-higher, e.g. 0.28); None = clip_low."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1: for negative advantages the loss is capped at -c * A."""
    ratio_level: Literal["token", "sequence"] = "token"
    """token: per-token importance ratios (PPO); sequence: GSPO's length-normalized sequence ratio."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss)."""
    epochs: int = 1
    """Passes over each rollout batch (PPO epochs)."""
    minibatches: int = 1
    """Optimizer steps per pass; one rollout batch feeds epochs * minibatches optimizer steps."""
    value_coef: float = 0.5
    """ppo: weight of the value loss."""
    value_clip: float | None = 0.2
    """ppo: clip range of the value prediction around the old value (None = unclipped)."""
    critic_model: str | None = None
    """ppo: the critic's initial weights; None = the first reward model's folder, else the policy's."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and sample more prompts to refill the batch."""
    max_refill_rounds: int = 4
    """dynamic_sampling: extra generation rounds before training on a smaller batch."""
    cost_threshold: float = 0.0
    """safe_ppo: the limit d on the expected episode cost, J_C = E[C] - d <= 0."""
    lagrange_init: float = 1.0
    """safe_ppo: initial Lagrange multiplier lambda (kept >= 0 through log lambda)."""
    lagrange_lr: float = 0.1
    """safe_ppo: learning rate of log lambda (gradient ascent on lambda * J_C)."""
    shared_prompt_forward: bool = True
    """Run each distinct prompt of a micro-batch through the model once and the G completions on
    its KV cache (same numbers as one row per sample, far fewer prompt tokens computed)."""
    ratio_check_tol: float = 1.0e-3
    """At the first update every token's importance ratio must be 1 within this; else the run stops
    (the trainer's and the sampler's log-probs disagree)."""
    engine_is_cap: float | None = None
    """Truncated importance sampling against the rollout engine (TIS): each token's policy loss is
    multiplied by min(exp(old_logp - engine_logp), cap), old_logp the trainer's log-prob of the
    sampling weights; None = off, typical 2.0 with vLLM (docs/vllm.md)."""
    zero_variance_warn_steps: int = 5
    """Warn when every group had equal rewards for this many consecutive steps (0 = never)."""


@dataclass(frozen=True)
class OnlineDPOConfig:
    """Settings of online_dpo: sample from the current policy, score, pair best vs worst, DPO step."""

    rewards: tuple[ScorerConfig, ...] = ()
    """The scorers that rank the samples (required)."""
    gold: tuple[ScorerConfig, ...] = ()
    """Optional held-out gold metric, monitored as in ppo."""
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(num_generations=4))
    """Sampling settings (num_generations >= 2 samples per prompt)."""
    loss: str = "dpo"
    """Any pairwise loss of `rlhflab.losses.preference.PAIRWISE`."""
    beta: float = 0.1
    """The loss's beta."""
    min_gap: float = 0.0
    """Skip a prompt when best - worst reward is not above this (no preference)."""


@dataclass(frozen=True)
class BestOfNConfig:
    """Settings of best_of_n: rejection-sampling fine-tuning (sample n, keep the best, SFT on it)."""

    rewards: tuple[ScorerConfig, ...] = ()
    """The scorers that rank the samples (required)."""
    gold: tuple[ScorerConfig, ...] = ()
    """Optional held-out gold metric, monitored as in ppo."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Sampling settings."""
    min_reward: float | None = None
    """Keep the best sample only when its reward is at least this (None = always keep it)."""


CRITIC_FREE = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "remax")
RL_ALGORITHMS = ("ppo", "safe_ppo") + CRITIC_FREE

RL_DEFAULTS: dict[str, dict[str, object]] = {
    "ppo": {"advantage": "gae", "kl_coef": 0.05, "kl_in": "reward", "kl_estimator": "k1",
            "aggregation": "token-mean", "whiten_advantages": True, "scale_rewards": True},
    "safe_ppo": {"advantage": "gae", "kl_coef": 0.05, "kl_in": "reward", "kl_estimator": "k1",
                 "aggregation": "token-mean", "whiten_advantages": False, "scale_rewards": True},
    "grpo": {"advantage": "grpo", "kl_coef": 0.04, "kl_in": "loss", "kl_estimator": "k3",
             "aggregation": "sequence-mean-token-mean", "whiten_advantages": False, "scale_rewards": True},
    "dr_grpo": {"advantage": "grpo", "kl_coef": 0.0, "kl_in": "loss", "kl_estimator": "k3",
                "aggregation": "sequence-mean-token-sum-norm", "whiten_advantages": False, "scale_rewards": False},
    "rloo": {"advantage": "rloo", "kl_coef": 0.05, "kl_in": "reward", "kl_estimator": "k1",
             "aggregation": "sequence-mean-token-mean", "whiten_advantages": False, "scale_rewards": True},
    "reinforce_pp": {"advantage": "reinforce_pp", "kl_coef": 0.01, "kl_in": "reward", "kl_estimator": "k1",
                     "aggregation": "token-mean", "whiten_advantages": False, "scale_rewards": True},
    "remax": {"advantage": "remax", "kl_coef": 0.05, "kl_in": "reward", "kl_estimator": "k1",
              "aggregation": "sequence-mean-token-mean", "whiten_advantages": False, "scale_rewards": True},
}
"""Each algorithm's defaults for the RLConfig fields left None (sources in docs/online_rl.md)."""


def resolve_rl(algorithm: str, s: RLConfig) -> RLConfig:
    """`s` with every None field that has a default for `algorithm` filled in."""
    from dataclasses import replace

    fill = {k: v for k, v in RL_DEFAULTS[algorithm].items() if getattr(s, k) is None}
    return replace(s, **fill)


def _check_scorers(key: str, scorers: tuple[ScorerConfig, ...], required: bool) -> None:
    if required and not scorers:
        raise ConfigError(f"{key} is required: a list of scorers, e.g. [{{type: math}}] or "
                          f"[{{type: reward_model, path: runs/rm/final}}]")
    for i, s in enumerate(scorers):
        where = f"{key}[{i}]"
        if s.type == "reward_model" and not s.path:
            raise ConfigError(f"{where}: type reward_model needs `path`, the reward model's folder")
        if s.type == "python" and (not s.function or ":" not in s.function):
            raise ConfigError(f"{where}: type python needs `function: 'module:function'` or 'file.py:function'")
        if s.type == "rules" and not s.rules:
            raise ConfigError(f"{where}: type rules needs a non-empty `rules` list")
        for j, r in enumerate(s.rules):
            if r.kind in ("regex", "format") and not r.pattern:
                raise ConfigError(f"{where}.rules[{j}]: kind {r.kind} needs `pattern`")
            if r.kind == "keyword" and not r.keywords:
                raise ConfigError(f"{where}.rules[{j}]: kind keyword needs `keywords`")
            if r.kind == "length" and not 0 <= r.min_chars <= r.max_chars:
                raise ConfigError(f"{where}.rules[{j}]: length needs 0 <= min_chars <= max_chars")
        if s.type == "judge":
            if s.judge is None:
                raise ConfigError(f"{where}: type judge needs a `judge:` section (model, mode, ...; docs/judges.md)")
            check_judge(f"{where}.judge", s.judge)
        if s.type == "rbr":
            _check_rbr(where, s)
        if s.type == "ensemble":
            from pathlib import Path

            from rlhflab.rewards.ensemble import check_member_paths, read_ensemble_file

            if bool(s.paths) == bool(s.calibration):
                raise ConfigError(f"{where}: type ensemble needs `paths` (two or more model folders) or "
                                  "`calibration` (the JSON of `rlhflab ensemble train`), exactly one of them")
            if not (s.uncertainty_coef >= 0 and (s.ood_threshold is None or s.ood_threshold >= 0)):
                raise ConfigError(f"{where}: ensemble needs uncertainty_coef >= 0 and ood_threshold >= 0")
            if s.paths:
                check_member_paths([Path(p) for p in s.paths], f"{where}.paths")
            else:
                try:
                    read_ensemble_file(s.calibration)
                except ConfigError as e:
                    raise ConfigError(f"{where}.calibration: {e}") from None
        elif s.paths or s.calibration or s.uncertainty_coef or s.ood_threshold is not None:
            raise ConfigError(f"{where}: paths, calibration, uncertainty_coef and ood_threshold apply to type ensemble only")
        if s.system_prompt is not None and s.type != "reward_model":
            raise ConfigError(f"{where}: system_prompt applies to type reward_model only (a conditional RM's condition)")
        if s.type == "code" and not (s.timeout_s > 0 and s.memory_mb >= 16 and s.max_output_bytes > 0):
            raise ConfigError(f"{where}: code needs timeout_s > 0, memory_mb >= 16, max_output_bytes > 0")


def _check_rbr(where: str, s: ScorerConfig) -> None:
    """An rbr scorer: valid propositions, a judge for judge questions, an existing weights file
    (its contents are checked against the propositions when the scorer is built)."""
    check_propositions(f"{where}.propositions", s.propositions)
    if any(p.kind == "judge" for p in s.propositions):
        if s.judge is None:
            raise ConfigError(f"{where}: judge propositions need a `judge:` section, e.g. judge: {{model: smollm2-135m}}")
        check_judge(f"{where}.judge", s.judge)
    if s.rbr_weights is not None:
        from pathlib import Path

        if not Path(s.rbr_weights).is_file():
            raise ConfigError(f"{where}: rbr_weights file not found: {s.rbr_weights} "
                              "(write it with `rlhflab rbr fit`, or drop the key to use each proposition's weight)")


def check_sampling(flag: "Callable[[str], str]", max_new_tokens: int, batch_size: int, temperature: float,
                   top_p: float, greedy_ok: bool = False, why: str = "the samples of a prompt would be identical") -> None:
    """Checks of sampling settings shared by every command and config that generates; `flag`
    names a field as the user wrote it (e.g. "--top-p" or "grpo.generation.top_p")."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError(f"{flag('max_new_tokens')} and {flag('batch_size')} must be at least 1")
    if not math.isfinite(temperature) or temperature < 0 or (temperature == 0 and not greedy_ok):
        raise ConfigError(f"{flag('temperature')} must be > 0 ({why}), got {temperature}" if not greedy_ok
                          else f"{flag('temperature')} must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"{flag('top_p')} must be in (0, 1], got {top_p}")


def cli_flag(field: str) -> str:
    """A settings field as its command-line flag: top_p -> --top-p."""
    return "--" + field.replace("_", "-")


def _check_generation(key: str, g: GenerationConfig, min_n: int) -> None:
    if g.num_generations < min_n:
        raise ConfigError(f"{key}.num_generations must be at least {min_n}, got {g.num_generations}")
    check_sampling(lambda f: f"{key}.{f}", g.max_new_tokens, g.batch_size, g.temperature, g.top_p,
                   why="training rollouts sample; greedy is for evaluation")
    if g.top_k < 0:
        raise ConfigError(f"{key}.top_k must be >= 0")
    if g.backend == "vllm":
        check_vllm(key, g)


def validate_online(algorithm: str, section: object, batch_size: int, micro_batch_size: int, max_steps: int) -> None:
    """Checks of an online algorithm's section (run before any model loads)."""
    if isinstance(section, RLConfig):
        s = resolve_rl(algorithm, section)
        _check_scorers(f"{algorithm}.rewards", s.rewards, True)
        _check_scorers(f"{algorithm}.costs", s.costs, algorithm == "safe_ppo")
        _check_scorers(f"{algorithm}.gold", s.gold, False)
        group_needed = s.advantage in ("grpo", "dr_grpo", "rloo") or (s.advantage == "reinforce_pp" and s.reinforce_pp_baseline == "group")
        _check_generation(f"{algorithm}.generation", s.generation, 2 if group_needed else 1)
        if s.epochs < 1 or s.minibatches < 1:
            raise ConfigError(f"{algorithm}.epochs and {algorithm}.minibatches must be at least 1")
        if max_steps % (s.epochs * s.minibatches):
            raise ConfigError(
                f"max_steps ({max_steps}) must be a multiple of {algorithm}.epochs * {algorithm}.minibatches "
                f"({s.epochs * s.minibatches}): each rollout batch feeds that many optimizer steps")
        n = batch_size * s.generation.num_generations
        if n % s.minibatches:
            raise ConfigError(f"the rollout batch ({batch_size} prompts x {s.generation.num_generations} samples = {n}) "
                              f"must split evenly into {algorithm}.minibatches = {s.minibatches}")
        if not (s.clip_low > 0 and (s.clip_high is None or s.clip_high > 0)):
            raise ConfigError(f"{algorithm}.clip_low and clip_high must be positive")
        if s.dual_clip is not None and s.dual_clip <= 1:
            raise ConfigError(f"{algorithm}.dual_clip must be > 1 (the paper uses 3), got {s.dual_clip}")
        if (s.kl_coef or 0) < 0 or s.entropy_coef < 0 or s.value_coef < 0:
            raise ConfigError(f"{algorithm}.kl_coef, entropy_coef and value_coef must be >= 0")
        if not (0 <= s.gamma <= 1 and 0 <= s.lam <= 1):
            raise ConfigError(f"{algorithm}.gamma and {algorithm}.lam must be in [0, 1]")
        if s.advantage == "gae" and algorithm not in ("ppo", "safe_ppo"):
            raise ConfigError(f"advantage gae needs a critic: use algorithm ppo (not {algorithm})")
        if algorithm in ("ppo", "safe_ppo") and s.advantage != "gae":
            raise ConfigError(f"{algorithm} trains a critic for GAE; for advantage {s.advantage} use algorithm {s.advantage}")
        if s.lagrange_init <= 0 or s.lagrange_lr < 0:
            raise ConfigError(f"{algorithm}.lagrange_init must be > 0 and lagrange_lr >= 0")
        if s.engine_is_cap is not None and not s.engine_is_cap >= 1.0:
            raise ConfigError(f"{algorithm}.engine_is_cap must be >= 1 (typical 2.0; .inf = untruncated), or null to "
                              f"turn the correction off; got {s.engine_is_cap}")
    elif isinstance(section, (OnlineDPOConfig, BestOfNConfig)):
        _check_scorers(f"{algorithm}.rewards", section.rewards, True)
        _check_scorers(f"{algorithm}.gold", section.gold, False)
        _check_generation(f"{algorithm}.generation", section.generation, 2 if isinstance(section, OnlineDPOConfig) else 1)
        if isinstance(section, OnlineDPOConfig):
            from rlhflab.losses.preference import PAIRWISE

            if section.loss not in PAIRWISE:
                from rlhflab.errors import did_you_mean

                raise ConfigError(f"online_dpo.loss '{section.loss}' is not a pairwise loss; available: "
                                  f"{', '.join(sorted(PAIRWISE))}." + did_you_mean(section.loss, PAIRWISE))
            if not section.beta > 0:
                raise ConfigError("online_dpo.beta must be positive")
