"""A trained scalar-head model (reward or cost) as a scorer.

Each sample is rendered as the chat `prompt + [{"role": "assistant", "content": completion}]` with
the model folder's chat template, exactly as the reward-model trainer renders a chosen or rejected
conversation (`rlhflab.data.template.render_ids`, no generation prompt), and scored at its last
real token (`scalar_scores`). A Safe RLHF cost model is used the same way: its score is a cost.

`system_prompt` applies a condition of a conditional reward model (COOL RLHF, arXiv 2403.17297): it
is put before every prompt with `rlhflab.data.conditions.with_system_prompt`, the same function that
writes the conditioned training pairs.
"""

from __future__ import annotations

import os

import torch

from rlhflab.data.conditions import with_system_prompt
from rlhflab.data.template import render_ids, resolve_chat_template
from rlhflab.models.load import load_tokenizer
from rlhflab.models.scalar import load_scalar_model, scalar_scores
from rlhflab.rewards.base import Sample, Scorer, Scores


class RewardModelScorer(Scorer):
    """Scores of a scalar-head model; batches of `batch_size` sequences sorted by length."""

    name = "reward_model"

    def __init__(self, path: str | os.PathLike, batch_size: int = 16, device: str = "cpu",
                 trust_remote_code: bool = False, chat_template: str | None = None, system_prompt: str | None = None):
        """`chat_template`: a template (file or text) to use instead of the tokenizer's own; give
        the same one the reward model was trained with (`data.chat_template`). `system_prompt`: the
        condition to score under (None = the prompts as they are)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.path, self.batch_size, self.device = str(path), batch_size, device
        self.system_prompt = system_prompt
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.chat_template = resolve_chat_template(self.tokenizer, chat_template)
        self.model = load_scalar_model(path, device=device, trust_remote_code=trust_remote_code)
        self.model.requires_grad_(False).eval()

    def encode(self, sample: Sample) -> list[int]:
        """Token ids of the conversation (system prompt +) prompt + the completion as the assistant's turn."""
        messages = [*with_system_prompt(sample.prompt, self.system_prompt), {"role": "assistant", "content": sample.completion}]
        return render_ids(self.tokenizer, messages, False, self.chat_template)

    def score(self, samples: list[Sample]) -> Scores:
        ids = [self.encode(s) for s in samples]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        values = torch.zeros(len(ids), dtype=torch.float32)
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                T = max(len(ids[i]) for i in chunk)
                input_ids = torch.zeros(len(chunk), T, dtype=torch.long)  # right padding, masked out
                mask = torch.zeros(len(chunk), T, dtype=torch.long)
                for row, i in enumerate(chunk):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                scores = scalar_scores(self.model, input_ids.to(self.device), mask.to(self.device))  # (B,)
                values[torch.tensor(chunk)] = scores.float().cpu()
        return Scores(values)

    def close(self) -> None:
        self.model = None
