"""Generation-based evaluation of a policy on a prompt set: the core of `rlhflab eval` and of the
`evaluation:` section of a training run (docs/evaluation.md).

A policy answers every prompt with the one rollout engine (`rollout.HFGenerator`, prompts rendered
by `data.tokenize_examples` exactly as the online trainers render them), the completions are
scored by the configured scorers (`rewards.build_scorer`, the samples built by
`rewards.inputs.samples_from`, as in training rounds), and `evaluate_policy` reports:

- `reward` (the scorers' weighted sum), each scorer's raw mean, `accuracy` for verifiers;
- completion lengths (`length/...`);
- `kl`: the exact KL(pi || ref) summed over each completion's tokens, and the `kl/k1` log ratio;
- `win_rates`: each policy over the reference's completions, by a judge or by the first scorer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rlhflab.config_eval import VERIFIERS, EvalConfig
from rlhflab.errors import DataError
from rlhflab.rollout.base import Completion, SamplingParams

ADAPTER_DISABLED = "adapter-disabled"
"""`reference=` value meaning: the LoRA policy itself with its adapter disabled."""

Advance = Callable[[int], None]


# --------------------------------------------------------------------------- prompts


@dataclass
class EvalPrompts:
    """A validated prompt set (no tokenizer needed yet)."""

    path: str
    examples: list[Any]
    """`data.PromptExample`s: prompt messages, the row's other columns in `extra`, the row number."""
    values: list[Any]
    """Each example's `prompt` value as the file had it (a string or messages)."""
    warnings: list[str] = field(default_factory=list)


def read_eval_prompts(data: str | tuple[str, ...], rewards: tuple[Any, ...], limit: int | None = None) -> EvalPrompts:
    """Read and check the prompt file(s): every row has a prompt and the columns the scorers read
    (DataError naming file, row and field). Nothing is tokenized or loaded."""
    from rlhflab.data import read_records
    from rlhflab.data.load import concat_loaded, load_files
    from rlhflab.rewards.inputs import check_scorer_columns

    def check(loaded: Any) -> None:
        check_scorer_columns(loaded, rewards, " (or name the scorer's column, e.g. --reward math:answer_field=solution)")

    loaded = concat_loaded(load_files(data, "prompt", "auto", check if rewards else None))
    examples = loaded.examples[:limit] if limit else loaded.examples
    if not examples:
        raise DataError(loaded.path, None, "prompt", "no prompt to evaluate")
    original: dict[tuple[str | None, int], Any] = {}
    for path in ([data] if isinstance(data, str) else list(data)):
        for rec in read_records(path):
            original[(None if isinstance(data, str) else str(path), rec.row)] = rec.data.get("prompt")
    values = [original.get((getattr(ex, "source", None), ex.row)) for ex in examples]
    values = [v if v is not None else list(ex.prompt) for v, ex in zip(values, examples)]
    return EvalPrompts(loaded.path, examples, values, list(loaded.warnings))


def tokenize_prompts(prompts: EvalPrompts, tokenizer: Any, data_cfg: Any) -> list[Any]:
    """One TokenizedPrompt per example (None where the prompt is longer than the prompt limit and
    was dropped), rendered with the chat template exactly as the online trainers render prompts."""
    from rlhflab.data import tokenize_examples

    out = []
    for ex in prompts.examples:
        items, _ = tokenize_examples([ex], tokenizer, data_cfg, path=getattr(ex, "source", None) or prompts.path)
        out.append(items[0] if items else None)
    return out


# --------------------------------------------------------------------------- generation and scoring


@dataclass
class PolicyEval:
    """One policy's evaluation: its completions (prompt-major, `n` per prompt), their scores, and
    the metrics; `kl` / `k1` hold the per-completion values (None without a reference)."""

    completions: list[Completion]
    scores: Any  # rewards.Scores | None
    metrics: dict[str, float]
    kl: Tensor | None = None
    k1: Tensor | None = None


def sampling_params(cfg: EvalConfig) -> SamplingParams:
    return SamplingParams(cfg.n, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k, tuple(cfg.stop or ()))


