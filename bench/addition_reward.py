"""The GRPO benchmark's reward, one function for both sides: rlhflab's `python` scorer calls
`addition_reward`, TRL's GRPOTrainer calls `trl_addition_reward`. Standard library only, since
TRL's worker (another virtual environment) loads this file too."""

from __future__ import annotations

import re

_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def addition_correct(text: str, answer) -> float:
    """1.0 when the last number in `text` (thousands commas ignored) equals `answer`, else 0.0."""
    nums = _NUM.findall(str(text).replace(",", ""))
    if not nums:
        return 0.0
    try:
        return 1.0 if abs(float(nums[-1]) - float(answer)) < 1e-6 else 0.0
    except ValueError:
        return 0.0


def addition_reward(samples) -> list[float]:
    """rlhflab `python` scorer: list[Sample] -> one float per sample."""
    return [addition_correct(s.completion, s.row["answer"]) for s in samples]


def trl_addition_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """TRL reward function: completions (conversational: [{"role": "assistant", "content": ...}]) and
    the dataset's `answer` column, one entry per completion."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [addition_correct(t, a) for t, a in zip(texts, answer)]
