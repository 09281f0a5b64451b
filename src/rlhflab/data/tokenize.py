"""`tokenize_examples`: normalized examples -> token sequences, under the length policy.

Length policy (DataConfig): `max_length` bounds every sequence (prompt + completion);
`max_prompt_length` (None = max_length - 1) bounds the prompt, i.e. the tokens before the first
trained token. `truncation`:

- truncate: cut the completion from the right, keeping the prompt; a prompt that is too long is
  dropped (and counted);
- drop: drop too-long examples (counted);
- error: stop with a DataError naming the row.

An example left with no trainable token is dropped and counted. For pairs, the pair is dropped if
either side is, and counted once as truncated if either side is truncated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rlhflab.config import DataConfig
from rlhflab.data.examples import PairExample, PromptExample, SFTExample, UnpairedExample
from rlhflab.data.template import (
    end_of_turn_ids,
    resolve_chat_template,
    tokenize_conversation,
    tokenize_pair,
    tokenize_prompt,
)
from rlhflab.errors import DataError
from rlhflab.types import TokenizedPair, TokenizedSeq


@dataclass
class TokenizedPrompt:
    """A prompt for online RL: ids end with the generation prompt; `extra` = other columns."""

    input_ids: list[int]
    row: int
    extra: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)  # the prompt's chat messages


@dataclass
class TokenizedUnpaired:
    """A labelled completion (KTO-style): the sequence and whether it is desirable."""

    seq: TokenizedSeq
    label: bool
    row: int
    reward: float | None = None  # the `scored` format's reward
    ref: float | None = None  # precomputed reference log-prob of the completion


@dataclass
class TokenizeReport:
    """Counts of what the length policy did, and token-length statistics of kept sequences."""

    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_prompt_too_long: int = 0
    dropped_no_loss_tokens: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)  # every kept sequence's length

    @property
    def dropped(self) -> int:
        return self.dropped_too_long + self.dropped_prompt_too_long + self.dropped_no_loss_tokens

    def length_stats(self) -> dict[str, float]:
        """min / mean / p50 / p95 / max of kept sequence lengths (tokens); {} when none."""
        return length_stats(self.lengths)

    def summary(self) -> str:
        s = self.length_stats()
        text = (
            f"kept {self.kept}, truncated {self.truncated}, dropped {self.dropped} (too long "
            f"{self.dropped_too_long}, prompt too long {self.dropped_prompt_too_long}, no trainable "
            f"tokens {self.dropped_no_loss_tokens})"
        )
        if s:
            text += "; tokens " + ", ".join(f"{k} {round(v, 1):g}" for k, v in s.items())
        return text


def length_stats(values: list[int] | list[float]) -> dict[str, float]:
    """min / mean / p50 / p95 / max (nearest-rank percentiles); {} for no values."""
    if not values:
        return {}
    v = sorted(values)

    def pct(q: float) -> float:
        return float(v[min(len(v), max(1, math.ceil(q * len(v)))) - 1])

    return {"min": float(v[0]), "mean": sum(v) / len(v), "p50": pct(0.5), "p95": pct(0.95), "max": float(v[-1])}


class _Policy:
    """Applies the length policy to one sequence; raises or returns None to drop."""

    def __init__(self, cfg: DataConfig, report: TokenizeReport, path: str):
        self.cfg, self.report, self.path = cfg, report, path
        self.max_len = cfg.max_length
        self.max_prompt = cfg.max_prompt_length if cfg.max_prompt_length is not None else cfg.max_length - 1

    def prompt_ok(self, prompt_len: int, row: int) -> bool:
        if prompt_len <= self.max_prompt:
            return True
        if self.cfg.truncation == "error":
            raise DataError(
                self.path, row, "prompt",
                f"the prompt is {prompt_len} tokens, longer than max_prompt_length {self.max_prompt}",
                "Raise data.max_prompt_length / data.max_length, or set data.truncation to drop.",
            )
        self.report.dropped_prompt_too_long += 1
        return False

    def fit(self, seq: TokenizedSeq) -> tuple[TokenizedSeq | None, bool]:
        """(sequence or None when too long and dropped, whether it was truncated)."""
        n = len(seq.input_ids)
        if n <= self.max_len:
            return seq, False
        if self.cfg.truncation == "error":
            raise DataError(
                self.path, seq.row, None,
                f"the example is {n} tokens, longer than max_length {self.max_len}",
                "Raise data.max_length, or set data.truncation to truncate or drop.",
            )
        if self.cfg.truncation == "drop":
            return None, False
        return TokenizedSeq(seq.input_ids[: self.max_len], seq.loss_mask[: self.max_len], seq.row), True


def _prompt_len(mask: list[bool]) -> int:
    return next((i for i, m in enumerate(mask) if m), len(mask))


def tokenize_examples(
    examples: list[Any], tokenizer: Any, data_cfg: DataConfig, path: str | None = None
) -> tuple[list[Any], TokenizeReport]:
    """Tokenize normalized examples (all of one type) under the length policy.

    Returns TokenizedSeq for SFTExample, TokenizedPair for PairExample, TokenizedUnpaired for
    UnpairedExample, TokenizedPrompt for PromptExample; and the report. `path` names the data
    in errors (default: data_cfg.train).
    """
    template = resolve_chat_template(tokenizer, data_cfg.chat_template)
    eot = end_of_turn_ids(tokenizer)
    report = TokenizeReport()
    default = path or (data_cfg.train if isinstance(data_cfg.train, str) else None) or "data"
    policy = _Policy(data_cfg, report, default)
    out = []
    for ex in examples:
        policy.path = getattr(ex, "source", None) or default  # examples of a list of files name their own file
        item = _one(ex, tokenizer, template, eot, policy)
        if item is not None:
            out.append(item)
            report.kept += 1
    return out, report


def _one(ex: Any, tok: Any, template: str | None, eot: set[int], policy: _Policy) -> Any:
    report = policy.report
    if isinstance(ex, PromptExample):
        ids = tokenize_prompt(tok, ex.prompt, template)
        if not policy.prompt_ok(len(ids), ex.row):
            return None
        report.lengths.append(len(ids))
        return TokenizedPrompt(ids, ex.row, ex.extra, list(ex.prompt))
    if isinstance(ex, PairExample):
        pair = tokenize_pair(tok, ex.prompt, ex.chosen, ex.rejected, template, ex.row, eot)
        if not policy.prompt_ok(_prompt_len(pair.chosen.loss_mask), ex.row):
            return None
        (c, c_cut), (r, r_cut) = policy.fit(pair.chosen), policy.fit(pair.rejected)
        if c is None or r is None:
            report.dropped_too_long += 1
            return None
        if not any(c.loss_mask) or not any(r.loss_mask):
            report.dropped_no_loss_tokens += 1
            return None
        report.truncated += c_cut or r_cut
        report.lengths += [len(c.input_ids), len(r.input_ids)]
        return TokenizedPair(c, r, ex.row, ex.chosen_safe, ex.rejected_safe, ex.margin, dict(ex.scores))
    if isinstance(ex, SFTExample):
        messages, start = ex.messages, ex.train_start
    elif isinstance(ex, UnpairedExample):
        messages, start = ex.prompt + ex.completion, len(ex.prompt)
    else:
        raise TypeError(f"not a normalized example: {type(ex).__name__}")
    ids, mask = tokenize_conversation(tok, messages, start, template, eot)
    if not policy.prompt_ok(_prompt_len(mask), ex.row):
        return None
    fitted = _fit_one(TokenizedSeq(ids, mask, ex.row), policy)
    if fitted is None:
        return None
    seq, truncated = fitted
    report.truncated += truncated
    report.lengths.append(len(seq.input_ids))
    return TokenizedUnpaired(seq, ex.label, ex.row, ex.reward) if isinstance(ex, UnpairedExample) else seq


def _fit_one(seq: TokenizedSeq, policy: _Policy) -> tuple[TokenizedSeq, bool] | None:
    fitted, truncated = policy.fit(seq)
    if fitted is None:
        policy.report.dropped_too_long += 1
        return None
    if not any(fitted.loss_mask):
        policy.report.dropped_no_loss_tokens += 1
        return None
    return fitted, truncated