def generate_and_score(policy: nn.Module, tokenizer: Any, prompts: list[Any], cfg: EvalConfig, scorer: Any,
                       advance: Advance | None = None) -> tuple[list[Completion], Any]:
    """Completions of `prompts` (TokenizedPrompts) and their Scores (None without a scorer), a
    chunk of max(1, batch_size // n) prompts at a time (chunk c sampled with seed
    `chunk_seed(seed, c)`); `advance(k)` after each chunk of k prompts. With the online algorithm's
    generation batch size (up to 256) the chunks are those of its own evaluation
    (OnlineAlgorithm.evaluate), so greedy decoding sees the same padded batches."""
    from rlhflab.data.collate import pad_id_of
    from rlhflab.data.template import end_of_turn_ids
    from rlhflab.rewards.base import Scores
    from rlhflab.rewards.inputs import samples_from
    from rlhflab.rollout import HFGenerator
    from rlhflab.sampling import chunk_seed

    engine = HFGenerator(policy, tokenizer, end_of_turn_ids(tokenizer), cfg.batch_size, pad_id_of(tokenizer))
    params = sampling_params(cfg)
    per_chunk = max(1, cfg.batch_size // cfg.n)
    completions: list[Completion] = []
    values: list[Tensor] = []
    parts: dict[str, list[Tensor]] = {}
    for c, start in enumerate(range(0, len(prompts), per_chunk)):
        chunk = prompts[start:start + per_chunk]
        got = engine.generate([p.input_ids for p in chunk], params, chunk_seed(cfg.seed, c))
        if scorer is not None:
            sc = scorer.score(samples_from(chunk, got))
            values.append(sc.values.float().cpu())
            for k, v in sc.parts.items():
                parts.setdefault(k, []).append(v.float().cpu())
        for comp in got:
            comp.prompt_index += start
        completions += got
        if advance is not None:
            advance(len(chunk))
    scores = Scores(torch.cat(values), {k: torch.cat(v) for k, v in parts.items()}) if scorer is not None else None
    return completions, scores


# --------------------------------------------------------------------------- metrics


def quantile(x: Tensor, q: float) -> float:
    """The q-quantile with linear interpolation between order statistics (numpy's default):
    position q (N - 1) in the sorted values."""
    return float(torch.quantile(x.double(), q))


def length_metrics(completions: list[Completion]) -> dict[str, float]:
    """Token lengths (generated tokens, the end-of-turn token included when it ended the turn):
    mean, median, p90, max; the fraction cut at max_new_tokens; the mean length in characters."""
    tokens = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float64)
    return {"length/mean": float(tokens.mean()), "length/median": quantile(tokens, 0.5),
            "length/p90": quantile(tokens, 0.9), "length/max": float(tokens.max()),
            "length/truncated": sum(c.finish_reason == "length" for c in completions) / len(completions),
            "length/chars_mean": sum(len(c.text) for c in completions) / len(completions)}


def score_metrics(scores: Any, rewards: tuple[Any, ...], n: int) -> dict[str, float]:
    """`reward` (mean weighted sum), each scorer's raw mean and its parts, and for verifiers
    (math, code): `accuracy` = fraction of completions every verifier accepts (score 1),
    `accuracy/<name>` per verifier when there are several, `pass@n` = fraction of prompts with at
    least one accepted completion (n > 1)."""
    from rlhflab.rewards import scorer_names

    out = {"reward": float(scores.values.double().mean())}
    out.update({k: float(v.double().mean()) for k, v in scores.parts.items()})
    verifiers = [name for name, c in zip(scorer_names(rewards), rewards) if c.type in VERIFIERS]
    if not verifiers:
        return out
    accepted = {name: scores.parts[name] > 0.5 for name in verifiers}  # (N,) bool each
    every = torch.stack(list(accepted.values())).all(0)
    out["accuracy"] = float(every.double().mean())
    if len(verifiers) > 1:
        out.update({f"accuracy/{k}": float(v.double().mean()) for k, v in accepted.items()})
    if n > 1:
        out[f"pass@{n}"] = float(every.view(-1, n).any(1).double().mean())
    return out


def sample_scores(scores: Any, i: int) -> dict[str, float]:
    """Completion i's scores: each scorer's raw score (and parts), plus `reward` when several
    scorers are combined."""
    if scores is None:
        return {}
    out = {k: float(v[i]) for k, v in scores.parts.items()}
    if len([k for k in scores.parts if "/" not in k]) > 1:
        out["reward"] = float(scores.values[i])
    return out


# --------------------------------------------------------------------------- KL to the reference


@torch.no_grad()
def kl_to_reference(policy: nn.Module, reference: nn.Module | str, prompts: list[Any], completions: list[Completion],
                    pad_id: int, batch_size: int = 16, advance: Advance | None = None) -> tuple[Tensor, Tensor]:
    """Per completion (C,) float64: the exact KL summed over its tokens and the k1 log ratio,

        kl = sum_t sum_v pi(v | x, y_<t) [log pi(v | x, y_<t) - log ref(v | x, y_<t)]
        k1 = sum_t [log pi(y_t | x, y_<t) - log ref(y_t | x, y_<t)]

    with pi and ref the models' own distributions (softmax of the logits, temperature 1) at the
    prefixes of the completion y of prompt x (every generated token, the end-of-turn one included).
    `reference` is a causal LM of the same vocabulary, or ADAPTER_DISABLED for a LoRA policy."""
    from rlhflab.algorithms.rollout_batch import build_batch
    from rlhflab.models.load import eval_mode
    from rlhflab.models.logps import completion_logits, reference_context
    from rlhflab.ops import logps_of_targets, policy_ref_kl

    ref_model = None if isinstance(reference, str) and reference == ADAPTER_DISABLED else reference
    device = next(policy.parameters()).device
    ids = [p.input_ids for p in prompts]
    kl, k1 = [], []
    with eval_mode(policy):
        for s in range(0, len(completions), batch_size):
            chunk = completions[s:s + batch_size]
            lm = build_batch(ids, chunk, pad_id).lm.to(device)
            tok = completion_logits(policy, lm)
            with reference_context(policy, ref_model) as ref:
                ref_tok = completion_logits(ref, lm)
            if ref_tok.logits.shape[-1] != tok.logits.shape[-1]:
                raise ValueError(f"the reference has {ref_tok.logits.shape[-1]} logits per token, the policy "
                                 f"{tok.logits.shape[-1]}: KL needs one vocabulary")
            per_token = policy_ref_kl(tok.logits, ref_tok.logits)  # (N,)
            ratio = logps_of_targets(tok.logits.float(), tok.targets) - logps_of_targets(ref_tok.logits.float(), tok.targets)
            kl.append(tok.sums(per_token.double(), len(chunk)))
            k1.append(tok.sums(ratio.double(), len(chunk)))
            if advance is not None:
                advance(len(chunk))
    return torch.cat(kl).cpu(), torch.cat(k1).cpu()


