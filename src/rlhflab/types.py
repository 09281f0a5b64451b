"""Typed batches. Shapes: B = batch (sequences), T = time (tokens).

Conventions shared by every algorithm:
- `loss_mask[b, t]` is True where token `input_ids[b, t]` is a trained target; the model predicts
  it from position t-1, so `loss_mask[:, 0]` is always False.
- Padding is on the right and marked by `attention_mask == 0`, never by comparing with the pad
  id (pad often equals EOS, and the EOS of an assistant turn is trained).
- A packed row holds several examples; `segment_ids` numbers them 1..k (0 = padding) and
  `position_ids` restarts at 0 for each, so no example attends to another.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class TokenizedSeq:
    """One tokenized example before batching (lists, not tensors)."""

    input_ids: list[int]
    loss_mask: list[bool]  # same length as input_ids
    row: int  # 1-based row of the source file (line for JSONL), for error messages


@dataclass
class TokenizedPair:
    """A preference pair: the shared prompt followed by each completion."""

    chosen: TokenizedSeq
    rejected: TokenizedSeq
    row: int
    chosen_safe: bool | None = None  # Safe RLHF labels: True = safe
    rejected_safe: bool | None = None
    margin: float | None = None  # optional preference strength from the data
    scores: dict[str, float] = field(default_factory=dict)  # optional chosen_reward, ..._winrate columns
    ref: tuple[float, float] | None = None  # precomputed reference log-probs (chosen, rejected)


@dataclass
class LMBatch:
    """A batch of token sequences for a causal LM."""

    input_ids: Tensor  # (B, T) long
    attention_mask: Tensor  # (B, T) long; 1 = real token, 0 = padding
    loss_mask: Tensor  # (B, T) bool; True where input_ids[b, t] is a trained target
    rows: list[int] = field(default_factory=list)  # source rows of the examples in this batch
    position_ids: Tensor | None = None  # (B, T) long; set for packed rows
    segment_ids: Tensor | None = None  # (B, T) long; 1..k per packed example, 0 = padding

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device: torch.device | str) -> "LMBatch":
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            loss_mask=self.loss_mask.to(device),
            position_ids=mv(self.position_ids),
            segment_ids=mv(self.segment_ids),
        )


@dataclass
class PairBatch:
    """B preference pairs. `chosen` and `rejected` are padded to one common length T."""

    chosen: LMBatch  # (B, T)
    rejected: LMBatch  # (B, T)
    rows: list[int] = field(default_factory=list)
    chosen_safe: Tensor | None = None  # (B,) bool
    rejected_safe: Tensor | None = None  # (B,) bool
    margin: Tensor | None = None  # (B,) float
    scores: dict[str, Tensor] = field(default_factory=dict)  # (B,) float each, columns every pair has
    ref_chosen: Tensor | None = None  # (B,) float; precomputed reference log-probs
    ref_rejected: Tensor | None = None

    def __len__(self) -> int:
        return int(self.chosen.input_ids.shape[0])

    def to(self, device: torch.device | str) -> "PairBatch":
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            chosen=self.chosen.to(device),
            rejected=self.rejected.to(device),
            chosen_safe=mv(self.chosen_safe),
            rejected_safe=mv(self.rejected_safe),
            margin=mv(self.margin),
            scores={k: v.to(device) for k, v in self.scores.items()},
            ref_chosen=mv(self.ref_chosen),
            ref_rejected=mv(self.ref_rejected),
        )


@dataclass
class UnpairedBatch:
    """B single completions with a desirable label (KTO, NPO) or a scalar reward (DRO)."""

    seqs: LMBatch  # (B, T)
    label: Tensor  # (B,) bool: True = desirable
    reward: Tensor | None = None  # (B,) float, the `scored` format
    ref: Tensor | None = None  # (B,) float, precomputed reference log-probs
    rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.seqs.input_ids.shape[0])

    def to(self, device: torch.device | str) -> "UnpairedBatch":
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(self, seqs=self.seqs.to(device), label=self.label.to(device), reward=mv(self.reward), ref=mv(self.ref))
