"""Normalized examples: every format becomes message lists ({"role", "content"} dicts).

A string prompt becomes ``[{"role": "user", "content": s}]``; a string completion (or chosen,
rejected) becomes ``[{"role": "assistant", "content": s}]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass
class SFTExample:
    """A conversation to imitate. Assistant turns at index >= `train_start` are trained."""

    messages: list[Message]
    row: int
    train_start: int = 0  # 0 for the messages format; len(prompt) for prompt_completion
    source: str | None = None  # the file, when several files were loaded together (data.train: [...])


@dataclass
class PairExample:
    """A preference pair: one prompt, a chosen and a rejected continuation."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    row: int
    chosen_safe: bool | None = None  # Safe RLHF labels (safety format): True = safe
    rejected_safe: bool | None = None
    margin: float | None = None  # optional preference strength (`margin` column)
    scores: dict[str, float] = field(default_factory=dict)  # optional PAIR_SCORE_COLUMNS present in the row
    source: str | None = None  # the file, when several files were loaded together (data.train: [...])


@dataclass
class UnpairedExample:
    """A single completion labelled desirable (True) or undesirable (False), as in KTO, or
    scored with a number (the `scored` format, as in DRO; then `label` is reward > 0)."""

    prompt: list[Message]
    completion: list[Message]
    label: bool
    row: int
    reward: float | None = None
    source: str | None = None  # the file, when several files were loaded together (data.train: [...])


@dataclass
class PromptExample:
    """A prompt for online RL; the other columns of the row (answers, tests...) are in `extra`."""

    prompt: list[Message]
    extra: dict[str, Any]
    row: int
    source: str | None = None  # the file, when several files were loaded together (data.train: [...])


Example = SFTExample | PairExample | UnpairedExample | PromptExample


@dataclass
class LoadedData:
    """What `load_examples` returns."""

    path: str
    format: str  # the detected (or given) format name
    kind: str | None  # the algorithm kind it was loaded for
    examples: list[Any]  # SFTExample | PairExample | UnpairedExample | PromptExample
    num_rows: int  # records read from the file
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)
