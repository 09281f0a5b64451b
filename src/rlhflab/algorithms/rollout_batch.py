"""The rollout batch of an online round and the small helpers around it (split from online.py
for size): right-padded prompt + completion rows with per-token tensors, the ragged batch plan,
and the round's timing merge."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from rlhflab.rollout import Completion
from rlhflab.types import LMBatch


@dataclass
class RolloutBatch:
    """Prompt + completion sequences of a rollout, right-padded, with per-token tensors.

    `loss_mask[b, t]` marks the completion tokens (targets). Every tensor in `tensors` is (B, T)
    and aligned with input_ids: the value at [b, t] belongs to token input_ids[b, t] (advantages,
    old_logp, ref_logp, returns/<critic>, values/<critic>). `seq` holds per-sequence (B,) values
    (reward, cost, group)."""

    input_ids: Tensor
    attention_mask: Tensor
    loss_mask: Tensor
    tensors: dict[str, Tensor] = field(default_factory=dict)
    seq: dict[str, Tensor] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)

    @property
    def lm(self) -> LMBatch:
        return LMBatch(self.input_ids, self.attention_mask, self.loss_mask, self.rows)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> "RolloutBatch":
        return RolloutBatch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device),
                            {k: v.to(device) for k, v in self.tensors.items()},
                            {k: v.to(device) for k, v in self.seq.items()}, list(self.rows))

    def select(self, idx: list[int] | Tensor) -> "RolloutBatch":
        """The rows `idx`, trimmed to their longest sequence."""
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        width = int(self.attention_mask[idx_t].sum(1).max())
        cut = lambda t: t[idx_t, :width]  # noqa: E731
        return RolloutBatch(cut(self.input_ids), cut(self.attention_mask), cut(self.loss_mask),
                            {k: cut(v) for k, v in self.tensors.items()}, {k: v[idx_t] for k, v in self.seq.items()},
                            [self.rows[i] for i in idx_t.tolist()])


def build_batch(prompts: list[list[int]], completions: list[Completion], pad_id: int) -> RolloutBatch:
    """Right-padded prompt + completion rows; the loss mask covers the completion tokens."""
    seqs = [prompts[c.prompt_index] + c.token_ids for c in completions]
    width = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    attn = torch.zeros((B, width), dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.bool)
    for b, (s, c) in enumerate(zip(seqs, completions)):
        ids[b, :len(s)] = torch.tensor(s)
        attn[b, :len(s)] = 1
        mask[b, len(s) - len(c.token_ids):len(s)] = True
    return RolloutBatch(ids, attn, mask)


def add_round_times(into: dict[str, float], new: dict[str, float]) -> None:
    """Fold one more generate_and_score's figures into a round's: times add up, the engine probe's
    differences (engine/...) keep their maximum."""
    for k, v in new.items():
        into[k] = max(into.get(k, 0.0), v) if k.startswith("engine/") else into.get(k, 0.0) + v


def per_token_to_sequences(x: Tensor, mask: Tensor) -> Tensor:
    """Sums over each row's masked tokens: (B, T) -> (B,)."""
    return torch.where(mask, x, torch.zeros_like(x)).sum(1)


@dataclass(frozen=True)
class RaggedPlan:
    """A step whose sequences do not split evenly: the last micro-batch is smaller (the loss is
    normalized by the step's units, so the gradient is still exact)."""

    batch_size: int
    micro_batch_size: int
    world_size: int = 1

    @property
    def accumulation(self) -> int:
        return -(-self.batch_size // self.micro_batch_size)

    def describe(self, unit: str = "sequences") -> str:
        per_rank = -(-self.accumulation // self.world_size)
        return (f"batch plan: {self.batch_size} {unit}/step = {self.world_size} process(es) x {per_rank} micro-batch(es) of "
                f"up to {self.micro_batch_size} {unit}")
