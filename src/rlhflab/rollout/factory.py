"""The rollout engine a run's `generation.backend` names."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlhflab.errors import ConfigError
from rlhflab.rollout.base import Generator


def make_generator(gen_cfg: Any, policy: nn.Module, tokenizer: Any, stop_ids: set[int], pad_id: int,
                   device: torch.device | str, *, seed: int = 0, trust_remote_code: bool = False) -> Generator:
    """hf: `HFGenerator` on the policy itself; vllm: a colocated `VLLMGenerator` (checks that vllm
    imports and `device` is a CUDA GPU, UserError otherwise). `gen_cfg` is a GenerationConfig."""
    if gen_cfg.backend == "hf":
        from rlhflab.rollout.hf import HFGenerator

        return HFGenerator(policy, tokenizer, stop_ids, gen_cfg.batch_size, pad_id)
    if gen_cfg.backend == "vllm":
        from rlhflab.rollout.vllm import VLLMGenerator

        return VLLMGenerator.create(policy, tokenizer, stop_ids, gen_cfg.vllm, device, seed=seed,
                                    trust_remote_code=trust_remote_code)
    raise ConfigError(f"generation.backend {gen_cfg.backend!r} is not a rollout engine; choose hf or vllm")
