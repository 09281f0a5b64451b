"""`rlhflab sample`: turn prompts into training data by sampling from a policy and scoring.

Two modes (docs/sampling.md):

- best_of_n: n samples per prompt, keep the highest-reward one (rejection-sampling fine-tuning;
  Touvron et al. 2023 "Llama 2", Dong et al. 2023 "RAFT"). Rows: prompt_completion, SFT-ready
  (the reward goes in `best_reward`: a `reward` column would make the file the `scored` format).
- rso: n samples per prompt, Statistical Rejection Sampling (Liu et al. 2023, "Statistical
  Rejection Sampling Improves Preference Optimization", arXiv 2309.06657, Algorithm 1) keeps k of
  them as draws from the estimated optimal policy, and consecutive accepted samples are paired and
  labelled by the reward ("rso-sample-first-round-rank", Sec. 5.2). Rows: pairwise, with
  chosen_reward / rejected_reward, ready for `algorithm: dpo` (any loss, rpo included).

The selection math (`rso_select`, `rso_pairs`, `best_of_n_select`) imports only torch; the
command (`run_sample`) loads the model, generates with `rollout.HFGenerator` and scores with
`rewards.build_scorer`, exactly as the online algorithms do.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rlhflab.atomic import write_jsonl_atomic  # noqa: F401 (callers import it from here)
from rlhflab.config_rl import ScorerConfig
from rlhflab.errors import ConfigError, DataError, did_you_mean
from rlhflab.rewards.inputs import check_scorer_columns, samples_from

# --------------------------------------------------------------------------- the selection math


def rso_select(rewards: Tensor, beta: float, k: int, generator: torch.Generator) -> list[int]:
    """Statistical rejection sampling (RSO, arXiv 2309.06657, Algorithm 1 and Appendix A.1).

    Given candidates y_1..y_n ~ pi_sft(y|x) with rewards r_i, draw (approximately) from the
    optimal policy of the KL-constrained objective max_pi E[r] - beta KL(pi || pi_sft) (eq. 4):

        pi*(y|x) = pi_sft(y|x) exp(r(x, y) / beta) / Z(x)

    Rejection sampling with proposal pi_sft and envelope M pi_sft accepts y with probability
    pi*(y|x) / (M pi_sft(y|x)) = exp((r(x, y) - r_max) / beta) (eq. 14), r_max estimated by the
    largest reward among the candidates not yet accepted. So: repeat until k are accepted or
    none remain: M = max of the remaining rewards; go over the remaining candidates in a random
    order (from `generator`) and accept each with probability exp((r - M) / beta) (u < p with
    u ~ U[0, 1)), removing the accepted ones. Each pass accepts at least the current best.

    Limits: beta -> 0 accepts only rewards equal to the current maximum, i.e. the candidates in
    decreasing reward order (greedy top-k over n; `beta=0` computes this limit exactly);
    beta = inf accepts every candidate in the first pass, in a uniformly random order.

    rewards: (n,) finite. Returns up to min(k, n) distinct indices in acceptance order.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64).detach().cpu()
    if r.dim() != 1:
        raise ValueError(f"rewards must be 1-D (n,), got shape {tuple(r.shape)}")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards must be finite")
    if not beta >= 0:  # also rejects NaN
        raise ValueError(f"beta must be >= 0, got {beta}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    remaining = list(range(r.numel()))
    accepted: list[int] = []
    while len(accepted) < k and remaining:
        rem = r[remaining]  # (m,)
        top = rem.max()
        p = (rem == top).double() if beta == 0 else torch.exp((rem - top) / beta)  # (m,) in (0, 1]
        order = torch.randperm(len(remaining), generator=generator).tolist()
        u = torch.rand(len(remaining), generator=generator, dtype=torch.float64)  # (m,)
        taken: set[int] = set()
        for j in order:
            if u[j] < p[j]:
                taken.add(remaining[j])
                accepted.append(remaining[j])
                if len(accepted) == k:
                    break
        remaining = [i for i in remaining if i not in taken]
    return accepted


def rso_pairs(samples_text: list[str], rewards: list[float], accepted: list[int]) -> list[tuple[int, int]]:
    """Preference pairs from RSO's accepted samples: (accepted[0], accepted[1]), (accepted[2],
    accepted[3]), ... (the paper's "first-round-rank": n accepted give n // 2 pairs, arXiv
    2309.06657 Sec. 5.2), each labelled by the reward: (chosen, rejected) with chosen the higher.

    The paper labels each pair with its pairwise reward-ranking model; here the scorer's rewards
    decide. A pair is skipped when its two rewards are equal (no preference) or its two texts are
    identical (the data loader would drop it); an odd last sample stays unpaired. Indices refer
    to `samples_text` / `rewards`.
    """
    if len(samples_text) != len(rewards):
        raise ValueError(f"{len(samples_text)} texts but {len(rewards)} rewards")
    pairs = []
    for a, b in zip(accepted[0::2], accepted[1::2]):
        if rewards[a] == rewards[b] or samples_text[a] == samples_text[b]:
            continue
        pairs.append((a, b) if rewards[a] > rewards[b] else (b, a))
    return pairs


def best_of_n_select(rewards: Tensor, n: int, min_reward: float | None) -> list[int | None]:
    """Best-of-n: per prompt, the index (into the flat `rewards`) of its highest-reward sample.

    rewards: (P * n,) finite, prompt-major (samples of prompt 0 first, as `Generator.generate`
    returns them). Ties go to the first sample. None for a prompt whose best reward is below
    `min_reward` (None = keep every prompt's best). Returns P entries.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64).detach().cpu().reshape(-1)
    if n < 1 or r.numel() % n:
        raise ValueError(f"{r.numel()} rewards do not split into groups of n = {n}")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards must be finite")
    groups = r.view(-1, n)  # (P, n)
    best = groups.argmax(dim=1)  # (P,) the first maximal index
    out: list[int | None] = []
    for p, j in enumerate(best.tolist()):
        keep = min_reward is None or float(groups[p, j]) >= min_reward
        out.append(p * n + j if keep else None)
    return out


# --------------------------------------------------------------------------- scorer specs

SPEC_TYPES = ("math", "code", "python", "reward_model")
"""Scorer types a `--reward` string can name; `rules` needs `--rewards-config`."""
_SPEC_MAIN = {"python": "function", "reward_model": "path"}
"""The field a spec's first value fills: python:FILE.py:FN, reward_model:FOLDER."""


def parse_scorer_spec(spec: str) -> ScorerConfig:
    """A `--reward` string as a ScorerConfig: TYPE[:VALUE][,key=value...].

    math | math:answer_field=solution,tolerance=1e-3 | code:tests_field=tests |
    python:path/to/file.py:fn | python:package.module:fn,weight=0.5 | reward_model:/path/to/rm.
    Any ScorerConfig key may follow as key=value (weight, normalize, name, batch_size, ...).
    """
    import yaml

    from rlhflab.config import _build, _fix_yaml_numbers

    kind, _, rest = spec.strip().partition(":")
    if kind == "rules":
        raise ConfigError(f"--reward '{spec}': rule-based rewards need a list of rules; put them in a YAML file "
                          "and pass --rewards-config FILE.yaml (docs/sampling.md)")
    if kind not in SPEC_TYPES:
        raise ConfigError(f"--reward '{spec}': unknown scorer type '{kind}'; expected one of "
                          f"{', '.join(SPEC_TYPES)} (or --rewards-config FILE.yaml for any scorer)."
                          + did_you_mean(kind, SPEC_TYPES + ("rules",)))
    parts = [p for p in rest.split(",") if p.strip()] if rest else []
    values: dict[str, Any] = {"type": kind}
    if kind in _SPEC_MAIN and parts and "=" not in parts[0]:
        values[_SPEC_MAIN[kind]] = parts.pop(0).strip()
    for part in parts:
        key, eq, raw = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--reward '{spec}': expected key=value after the type, got '{part}'")
        try:
            values[key.strip()] = _fix_yaml_numbers(yaml.safe_load(raw)) if raw.strip() else ""
        except yaml.YAMLError:
            values[key.strip()] = raw
    try:
        return _build(ScorerConfig, values)
    except ConfigError as e:
        raise ConfigError(f"--reward '{spec}': {e}") from None


def load_rewards_config(path: str | os.PathLike, what: str = "--rewards-config") -> tuple[ScorerConfig, ...]:
    """Scorers from a YAML file: a list of scorer mappings (as under `rewards:` of a training
    config), a mapping whose `rewards` key holds that list, or a training config (the rewards of
    its algorithm's section). Errors name the file and the scorer (`rewards[i].key`)."""
    from rlhflab.config import _build, read_yaml

    p = Path(path)
    tree = read_yaml(p, what)
    if isinstance(tree, dict) and "algorithm" in tree:
        section = tree.get(tree["algorithm"])
        tree = section.get("rewards") if isinstance(section, dict) else None
    elif isinstance(tree, dict) and "rewards" in tree:
        tree = tree["rewards"]
    if not isinstance(tree, list) or not tree or not all(isinstance(x, dict) for x in tree):
        raise ConfigError(f"{p}: expected a list of scorers (or a training config whose `rewards:` holds one), "
                          "e.g. [{type: math}, {type: python, function: 'my_rewards.py:score'}]")
    out = []
    for i, item in enumerate(tree):
        try:
            out.append(_build(ScorerConfig, item, prefix=f"rewards[{i}]."))
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    return tuple(out)


# --------------------------------------------------------------------------- the command's settings


@dataclass(frozen=True)
class SampleConfig:
    """Settings of `rlhflab sample`, checked by `validate` before anything loads."""

    model: str
    """The policy to sample from: a local Hugging Face folder or `smollm2-135m`."""
    data: str
    """Prompts: any file `load_examples(..., "prompt")` reads (other columns feed the scorers)."""
    out: str
    """The JSONL file to write (atomically)."""
    rewards: tuple[ScorerConfig, ...]
    """The scorers whose weighted sum is the reward."""
    mode: Literal["best_of_n", "rso"]
    """best_of_n: keep each prompt's best sample; rso: RSO's rejection sampling + pairs."""
    n: int = 8
    """Samples generated per prompt."""
    k: int = 4
    """rso: samples accepted per prompt (k // 2 pairs at most)."""
    beta: float = 0.5
    """rso: beta of pi* ∝ pi_sft exp(r / beta), in reward units (0 = greedy, inf = uniform)."""
    max_new_tokens: int = 64
    """Longest completion, in tokens."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    seed: int = 0
    """Seeds the generation and the rejection sampling: equal settings give an equal file."""
    batch_size: int = 64
    """Sequences generated together; a chunk holds max(1, batch_size // n) prompts."""
    min_reward: float | None = None
    """best_of_n: write a prompt's best sample only when its reward is at least this."""
    overwrite: bool = False
    """Replace `out` when it exists."""


def validate(cfg: SampleConfig) -> None:
    """Checks of the settings and the output path (no file is read but `out`'s folder)."""
    from rlhflab.config_rl import _check_scorers, check_sampling, cli_flag
    from rlhflab.rewards import scorer_names

    if cfg.mode not in ("best_of_n", "rso"):
        raise ConfigError(f"--mode must be best_of_n or rso, got '{cfg.mode}'."
                          + did_you_mean(cfg.mode, ("best_of_n", "rso")))
    _check_scorers("--reward", cfg.rewards, True)
    scorer_names(cfg.rewards)
    if cfg.n < (2 if cfg.mode == "rso" else 1):
        raise ConfigError(f"--n must be at least {2 if cfg.mode == 'rso' else 1} for --mode {cfg.mode}, got {cfg.n}")
    if cfg.mode == "rso" and not 2 <= cfg.k <= cfg.n:
        raise ConfigError(f"--k must be between 2 and --n ({cfg.n}): RSO accepts k of the n samples, got {cfg.k}")
    if not cfg.beta >= 0:
        raise ConfigError(f"--beta must be >= 0 (0 = greedy top-k), got {cfg.beta}")
    check_sampling(cli_flag, cfg.max_new_tokens, cfg.batch_size, cfg.temperature, cfg.top_p,
                   why="n greedy samples would be identical")
    if cfg.min_reward is not None and not math.isfinite(cfg.min_reward):
        raise ConfigError(f"--min-reward must be a finite number, got {cfg.min_reward}")
    check_out_path(cfg.out, cfg.data, cfg.overwrite)


def check_out_path(out_path: str, data: str, overwrite: bool) -> None:
    """The output of a data-writing command: a .jsonl file, not a folder, not the input, and
    only replaced with `overwrite`."""
    out = Path(out_path)
    if out.suffix.lower() != ".jsonl":
        raise ConfigError(f"--out {out}: the output is JSON Lines; give a file name ending in .jsonl")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a .jsonl file name")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} exists; pass --overwrite to replace it")
    if Path(data).exists() and out.exists() and out.resolve() == Path(data).resolve():
        raise ConfigError(f"--out {out} is the --data file itself; write to another file")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, not a folder")


# --------------------------------------------------------------------------- the command


@dataclass
class SampleSummary:
    """What `run_sample` did (printed by the CLI)."""

    prompts: int
    """Prompts sampled (after dropping those longer than the prompt limit)."""
    dropped_prompts: int
    """Prompts dropped as longer than the prompt limit (1023 tokens)."""
    samples: int
    """prompts * n."""
    kept: int
    """best_of_n: rows written; rso: samples accepted by the rejection sampling."""
    rows: int
    """Rows written (best_of_n: kept prompts; rso: pairs)."""
    mean_best_reward: float
    """Mean over prompts of the best of its n rewards."""
    mean_reward: float
    """Mean reward of all samples (what one sample per prompt scores on average)."""
    mean_kept_reward: float
    """Mean reward of the kept samples (nan when none)."""
    seconds: float
    """Wall-clock time of the whole command."""


def run_sample(cfg: SampleConfig, console: Any) -> SampleSummary:
    """Validate, load, generate and score in chunks (with a progress bar), select, write."""
    from rlhflab.data import examples_from_records, read_records
    from rlhflab.models import EMBEDDED, resolve_model_path

    t0 = time.perf_counter()
    validate(cfg)
    records = read_records(cfg.data)
    loaded = examples_from_records(records, cfg.data, "prompt", "auto")
    check_scorer_columns(loaded, cfg.rewards, " (e.g. --reward math:answer_field=...)")
    original = {rec.row: rec.data.get("prompt") for rec in records}
    if cfg.model != EMBEDDED:
        resolve_model_path(cfg.model)  # a missing folder is reported before anything loads
    for warning in loaded.warnings:
        console.print(f"[yellow]warning:[/] {warning}")

    prompts, dropped, texts, rewards = _generate_and_score(cfg, loaded.examples, console)
    if cfg.mode == "best_of_n":
        rows, kept_idx = _best_of_n_rows(cfg, prompts, original, texts, rewards)
    else:
        rows, kept_idx = _rso_rows(cfg, prompts, original, texts, rewards)
    if not rows:
        raise ConfigError(_nothing_kept(cfg))
    write_jsonl_atomic(Path(cfg.out), rows)
    best = rewards.view(-1, cfg.n).max(dim=1).values
    kept_r = rewards[kept_idx] if kept_idx else torch.zeros(0)
    return SampleSummary(len(prompts), dropped, rewards.numel(), len(kept_idx), len(rows), float(best.mean()),
                         float(rewards.mean()), float(kept_r.mean()) if kept_idx else math.nan,
                         time.perf_counter() - t0)


def _nothing_kept(cfg: SampleConfig) -> str:
    if cfg.mode == "best_of_n":
        return (f"no row to write: every prompt's best reward is below --min-reward {cfg.min_reward}; "
                f"{cfg.out} was not written")
    return (f"no pair to write: every pair of accepted samples had equal rewards or equal texts; "
            f"{cfg.out} was not written (raise --n / --k, or use a finer-grained reward)")


def _generate_and_score(cfg: SampleConfig, examples: list[Any],
                        console: Any) -> tuple[list[Any], int, list[str], Tensor]:
    """Tokenize the prompts, then generate and score them chunk by chunk.
    Returns (tokenized prompts, prompts dropped as too long, texts (P*n,), rewards (P*n,))."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rlhflab.config import DataConfig
    from rlhflab.data import tokenize_examples
    from rlhflab.data.template import end_of_turn_ids
    from rlhflab.models import load_causal_lm, load_tokenizer
    from rlhflab.rewards import build_scorer
    from rlhflab.rollout import HFGenerator, SamplingParams

    device = "cuda" if torch.cuda.is_available() else "cpu"
    scorer = build_scorer(cfg.rewards, device)  # first: a bad python function fails before the policy loads
    try:
        tokenizer = load_tokenizer(cfg.model)
        prompts, report = tokenize_examples(examples, tokenizer, DataConfig(), path=cfg.data)
        if not prompts:
            raise DataError(cfg.data, None, "prompt",
                            f"every prompt is longer than {DataConfig().max_length - 1} tokens")
        model = load_causal_lm(cfg.model, device=device)
        engine = HFGenerator(model, tokenizer, end_of_turn_ids(tokenizer), cfg.batch_size)
        params = SamplingParams(cfg.n, cfg.max_new_tokens, cfg.temperature, cfg.top_p)
        per_chunk = max(1, cfg.batch_size // cfg.n)
        starts = range(0, len(prompts), per_chunk)
        texts: list[str] = []
        values: list[Tensor] = []
        progress = Progress(TextColumn("sampling prompt chunks"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=console, transient=False)
        with progress:
            task = progress.add_task("sample", total=len(starts))
            for c, start in enumerate(starts):
                chunk = prompts[start:start + per_chunk]
                completions = engine.generate([p.input_ids for p in chunk], params, seed=chunk_seed(cfg.seed, c))
                samples = samples_from(chunk, completions, group_offset=start)
                values.append(scorer.score(samples).values.float().cpu())
                texts += [s.completion for s in samples]
                progress.advance(task)
    finally:
        scorer.close()
    return prompts, report.dropped, texts, torch.cat(values)


def chunk_seed(seed: int, chunk: int) -> int:
    """The generation seed of prompt chunk `chunk`."""
    return (seed * 1_000_003 + chunk * 7_919) % 2**62


def _best_of_n_rows(cfg: SampleConfig, prompts: list[Any], original: dict[int, Any], texts: list[str],
                    rewards: Tensor) -> tuple[list[dict[str, Any]], list[int]]:
    rows, kept = [], []
    for p, i in enumerate(best_of_n_select(rewards, cfg.n, cfg.min_reward)):
        if i is None:
            continue
        kept.append(i)
        rows.append({"prompt": _prompt_value(prompts[p], original), "completion": texts[i],
                     "best_reward": float(rewards[i]), "n": cfg.n})
    return rows, kept


def _rso_rows(cfg: SampleConfig, prompts: list[Any], original: dict[int, Any], texts: list[str],
              rewards: Tensor) -> tuple[list[dict[str, Any]], list[int]]:
    gen = torch.Generator().manual_seed(cfg.seed)
    rows, kept = [], []
    for p, prompt in enumerate(prompts):
        lo = p * cfg.n
        r = rewards[lo:lo + cfg.n]  # (n,)
        accepted = rso_select(r, cfg.beta, cfg.k, gen)
        kept += [lo + j for j in accepted]
        for c, x in rso_pairs(texts[lo:lo + cfg.n], r.tolist(), accepted):
            rows.append({"prompt": _prompt_value(prompt, original), "chosen": texts[lo + c], "rejected": texts[lo + x],
                         "chosen_reward": float(r[c]), "rejected_reward": float(r[x])})
    return rows, kept


def _prompt_value(prompt: Any, original: dict[int, Any]) -> Any:
    """The row's `prompt` as the file had it (a string or messages); the prompt messages when the
    row had no `prompt` column (a transcript row)."""
    value = original.get(prompt.row)
    return value if value is not None else prompt.messages


def print_summary(s: SampleSummary, cfg: SampleConfig, console: Any) -> None:
    what = "pairs" if cfg.mode == "rso" else "rows"
    kept = "accepted" if cfg.mode == "rso" else "kept"
    dropped = f" ({s.dropped_prompts} dropped as too long)" if s.dropped_prompts else ""
    console.print(f"[bold]rlhflab sample[/] ({cfg.mode}): {s.prompts} prompts{dropped}, {s.samples} samples, "
                  f"{s.kept} {kept}")
    console.print(f"mean reward: best of {cfg.n} {s.mean_best_reward:.4g} vs all samples {s.mean_reward:.4g} "
                  f"({kept} {s.mean_kept_reward:.4g})")
    console.print(f"wrote {s.rows} {what} to {cfg.out} in {s.seconds:.1f} s")
