"""Forward passes on typed batches: logits of causal LMs, packed-row attention masks."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from rlhflab.models.load import reference_mode
from rlhflab.types import LMBatch


def packed_attention_mask(
    segment_ids: Tensor, dtype: torch.dtype = torch.float32, attention_mask: Tensor | None = None
) -> Tensor:
    """Additive 4D mask (B, 1, T, T) for packed rows: 0 where query i may attend to key j, the
    dtype's minimum elsewhere.

    allowed[b, i, j] = (j <= i) and seg[b, i] == seg[b, j] and seg[b, j] != 0
    (block-diagonal causal; padding, segment 0, attends nowhere else and is never attended to;
    each padding query still sees itself so no softmax row is all -inf).

    Args:
        segment_ids: (B, T) long, 1..k per packed example, 0 = padding.
        attention_mask: optional (B, T); positions with 0 are treated as padding as well.
    """
    seg = segment_ids.long()
    if attention_mask is not None:
        seg = torch.where(attention_mask.bool(), seg, torch.zeros_like(seg))
    T = seg.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()  # (T, T)
    same = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
    real_key = (seg != 0)[:, None, :]  # (B, 1, T)
    allowed = same & real_key & causal
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=seg.device)  # padding sees itself
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]  # (B, 1, T, T)


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_inputs(model: nn.Module, batch: LMBatch) -> dict[str, Any]:
    """Keyword arguments of a transformers forward for a batch.

    A normal batch passes its 2D attention mask; a packed batch (`segment_ids` set) passes the
    block-diagonal 4D mask of `packed_attention_mask` (transformers uses a 4D mask as given) with
    the batch's `position_ids` (restarting at 0 per example).
    """
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "use_cache": False}
    if batch.segment_ids is not None:
        kwargs["attention_mask"] = packed_attention_mask(
            batch.segment_ids, _model_dtype(model), batch.attention_mask
        )
    else:
        kwargs["attention_mask"] = batch.attention_mask
    if batch.position_ids is not None:
        kwargs["position_ids"] = batch.position_ids
    return kwargs


def forward_logits(model: nn.Module, batch: LMBatch) -> Tensor:
    """Logits (B, T, V) of a causal LM on a batch (see `model_inputs`)."""
    return model(**model_inputs(model, batch)).logits


@torch.no_grad()
def reference_logits(model: nn.Module, batch: LMBatch, ref_model: nn.Module | None = None) -> Tensor:
    """Logits (B, T, V) of the reference policy, without gradients.

    With `ref_model` (a separate frozen model, e.g. `frozen_copy(policy)`), it is used; otherwise
    `model` must be a LoRA model and runs with its adapter disabled.
    """
    ctx = nullcontext(ref_model) if ref_model is not None else reference_mode(model)
    with ctx as ref:
        return forward_logits(ref, batch)
