"""The vLLM backend (GPU, optional extra `rlhflab[vllm]`): a colocated engine that holds its own
copy of the policy's weights.

Colocated: each training process runs one in-process `vllm.LLM` on its own GPU (in a torchrun job
with vLLM's `external_launcher` executor, as TRL and verl do). The engine is put to sleep after
every generation (KV cache freed, weights offloaded to CPU or dropped) and woken before the next,
so the trainer has the memory while it steps. vLLM is imported only when this backend is built:
`import rlhflab` never pulls it in.

Weights: `sync_weights` pushes every tensor of the policy's state dict into the engine through
`LLM.apply_model(lambda model: model.load_weights(...))`, under the Hugging Face checkpoint names
vLLM's loaders expect. A LoRA (peft) policy is merged on the fly, W + scale * B @ A per adapted
module via peft's own `get_delta_weight`, without touching the training model; pushing merged
full weights (rather than the adapter through a LoRARequest) works for every architecture vLLM
loads, needs no `enable_lora` (whose kernels and rank limits differ from the plain model's), no
adapter folder written per round, and keeps the probe's comparison exact. The prefix cache is
reset after every push (it holds keys and values of the old weights).

Log-probs: the engine is built with `logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2; before
that "processed" did not include the temperature) and asked for `logprobs=0` (the sampled
token's only): vLLM then returns log softmax(logits / T) of each sampled token, the quantity
the trainer recomputes, as long as top-p / top-k are off (vLLM's processed log-probs are those of
the renormalized truncated distribution; config validation rejects top_p < 1 and top_k > 0). In
greedy mode vLLM returns log softmax(logits), as the Generator contract asks.

Seeds: request i (global prompt offset + i) gets `SamplingParams(seed=request_seed(seed,
offset + i))` and vLLM gives its sample j the seed + j, so any split of the prompts over calls or
ranks samples the same tokens for the same weights (up to the engine's batch-dependent kernels).
The samples differ from the HF backend's (a different random stream and kernels).
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhflab.errors import UserError
from rlhflab.models.save import merged_weights
from rlhflab.rollout.base import Completion, SamplingParams
from rlhflab.rollout.hf import _M64, _mix64

INSTALL_HINT = "install it with pip install 'rlhflab[vllm]' on a CUDA machine (docs/vllm.md), or use generation.backend: hf"


def import_vllm() -> Any:
    """The vllm module, or a UserError saying how to get it."""
    try:
        import vllm
    except ImportError as e:
        raise UserError(f"generation.backend is vllm but vllm cannot be imported ({e}); {INSTALL_HINT}") from None
    return vllm


def check_device(device: torch.device | str) -> None:
    """vLLM colocated with the trainer needs the trainer on a CUDA GPU."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise UserError(f"generation.backend vllm needs a CUDA GPU, but this run trains on {dev} "
                        f"(torch.cuda.is_available() is {torch.cuda.is_available()}); {INSTALL_HINT}")


def request_seed(seed: int, prompt_id: int) -> int:
    """vLLM's per-request seed of global prompt `prompt_id` in a call seeded `seed`: a splitmix64
    hash in [0, 2^62), so vLLM's seed + j for sample j stays a valid non-negative int64."""
    return _mix64(_mix64(int(seed) & _M64) ^ int(prompt_id)) >> 2


# --------------------------------------------------------------------------- weights
def _load_into(model: nn.Module, weights: Any) -> list[str]:
    """Runs inside vLLM's worker: load `weights`, return the engine parameters left unloaded."""
    loaded = model.load_weights(weights)
    if loaded is None:  # a model whose loader does not report what it loaded
        return []
    return sorted(n for n, _ in model.named_parameters() if n not in loaded)


def model_folder(policy: nn.Module) -> str:
    """The Hugging Face folder the policy was loaded from (vLLM builds the architecture from it)."""
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    path = getattr(base, "name_or_path", None) or getattr(getattr(base, "config", None), "_name_or_path", None)
    if not path or not (Path(path) / "config.json").is_file():
        raise UserError(f"generation.backend vllm builds its engine from the policy's Hugging Face folder, but the policy "
                        f"has none on disk (name_or_path {path!r}); give `model:` as a local folder or smollm2-135m")
    return str(path)


