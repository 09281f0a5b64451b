"""Rollout engines: the Generator protocol, its Hugging Face backend (rollout/hf.py) and the vLLM
backend (rollout/vllm.py, GPU, optional extra; imported only when a run asks for it), built by
`make_generator` from `generation.backend`. `rollout.probe.check_logprobs` checks an engine once
(hf: the trainer's own model) or after every weight sync (engines that hold a copy: vllm).
"""

from rlhflab.rollout.base import Completion, Generator, SamplingParams
from rlhflab.rollout.factory import make_generator
from rlhflab.rollout.hf import HFGenerator

__all__ = ["Completion", "Generator", "HFGenerator", "SamplingParams", "make_generator"]
