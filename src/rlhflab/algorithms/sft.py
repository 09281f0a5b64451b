"""Supervised fine-tuning: next-token NLL on assistant tokens only.

loss = sum_{b,t} mask[b,t] * -log p(x[b,t] | x[b,<t]) / sum_{b,t} mask[b,t], over the whole
optimizer step (token-level mean across micro-batches).
"""

from __future__ import annotations

from typing import Any

import torch

from rlhflab.algorithms.base import Algorithm, StepOutput
from rlhflab.losses.sft import sft_loss
from rlhflab.ops import token_logps
from rlhflab.types import LMBatch


class SFT(Algorithm):
    name = "sft"
    data_kind = "sft"
    unit = "tokens"
    metric_docs = {
        "token_accuracy": "fraction of loss tokens where argmax_v logits[t-1, v] == x[t]",
        "eval/loss": "token-mean NLL on the eval set: sum of masked NLL / masked tokens",
        "eval/perplexity": "exp(eval/loss)",
        "eval/tokens": "loss tokens in the eval set",
    }

    @property
    def item_name(self) -> str:  # type: ignore[override]
        return "packed rows" if self.cfg.sft.packing else "examples"

    def load_model(self, path: str, device: torch.device) -> torch.nn.Module:
        from rlhflab.models import load_causal_lm

        return load_causal_lm(path, device=device, trust_remote_code=self.cfg.trust_remote_code, lora=self.cfg.lora)

    def prepare_items(self, items: list[Any]) -> list[Any]:
        if self.cfg.sft.packing:
            from rlhflab.data import pack

            return pack(items, self.cfg.data.max_length)
        return items

    def collate(self, items: list[Any]) -> LMBatch:
        from rlhflab.data import collate_lm, collate_packed

        if self.cfg.sft.packing:
            return collate_packed(items, self.pad_id)
        return collate_lm(items, self.pad_id)

    def units(self, batch: LMBatch) -> int:
        return batch.num_loss_tokens

    def _nll(self, model: torch.nn.Module, batch: LMBatch) -> tuple[torch.Tensor, torch.Tensor]:
        from rlhflab.models import forward_logits

        logits = forward_logits(model, batch)  # (B, T, V)
        logps = token_logps(logits, batch.input_ids)  # (B, T)
        per_example, _ = sft_loss(logps, batch.loss_mask)  # (B,) summed NLL
        pred = torch.zeros_like(batch.loss_mask)
        pred[:, 1:] = logits[:, :-1].argmax(-1) == batch.input_ids[:, 1:]
        correct = (pred & batch.loss_mask).sum()
        return per_example.sum(), correct

    def loss(self, model: torch.nn.Module, batch: LMBatch) -> StepOutput:
        nll, correct = self._nll(model, batch)
        return StepOutput(nll, {"token_accuracy": correct.detach().float()})

    def evaluate(self, model: torch.nn.Module, items: list[Any], micro_batch_size: int) -> dict[str, float]:
        total, tokens, correct = 0.0, 0, 0
        device = next(model.parameters()).device
        for k in range(0, len(items), micro_batch_size):
            batch = self.collate(items[k:k + micro_batch_size]).to(device)
            nll, corr = self._nll(model, batch)
            total += float(nll)
            tokens += batch.num_loss_tokens
            correct += int(corr)
        loss = total / max(tokens, 1)
        return {"loss": loss, "perplexity": float(torch.tensor(loss).exp()), "token_accuracy": correct / max(tokens, 1),
                "tokens": float(tokens)}

    def save_final(self, model: torch.nn.Module, tokenizer: Any, out_dir: str) -> None:
        from rlhflab.models import save_pretrained_hf

        save_pretrained_hf(model, tokenizer, out_dir)