def _launcher_env() -> None:
    """vLLM's external_launcher executor reads torchrun's variables; a single process gets rank 0 of 1."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine lives in this process


# --------------------------------------------------------------------------- the engine
class VLLMGenerator:
    """A colocated vLLM engine generating for `model` (the policy, plain or peft); see the module
    docstring. `holds_copy` tells the trainer to probe the engine after every weight sync."""

    holds_copy = True

    def __init__(self, model: nn.Module, tokenizer: Any, stop_token_ids: set[int], cfg: Any, llm: Any):
        self.model, self.tokenizer, self.cfg, self.llm = model, tokenizer, cfg, llm
        self.vllm = import_vllm()
        self.stop_token_ids = sorted(int(t) for t in stop_token_ids)
        self.sleeping: set[str] = set()
        self.stale = True  # the engine's weights are the folder's, not (yet) the trainer's
        self.pushes = 0
        if cfg.sleep:
            self._sleep()

    @classmethod
    def create(cls, model: nn.Module, tokenizer: Any, stop_token_ids: set[int], cfg: Any, device: torch.device | str,
               seed: int = 0, trust_remote_code: bool = False) -> "VLLMGenerator":
        """Check vllm and the GPU, then build the engine from the policy's folder."""
        vllm = import_vllm()
        check_device(device)
        path = model_folder(model)
        _launcher_env()
        kwargs: dict[str, Any] = dict(
            model=path, tokenizer=path, dtype=cfg.dtype, gpu_memory_utilization=cfg.gpu_memory_utilization,
            enforce_eager=cfg.enforce_eager, enable_sleep_mode=cfg.sleep, logprobs_mode="processed_logprobs",
            distributed_executor_backend="external_launcher", tensor_parallel_size=1, seed=int(seed),
            trust_remote_code=trust_remote_code)
        if cfg.max_model_len is not None:
            kwargs["max_model_len"] = cfg.max_model_len
        return cls(model, tokenizer, stop_token_ids, cfg, vllm.LLM(**kwargs))

    @property
    def probe_tol(self) -> float:
        """The probe's limit on the engine/trainer log-prob difference (VLLMConfig.probe_tol)."""
        if self.cfg.probe_tol is not None:
            return float(self.cfg.probe_tol)
        return 1e-2 if self.cfg.dtype == "float32" else 0.5

    # ------------------------------------------------------------------ sleep / wake / sync
    def _sleep(self) -> None:
        self.llm.sleep(level=self.cfg.sleep_level)
        self.sleeping = {"weights", "kv_cache"}

    def _wake(self, tag: str) -> None:
        if tag not in self.sleeping:
            return
        if tag == "weights":
            torch.cuda.empty_cache()  # give the trainer's cached blocks back before vLLM maps its memory
            if self.cfg.sleep_level == 2:
                self.stale = True  # level 2 dropped the weights
        self.llm.wake_up(tags=[tag])
        self.sleeping.discard(tag)

    def sync_weights(self) -> None:
        """Push the policy's current (merged) weights into the engine."""
        self.stale = True
        self._wake("weights")
        self._push()

    def _push(self) -> None:
        missing = self.llm.apply_model(functools.partial(_load_into, weights=merged_weights(self.model)))
        left = sorted({n for per_worker in missing or [] for n in (per_worker or [])})
        if left:
            raise RuntimeError(f"the vLLM engine did not receive {len(left)} of its parameters from the policy's state dict "
                               f"(e.g. {', '.join(left[:5])}): the weight names do not match what vLLM's loader expects")
        self.llm.reset_prefix_cache()  # cached keys / values were computed with the old weights
        self.stale = False
        self.pushes += 1

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: list[list[int]], params: SamplingParams, seed: int, offset: int = 0) -> list[Completion]:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if params.top_p < 1.0 or params.top_k > 0:
            raise UserError("the vLLM backend samples with top_p 1 and top_k off only (docs/vllm.md)")
        if not prompts:
            return []
        self._wake("weights")
        if self.stale:
            self._push()
        self._wake("kv_cache")
        try:
            requests = [{"prompt_token_ids": list(p)} for p in prompts]
            sampling = [self._sampling_params(params, request_seed(seed, offset + i)) for i in range(len(prompts))]
            outputs = self.llm.generate(requests, sampling_params=sampling, use_tqdm=False)
        finally:
            if self.cfg.sleep:
                self._sleep()
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [c for i, out in enumerate(outputs) for c in self._completions(i, out, params)]

    def _sampling_params(self, params: SamplingParams, seed: int) -> Any:
        """Our SamplingParams as vLLM's: the stop tokens are exactly ours (the model's EOS only
        when it is one of them), stop strings kept in the output, the sampled token's log-prob."""
        return self.vllm.SamplingParams(
            n=params.n, temperature=params.temperature, max_tokens=params.max_new_tokens, seed=seed, logprobs=0,
            stop_token_ids=list(self.stop_token_ids), ignore_eos=True, stop=list(params.stop) or None,
            include_stop_str_in_output=True)

    def _completions(self, i: int, out: Any, params: SamplingParams) -> list[Completion]:
        samples = sorted(out.outputs, key=lambda o: o.index)
        if len(samples) != params.n:
            raise RuntimeError(f"vLLM returned {len(samples)} samples for prompt {i}, expected {params.n}")
        result = []
        for o in samples:
            ids = [int(t) for t in o.token_ids]
            if o.logprobs is None or len(o.logprobs) != len(ids):
                raise RuntimeError(f"vLLM returned {0 if o.logprobs is None else len(o.logprobs)} log-probs for "
                                   f"{len(ids)} tokens (prompt {i}); the engine must be asked for logprobs=0")
            logprobs = [float(pos[t].logprob) for t, pos in zip(ids, o.logprobs)]
            if o.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM finished prompt {i} with reason {o.finish_reason!r} (expected stop or length)")
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for s in params.stop:
                if s in text:
                    text = text[: text.index(s) + len(s)]
            result.append(Completion(i, ids, logprobs, o.finish_reason, text))
        return result
