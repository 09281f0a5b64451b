"""Settings of generation-based evaluation: `rlhflab eval` and the `evaluation:` section of a run.

One frozen `EvalConfig` serves both. Fields left `None` take the run's own value when there is a
run (`resolve_for_run`: the online algorithm's rewards and generation settings, `data.eval`), else
the command's default. Everything is checked here (`check_eval`, `check_run_evaluation`) before
any model loads, including that `best_metric` names a metric the evaluation will produce.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from rlhflab.config_feedback import JudgeConfig
from rlhflab.config_rl import ScorerConfig
from rlhflab.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from rlhflab.config import RunConfig

VERIFIERS = ("math", "code")
"""Scorer types whose score is a verdict (1 = accepted, 0 = rejected): they give `accuracy`."""
LENGTH_METRICS = ("length/mean", "length/median", "length/p90", "length/max", "length/truncated",
                  "length/chars_mean")
KL_METRICS = ("kl", "kl/k1")
WIN_METRICS = ("win_rate", "win_rate/ci_low", "win_rate/ci_high")
RESERVED = ("reward", "accuracy", "kl", "win_rate", "length")
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class EvalConfig:
    """Generate completions of held-out prompts and measure them (docs/evaluation.md)."""

    data: str | tuple[str, ...] | None = None
    """Prompts: a file (or list of files) with a `prompt` column (a string or chat messages) plus
    the columns the scorers read (e.g. `answer` for math). None = the run's `data.eval`."""
    every: int = 0
    """In training: optimizer steps between evaluations (0 = only after the last step); an
    evaluation always runs after the last step."""
    at_start: bool = False
    """In training: also evaluate the initial policy before the first step (step 0 in evals.jsonl,
    `eval_before` in summary.json; it competes for `best_metric` too)."""
    rewards: tuple[ScorerConfig, ...] = ()
    """Scorers (the same settings as training rewards). Empty = the online algorithm's `rewards`
    in a run (none for offline algorithms: then only lengths, KL and a judge's win rate)."""
    max_new_tokens: int | None = None
    """Longest completion in tokens; None = the online algorithm's `generation.max_new_tokens`, else 128."""
    temperature: float = 0.0
    """0 = greedy decoding (deterministic); > 0 samples."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Keep the k most likely tokens when sampling (0 = off)."""
    n: int = 1
    """Completions per prompt (> 1 needs temperature > 0); accuracy and rewards average over all of them."""
    seed: int = 0
    """Seed of sampled generation: equal settings and weights give equal completions."""
    stop: tuple[str, ...] | None = None
    """Stop strings; None = the online algorithm's `generation.stop` (else none). The end-of-turn
    token always stops."""
    batch_size: int | None = None
    """Sequences generated together; None = the online algorithm's `generation.batch_size`, else 64."""
    kl: bool = True
    """Measure KL(policy || reference) on the completions (needs a reference model)."""
    kl_batch_size: int = 16
    """Completions per forward pass of the KL measurement."""
    win_rate: bool = False
    """Win rate over the reference's completions of the same prompts: by `judge` when set, else by
    the first scorer (higher wins, ties count 1/2). In training the reference's completions are
    generated once, before the first step. `rlhflab eval` computes it whenever it has a reference."""
    judge: JudgeConfig | None = None
    """A pairwise or pointwise LLM judge for the win rate (docs/judges.md); None = the first scorer."""
    limit: int | None = None
    """Evaluate only the first N prompts."""
    samples: int = 4
    """In training: completions of the first `samples` prompts kept in each evals.jsonl row."""
    best_metric: str | None = None
    """In training: keep RUN_DIR/best/ (a Hugging Face folder) for the evaluation with the best value
    of this metric (e.g. accuracy, reward, math, kl); None = no best checkpoint."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a higher (max) or lower (min) `best_metric` is better."""


def field_namer(prefix: str):
    """How a field is named in messages: `--top-p` on the command line (prefix '--'), else
    `evaluation.top_p`."""
    if prefix == "--":
        return lambda f: "--" + {"rewards": "reward"}.get(f, f).replace("_", "-")
    return lambda f: f"{prefix}.{f}"


