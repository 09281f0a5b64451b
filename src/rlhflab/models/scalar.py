"""Scalar-head models (reward, cost, value): an `AutoModelForSequenceClassification` with one label,
so a trained model saves and loads with the standard `from_pretrained`, but scores computed here.

Why not the model's own forward: HF sequence classifiers pool at the last token that differs
from `pad_token_id`; with pad == eos (SmolLM2) that skips the trained EOS. We pool at the last
REAL token, found from the attention mask.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from rlhflab.models.embedded import resolve_model_path
from rlhflab.models.load import _from_pretrained, is_peft, peft_lora_config

if TYPE_CHECKING:
    from rlhflab.config import LoraConfig

_HEAD_NAMES = ("score", "classifier")


def load_scalar_model(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    lora: "LoraConfig | None" = None,
) -> nn.Module:
    """A sequence-classification model with `num_labels=1` (a scalar head named `score`).

    From a causal-LM folder the head is freshly initialized (from torch's global RNG: seed first);
    from a saved reward model it is loaded. With `lora`, peft wraps it as SEQ_CLS with the head in
    `modules_to_save` (trained fully, saved with the adapter). `config.pad_token_id` is set to the
    EOS id when missing, so the standard HF forward also runs on batches.
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(name_or_path)
    model = _from_pretrained(
        AutoModelForSequenceClassification,
        path,
        num_labels=1,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    ).to(device)
    if getattr(model.config, "pad_token_id", None) is None:
        eos = getattr(model.config, "eos_token_id", None)
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    if lora is not None:
        from peft import get_peft_model

        head = _head_name(model)
        model = get_peft_model(model, peft_lora_config(lora, "SEQ_CLS", modules_to_save=[head]))
    return model


def _head_name(model: nn.Module) -> str:
    for name in _HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__} has no scalar head (looked for {_HEAD_NAMES})")


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer trunk (returns hidden states) and the score head, through a peft wrapper
    (LoRA layers stay active inside the trunk; `disable_adapter()` still works)."""
    inner = model.get_base_model() if is_peft(model) else model
    backbone = getattr(inner, inner.base_model_prefix)
    return backbone, getattr(inner, _head_name(inner))


def _hidden_states(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None
) -> tuple[Tensor, nn.Module]:
    backbone, head = _backbone_and_head(model)
    out = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    return out.last_hidden_state, head  # (B, T, H)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """(B,) index of the last position with attention_mask == 1 (0 for an all-padding row)."""
    T = attention_mask.shape[-1]
    pos = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), pos, torch.zeros_like(pos)).amax(dim=-1)


def scalar_scores(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None
) -> Tensor:
    """(B,) float32 scores: the head applied to the hidden state of each row's last real token.

    Args:
        input_ids: (B, T) long; attention_mask: (B, T), 1 = real token (right padding).
    """
    hidden, head = _hidden_states(model, input_ids, attention_mask, position_ids)
    idx = last_token_index(attention_mask)  # (B,)
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, H)
    return head(last).squeeze(-1).float()


def scalar_values(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None
) -> Tensor:
    """(B, T) float32: the head at every position (value models). Padded positions hold finite
    garbage; mask them."""
    hidden, head = _hidden_states(model, input_ids, attention_mask, position_ids)
    return head(hidden).squeeze(-1).float()
