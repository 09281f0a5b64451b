"""Batching: right padding, packing, and the block-diagonal causal mask for packed rows.

Padding is marked by `attention_mask == 0` (built from the lengths, never by comparing with the
pad id: pad often equals EOS, and an assistant turn's EOS is trained). `pad_id` only fills the
padded positions; use the tokenizer's pad id, else its EOS id, else 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rlhflab.errors import UserError
from rlhflab.types import LMBatch, PairBatch, TokenizedPair, TokenizedSeq, UnpairedBatch


def pad_id_of(tokenizer: Any) -> int:
    """The id used to fill padding: the tokenizer's pad, else its EOS, else 0."""
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    return 0


def _pad(rows: Sequence[Sequence[Any]], length: int, value: Any, dtype: torch.dtype) -> Tensor:
    out = torch.full((len(rows), length), value, dtype=dtype)
    for b, r in enumerate(rows):
        if len(r):
            out[b, : len(r)] = torch.tensor(list(r), dtype=dtype)
    return out


def collate_lm(seqs: Sequence[TokenizedSeq], pad_id: int = 0, length: int | None = None) -> LMBatch:
    """Right-pad sequences to the longest (or to `length`). Shapes (B, T)."""
    if not seqs:
        raise ValueError("collate_lm needs at least one sequence")
    T = max(len(s.input_ids) for s in seqs) if length is None else length
    lengths = torch.tensor([len(s.input_ids) for s in seqs])
    attention_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
    loss_mask = _pad([s.loss_mask for s in seqs], T, False, torch.bool)
    loss_mask[:, 0] = False  # token 0 has no predecessor
    return LMBatch(
        input_ids=_pad([s.input_ids for s in seqs], T, pad_id, torch.long),
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        rows=[s.row for s in seqs],
    )


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int = 0) -> PairBatch:
    """Chosen and rejected padded to one common T. `chosen_safe`/`rejected_safe` are set when
    every pair has them; `margin` when any pair has one (missing margins count as 0); each
    `scores` column and the precomputed reference log-probs when every pair has them."""
    T = max(max(len(p.chosen.input_ids), len(p.rejected.input_ids)) for p in pairs)
    batch = PairBatch(
        chosen=collate_lm([p.chosen for p in pairs], pad_id, T),
        rejected=collate_lm([p.rejected for p in pairs], pad_id, T),
        rows=[p.row for p in pairs],
    )
    if all(p.chosen_safe is not None and p.rejected_safe is not None for p in pairs):
        batch.chosen_safe = torch.tensor([bool(p.chosen_safe) for p in pairs])
        batch.rejected_safe = torch.tensor([bool(p.rejected_safe) for p in pairs])
    if any(p.margin is not None for p in pairs):
        batch.margin = torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32)
    for col in set.intersection(*(set(p.scores) for p in pairs)):
        batch.scores[col] = torch.tensor([p.scores[col] for p in pairs], dtype=torch.float32)
    if all(p.ref is not None for p in pairs):
        batch.ref_chosen = torch.tensor([p.ref[0] for p in pairs], dtype=torch.float32)
        batch.ref_rejected = torch.tensor([p.ref[1] for p in pairs], dtype=torch.float32)
    return batch


def collate_unpaired(items: Sequence[Any], pad_id: int = 0) -> UnpairedBatch:
    """TokenizedUnpaired items -> UnpairedBatch; `reward` and `ref` are set when every item has them."""
    batch = UnpairedBatch(collate_lm([it.seq for it in items], pad_id), torch.tensor([bool(it.label) for it in items]),
                          rows=[it.row for it in items])
    if all(it.reward is not None for it in items):
        batch.reward = torch.tensor([it.reward for it in items], dtype=torch.float32)
    if all(it.ref is not None for it in items):
        batch.ref = torch.tensor([it.ref for it in items], dtype=torch.float32)
    return batch


# --------------------------------------------------------------------------- packing


@dataclass
class PackedRow:
    """Several examples in one row: positions restart at 0 and segments number them 1..k."""

    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[bool] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    segment_ids: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def add(self, seq: TokenizedSeq) -> None:
        n = len(seq.input_ids)
        self.input_ids += seq.input_ids
        self.loss_mask += [False] + list(seq.loss_mask[1:])  # an example's first token is never a target
        self.position_ids += list(range(n))
        self.segment_ids += [len(self.rows) + 1] * n
        self.rows.append(seq.row)


def pack(seqs: Sequence[TokenizedSeq], max_length: int) -> list[PackedRow]:
    """Greedy in-order packing into rows of at most `max_length` tokens."""
    rows: list[PackedRow] = []
    current = PackedRow()
    for seq in seqs:
        n = len(seq.input_ids)
        if n > max_length:
            raise ValueError(f"row {seq.row}: {n} tokens do not fit max_length {max_length}; truncate first")
        if current.rows and len(current.input_ids) + n > max_length:
            rows.append(current)
            current = PackedRow()
        current.add(seq)
    if current.rows:
        rows.append(current)
    return rows


def collate_packed(rows: Sequence[PackedRow], pad_id: int = 0) -> LMBatch:
    """Packed rows -> LMBatch with `segment_ids` (0 = padding) and `position_ids`. (B, T)."""
    T = max(len(r.input_ids) for r in rows)
    lengths = torch.tensor([len(r.input_ids) for r in rows])
    return LMBatch(
        input_ids=_pad([r.input_ids for r in rows], T, pad_id, torch.long),
        attention_mask=(torch.arange(T)[None, :] < lengths[:, None]).long(),
        loss_mask=_pad([r.loss_mask for r in rows], T, False, torch.bool),
        rows=[row for r in rows for row in r.rows],
        position_ids=_pad([r.position_ids for r in rows], T, 0, torch.long),
        segment_ids=_pad([r.segment_ids for r in rows], T, 0, torch.long),
    )


def attention_mask_4d(batch: LMBatch, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive mask (B, 1, T, T) of a batch: block-diagonal causal over `segment_ids` for packed
    rows (an unpacked row is one segment), padding keys masked. See
    `rlhflab.models.forward.packed_attention_mask`, which this delegates to."""
    from rlhflab.models.forward import packed_attention_mask

    seg = batch.segment_ids if batch.segment_ids is not None else batch.attention_mask.long()
    return packed_attention_mask(seg, dtype, batch.attention_mask)


def raise_if_no_loss_tokens(batch: LMBatch | PairBatch) -> None:
    """UserError when a batch (or either side of a pair batch) has no trainable token."""
    if isinstance(batch, LMBatch):
        sides = [("", batch, batch.rows)]
    else:
        sides = [(" (chosen side)", batch.chosen, batch.rows), (" (rejected side)", batch.rejected, batch.rows)]
    for which, side, rows in sides:
        if side.num_loss_tokens == 0:
            raise UserError(
                f"a batch has no trainable tokens{which} (data rows {', '.join(map(str, rows))}): every "
                "token is prompt or padding. Check the loss mask (assistant turns present? "
                "completions truncated away? raise data.max_length)."
            )