def check_eval(cfg: EvalConfig, prefix: str = "--") -> None:
    """Checks of the settings alone (no file is read)."""
    from rlhflab.config_feedback import check_judge
    from rlhflab.config_rl import _check_scorers, check_sampling

    flag = field_namer(prefix)
    check_sampling(flag, 1, 1, cfg.temperature, cfg.top_p, greedy_ok=True)
    for key in ("max_new_tokens", "batch_size", "limit"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{flag(key)} must be at least 1, got {value}")
    if cfg.n < 1:
        raise ConfigError(f"{flag('n')} must be at least 1, got {cfg.n}")
    if cfg.n > 1 and cfg.temperature == 0:
        raise ConfigError(f"{flag('n')} {cfg.n} with greedy decoding gives {cfg.n} identical completions; "
                          f"set {flag('temperature')} > 0 or {flag('n')} 1")
    for key in ("top_k", "every", "samples"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{flag(key)} must be >= 0, got {getattr(cfg, key)}")
    if cfg.kl_batch_size < 1:
        raise ConfigError(f"{flag('kl_batch_size')} must be at least 1, got {cfg.kl_batch_size}")
    if cfg.data == ():
        raise ConfigError(f"{flag('data')} is an empty list; give a file or a list of files")
    _check_scorers(flag("rewards"), cfg.rewards, False)
    _check_names(cfg.rewards, flag("rewards"))
    if cfg.judge is not None:
        check_judge(flag("judge"), cfg.judge)
    if cfg.judge is not None and not cfg.win_rate and prefix != "--":
        raise ConfigError(f"{flag('judge')} is set but {flag('win_rate')} is false; the judge only decides win rates")


def _check_names(rewards: tuple[ScorerConfig, ...], where: str) -> None:
    from rlhflab.rewards import scorer_names

    for name in scorer_names(rewards):
        if name.split("/")[0] in RESERVED or name.startswith("pass@"):
            raise ConfigError(f"{where}: a scorer named '{name}' would clash with the metric of that name; "
                              f"set another `name` (reserved: {', '.join(RESERVED)}, pass@N)")


def metric_names(cfg: EvalConfig, kl: bool, win_rate: bool) -> list[str]:
    """Every metric an evaluation with these settings reports (sub-parts of a scorer, such as the
    rules of a rule-based reward, come in addition as `<scorer>/<part>`)."""
    from rlhflab.rewards import scorer_names

    names = scorer_names(cfg.rewards)
    out = (["reward"] if names else []) + names
    verifiers = [n for n, c in zip(names, cfg.rewards) if c.type in VERIFIERS]
    if verifiers:
        out.append("accuracy")
        out += [f"accuracy/{n}" for n in verifiers] if len(verifiers) > 1 else []
        out += [f"pass@{cfg.n}"] if cfg.n > 1 else []
    out += list(LENGTH_METRICS)
    out += list(KL_METRICS) if kl else []
    out += list(WIN_METRICS) if win_rate and (names or cfg.judge is not None) else []
    return out


def check_best_metric(cfg: EvalConfig, kl: bool, win_rate: bool, where: str) -> None:
    """`best_metric` names a metric these settings produce (or a part `<scorer>/<part>`)."""
    if cfg.best_metric is None:
        return
    from rlhflab.rewards import scorer_names

    names = metric_names(cfg, kl, win_rate)
    if cfg.best_metric in names or cfg.best_metric.split("/")[0] in scorer_names(cfg.rewards):
        return
    raise ConfigError(f"{where}.best_metric '{cfg.best_metric}' is not a metric this evaluation reports; "
                      f"it reports {', '.join(names)}." + did_you_mean(cfg.best_metric, names))


# --------------------------------------------------------------------------- inside a run


def resolve_for_run(ev: EvalConfig, run: "RunConfig") -> EvalConfig:
    """`ev` with every None field (and empty rewards) filled from the run: the online algorithm's
    rewards and generation settings, the run's `data.eval`."""
    section = run.algo
    gen = getattr(section, "generation", None)
    fill: dict[str, Any] = {}
    if not ev.rewards:
        fill["rewards"] = tuple(getattr(section, "rewards", ()) or ())
    if ev.data is None:
        fill["data"] = run.data.eval
    if ev.max_new_tokens is None:
        fill["max_new_tokens"] = gen.max_new_tokens if gen else DEFAULT_MAX_NEW_TOKENS
    if ev.batch_size is None:
        fill["batch_size"] = gen.batch_size if gen else DEFAULT_BATCH_SIZE
    if ev.stop is None:
        fill["stop"] = tuple(gen.stop) if gen else ()
    return replace(ev, **fill)


def resolve_defaults(ev: EvalConfig) -> EvalConfig:
    """`ev` with the command's defaults for the fields a run would otherwise fill."""
    return replace(ev, max_new_tokens=DEFAULT_MAX_NEW_TOKENS if ev.max_new_tokens is None else ev.max_new_tokens,
                   batch_size=DEFAULT_BATCH_SIZE if ev.batch_size is None else ev.batch_size,
                   stop=() if ev.stop is None else ev.stop)


def check_run_evaluation(run: "RunConfig") -> None:
    """The `evaluation:` section of a run config, resolved against the run (before any model loads)."""
    if run.algorithm == "reward_model":
        raise ConfigError("evaluation: algorithm reward_model trains a scorer, not a policy; there is nothing to "
                          "generate with. Evaluate a policy trained with it instead (rewards: [{type: reward_model, ...}])")
    if run.algorithm == "self_rewarding" and run.evaluation.data is None:
        raise ConfigError("evaluation.data is required with algorithm self_rewarding (its DPO iterations have no data.eval)")
    ev = resolve_for_run(run.evaluation, run)
    check_eval(ev, "evaluation")
    if ev.data is None:
        raise ConfigError("evaluation needs prompts: set evaluation.data (a prompt file) or data.eval")
    if ev.win_rate and not ev.rewards and ev.judge is None:
        raise ConfigError("evaluation.win_rate needs a judge (evaluation.judge) or a scorer (evaluation.rewards)")
    check_best_metric(ev, ev.kl, ev.win_rate, "evaluation")
