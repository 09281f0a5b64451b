"""`ChatModel`: sample replies to chat conversations with the one rollout engine (rollout.HFGenerator)."""

from __future__ import annotations

from typing import Any

import torch

Messages = list[dict[str, str]]


class ChatModel:
    """A causal LM (plain or peft) with its tokenizer, answering conversations.

    Rendering uses the tokenizer's chat template (or `chat_template`) with the generation prompt;
    sampling is the rollout engine's, so the same seed gives the same replies."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32, chat_template: str | None = None):
        from rlhflab.data.template import end_of_turn_ids, resolve_chat_template

        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.chat_template = resolve_chat_template(tokenizer, chat_template)
        self.stop_ids = end_of_turn_ids(tokenizer)

    @classmethod
    def load(cls, name: str, device: str = "cpu", batch_size: int = 32, trust_remote_code: bool = False) -> "ChatModel":
        """Load a local Hugging Face folder or the embedded `smollm2-135m`, frozen, in eval mode."""
        from rlhflab.models import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
        model = load_causal_lm(name, device=device, trust_remote_code=trust_remote_code)
        model.requires_grad_(False).eval()
        return cls(model, tokenizer, batch_size)

    def encode(self, conversation: Messages) -> list[int]:
        """Token ids of the conversation followed by the assistant's generation prompt."""
        from rlhflab.data.template import render_ids

        return render_ids(self.tokenizer, conversation, True, self.chat_template)

    def reply(self, conversations: list[Messages], n: int = 1, max_new_tokens: int = 128, temperature: float = 1.0,
              top_p: float = 1.0, seed: int = 0, stop: tuple[str, ...] = ()) -> list[list[str]]:
        """n replies per conversation (temperature 0 = greedy: n identical replies), in order."""
        from rlhflab.rollout import HFGenerator, SamplingParams

        if not conversations:
            return []
        engine = HFGenerator(self.model, self.tokenizer, self.stop_ids, self.batch_size)
        params = SamplingParams(n, max_new_tokens, temperature, top_p, 0, stop)
        with torch.no_grad():
            completions = engine.generate([self.encode(c) for c in conversations], params, seed)
        out: list[list[str]] = [[] for _ in conversations]
        for c in completions:
            out[c.prompt_index].append(c.text.strip())
        return out
