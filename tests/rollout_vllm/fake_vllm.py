"""A test-only stand-in for the `vllm` package: the part of its public API that
rlhflab.rollout.vllm uses (LLM, SamplingParams, RequestOutput / CompletionOutput / Logprob), running a
tiny Hugging Face model on the CPU. Inject it with `monkeypatch.setitem(sys.modules, "vllm", fake_vllm)`.

It behaves as vLLM does where rlhflab relies on it, and fails loudly where vLLM would misbehave:
- the engine holds its OWN copy of the weights, loaded from the model folder; only
  `apply_model(fn)` -> `model.load_weights(iterable of (HF name, tensor))` changes them, and an
  unknown name raises KeyError (as vLLM's loaders do);
- `sleep(level=2)` destroys the weights' contents (NaN), level 1 keeps them (CPU backup);
  `generate` while anything sleeps and `apply_model` while the weights sleep raise;
- sample j of a request with seed s is drawn with seed s + j (vLLM's parallel sampling);
  `logprobs=0` returns, per token, {token_id: Logprob} of the temperature-scaled distribution
  (logprobs_mode="processed_logprobs"; log softmax(logits) when greedy); `stop_token_ids` end a
  sample and are kept in token_ids; the model's EOS stops only without `ignore_eos`.
Every call is recorded in `LLM.events`; every constructed engine in `LLM.instances`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__version__ = "0.0.fake"

_SAMPLING_FIELDS = {"n", "temperature", "top_p", "top_k", "max_tokens", "seed", "logprobs", "stop", "stop_token_ids",
                    "ignore_eos", "include_stop_str_in_output", "detokenize", "min_tokens"}


class SamplingParams:
    def __init__(self, **kwargs: Any):
        unknown = set(kwargs) - _SAMPLING_FIELDS
        if unknown:
            raise TypeError(f"SamplingParams got unexpected arguments {sorted(unknown)}")
        self.n, self.temperature, self.top_p, self.top_k = 1, 1.0, 1.0, -1
        self.max_tokens, self.seed, self.logprobs, self.stop, self.stop_token_ids = 16, None, None, None, None
        self.ignore_eos = self.include_stop_str_in_output = False
        for k, v in kwargs.items():
            setattr(self, k, v)
        if self.n < 1 or self.temperature < 0:
            raise ValueError("bad sampling params")

    def __repr__(self) -> str:
        return f"SamplingParams({vars(self)})"


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: Any = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


class _EngineModel(torch.nn.Module):
    """What `apply_model` hands to the function: the engine's model with vLLM's `load_weights`."""

    def __init__(self, hf_model: torch.nn.Module, events: list):
        super().__init__()
        self.hf, self.events = hf_model, events

    def load_weights(self, weights: Any) -> set[str]:
        params = dict(self.hf.named_parameters())
        tied = bool(getattr(self.hf.config, "tie_word_embeddings", False))
        loaded, names = set(), []
        for name, tensor in weights:
            names.append(name)
            if tied and name == "lm_head.weight":
                continue
            params[name].data.copy_(tensor.to(params[name].dtype))  # KeyError for a name vLLM does not know
            loaded.add("hf." + name)
        self.events.append(("load_weights", names))
        return loaded


class LLM:
    instances: list["LLM"] = []

    def __init__(self, model: str, **kwargs: Any):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path, self.kwargs = model, kwargs
        self.hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or model)
        self.events: list[tuple] = []
        self.engine_model = _EngineModel(self.hf, self.events)
        self.sleeping: set[str] = set()
        self.requests: list[tuple[list[int], SamplingParams]] = []
        LLM.instances.append(self)

    # ------------------------------------------------------------------ sleep mode
    def sleep(self, level: int = 1) -> None:
        if not self.kwargs.get("enable_sleep_mode"):
            raise RuntimeError("sleep mode is not enabled (enable_sleep_mode=True)")
        self.events.append(("sleep", level))
        if level == 2:
            with torch.no_grad():
                for p in self.hf.parameters():
                    p.fill_(float("nan"))
        self.sleeping = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        tags = list(tags) if tags is not None else ["weights", "kv_cache"]
        self.events.append(("wake_up", tuple(tags)))
        self.sleeping -= set(tags)

    def reset_prefix_cache(self) -> bool:
        self.events.append(("reset_prefix_cache",))
        return True

    def apply_model(self, func: Any) -> list[Any]:
        if "weights" in self.sleeping:
            raise RuntimeError("apply_model while the weights sleep")
        return [func(self.engine_model)]

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[dict], sampling_params: Any = None, use_tqdm: bool = True) -> list[RequestOutput]:
        if self.sleeping:
            raise RuntimeError(f"generate while {sorted(self.sleeping)} sleep")
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        self.events.append(("generate", len(prompts)))
        out = []
        for r, (prompt, sp) in enumerate(zip(prompts, params)):
            ids = list(prompt["prompt_token_ids"])
            self.requests.append((ids, sp))
            samples = [self._sample(ids, sp, j) for j in range(sp.n)]
            out.append(RequestOutput(str(r), ids, samples[::-1]))  # outputs in no particular order
        return out

    def _sample(self, prompt: list[int], sp: SamplingParams, j: int) -> CompletionOutput:
        from rlhflab.rollout.base import SamplingParams as Ours
        from rlhflab.rollout.hf import HFGenerator

        stops = set(sp.stop_token_ids or [])
        if not sp.ignore_eos and self.hf.config.eos_token_id is not None:
            stops.add(int(self.hf.config.eos_token_id))
        engine = HFGenerator(self.hf, self.tokenizer, stops, batch_size=1, pad_token_id=0)
        seed = (sp.seed if sp.seed is not None else 0) + j
        c = engine.generate([prompt], Ours(1, sp.max_tokens, sp.temperature, 1.0, 0, tuple(sp.stop or ())), seed)[0]
        logprobs = None if sp.logprobs is None else [{t: Logprob(lp, 1)} for t, lp in zip(c.token_ids, c.logprobs)]
        return CompletionOutput(j, c.text, c.token_ids, sum(c.logprobs), logprobs, c.finish_reason)
