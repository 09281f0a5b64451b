"""The Generator protocol: prompts in, n samples per prompt out.

Every backend returns, per sample, the completion's token ids, the log-probability of each
sampled token under the sampling distribution before truncation, i.e. log softmax(logits / T)
(the quantity the trainer recomputes, so the two can be compared), and why it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    """Samples per prompt."""
    max_new_tokens: int = 64
    temperature: float = 1.0
    """0 = greedy decoding."""
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    """Stop strings: the completion ends with the token that completes the first one."""


@dataclass
class Completion:
    prompt_index: int
    """Index of the prompt in the list given to `generate`."""
    token_ids: list[int]
    """Generated tokens, including the stop token when it ended the turn."""
    logprobs: list[float]
    """log softmax(logits / temperature) of each generated token (temperature 1 when greedy)."""
    finish_reason: str
    """'stop' (an end-of-turn token or a stop string) or 'length' (max_new_tokens reached)."""
    text: str = ""
    """The decoded completion without special tokens, cut after a stop string."""
    extra: dict = field(default_factory=dict)


class Generator(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams, seed: int, offset: int = 0) -> list[Completion]:
        """len(prompts) * params.n completions, prompt-major (all samples of prompt 0 first).
        The same seed, prompts, params and weights give the same completions. Sample j of prompt i
        is drawn with randomness keyed by (seed, offset + i, j) alone, so a list of prompts split
        over several calls (or ranks), each given its slice's start as `offset`, samples what one
        call would have."""
        ...

    def sync_weights(self) -> None:
        """Make the engine sample from the trainer's current weights."""
        ...