# --------------------------------------------------------------------------- one policy


def evaluate_policy(policy: nn.Module, tokenizer: Any, prompts: list[Any], cfg: EvalConfig, scorer: Any,
                    reference: nn.Module | str | None = None, progress: Any = None, label: str = "policy") -> PolicyEval:
    """Generate, score and measure one policy on tokenized `prompts`; with a `reference` (and
    `cfg.kl`) also the KL to it. `progress` (a rich Progress) gets a task per phase. Runs without
    gradients and leaves the policy's train/eval mode and the global RNG as they were."""
    from rlhflab.data.collate import pad_id_of
    from rlhflab.models.load import eval_mode

    with eval_mode(policy), torch.no_grad():
        advance = _task(progress, f"{label}: generating", len(prompts))
        completions, scores = generate_and_score(policy, tokenizer, prompts, cfg, scorer, advance)
        metrics = score_metrics(scores, cfg.rewards, cfg.n) if scores is not None else {}
        metrics.update(length_metrics(completions))
        kl = k1 = None
        if reference is not None and cfg.kl:
            advance = _task(progress, f"{label}: KL to the reference", len(completions))
            kl, k1 = kl_to_reference(policy, reference, prompts, completions, pad_id_of(tokenizer),
                                     cfg.kl_batch_size, advance)
            metrics["kl"], metrics["kl/k1"] = float(kl.mean()), float(k1.mean())
    return PolicyEval(completions, scores, metrics, kl, k1)


def _task(progress: Any, description: str, total: int) -> Advance | None:
    if progress is None:
        return None
    task = progress.add_task(description, total=total)
    return lambda k: progress.advance(task, k)


# --------------------------------------------------------------------------- win rate


def win_rate(a: PolicyEval, b: PolicyEval, prompts: list[Any], rewards: tuple[Any, ...], judge: Any = None,
             seed: int = 0) -> tuple[dict[str, Any], list[Any]]:
    """Win rate of A over B (B = the reference) on the same prompts and samples: completion i of A
    against completion i of B. By `judge` (a rewards.judge.Judge; pairwise or pointwise), else by
    the first scorer's raw score (higher wins, equal ties). The bootstrap interval resamples
    prompts (each with the mean outcome of its samples), since samples of one prompt are not
    independent; with one sample per prompt that is the plain bootstrap. Returns (the WinRate as a
    dict with `by`, the per-pair verdicts)."""
    from rlhflab.eval.winrate import bootstrap_ci, judge_win_rate, win_rate_from_verdicts, verdicts_from_scores
    from rlhflab.rewards import scorer_names

    if len(a.completions) != len(b.completions):
        raise ValueError(f"{len(a.completions)} completions of A but {len(b.completions)} of B")
    if judge is not None:
        messages = [prompts[c.prompt_index].messages for c in a.completions]
        wr, verdicts = judge_win_rate(judge, messages, [c.text.strip() for c in a.completions],
                                      [c.text.strip() for c in b.completions], seed)
        by = f"judge {judge.cfg.model} ({judge.cfg.mode})"
    else:
        if a.scores is None or b.scores is None or not rewards:
            raise ValueError("a win rate without a judge needs a scorer")
        first = scorer_names(rewards)[0]
        verdicts = verdicts_from_scores(a.scores.parts[first].tolist(), b.scores.parts[first].tolist())
        wr, by = win_rate_from_verdicts(verdicts, seed), f"scorer {first}"
    out = {"by": by, **wr.as_dict()}
    per_prompt: dict[int, list[float]] = {}
    for c, v in zip(a.completions, verdicts):
        if v.winner is not None:
            per_prompt.setdefault(c.prompt_index, []).append({"a": 1.0, "b": 0.0}.get(v.winner, 0.5))
    if any(len(o) > 1 for o in per_prompt.values()):
        out["ci_low"], out["ci_high"] = bootstrap_ci([sum(o) / len(o) for o in per_prompt.values()], seed=seed)
    return out, verdicts


def win_metrics(wr: dict[str, Any]) -> dict[str, float]:
    """The flat metrics of a win rate (for metrics.jsonl and best_metric)."""
    return {"win_rate": wr["win_rate"], "win_rate/ci_low": wr["ci_low"], "win_rate/ci_high": wr["ci_high"]}


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
