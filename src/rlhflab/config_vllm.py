"""The `generation.vllm:` settings of the online algorithms (docs/vllm.md), kept apart from
config_rl.py for size; the same rules apply (every field documented, checked before any model
loads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rlhflab.errors import ConfigError


@dataclass(frozen=True)
class VLLMConfig:
    """The vLLM rollout engine (`generation.backend: vllm`, GPU only, `pip install 'rlhflab[vllm]'`;
    docs/vllm.md)."""

    gpu_memory_utilization: float = 0.3
    """Fraction of the GPU's memory vLLM may take for its weights, activations and KV cache; the
    trainer (model, gradients, optimizer state) shares the same GPU and needs the rest."""
    sleep: bool = True
    """Put the engine to sleep after every generation (KV cache freed, weights offloaded or dropped)
    and wake it before the next, so training gets the memory back."""
    sleep_level: Literal[1, 2] = 1
    """vLLM sleep level: 1 offloads the engine's weights to CPU memory; 2 drops them (rlhflab pushes
    the full weights after every wake-up anyway), saving the CPU copy. Level 2 has had
    model-specific bugs in vLLM (docs/vllm.md)."""
    mode: Literal["colocate", "separate"] = "colocate"
    """colocate: one in-process engine per training process, on that process's GPU. separate
    (engines on their own GPUs) is not supported yet and is rejected."""
    enforce_eager: bool = False
    """Disable CUDA graphs (slower decoding, faster start, less memory)."""
    max_model_len: int | None = None
    """Longest prompt + completion the engine accepts (None = the model's context length)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """The engine's compute dtype (auto = the checkpoint's)."""
    sync: Literal["full"] = "full"
    """How weights reach the engine: full = every tensor of the policy's state dict (LoRA merged on
    the fly, without touching the training model) before the first generation after a sync."""
    probe_tol: float | None = None
    """Largest engine/trainer log-prob difference the probe after each weight sync accepts; None =
    1e-2 when the engine computes in float32, else 0.5 (16-bit kernels differ from the trainer's
    on low-probability tokens; stale or broken weights differ by several nats)."""


def check_vllm(key: str, g: Any) -> None:
    """Settings checks of the vLLM backend (`g` is the GenerationConfig at `key`); whether vllm and a GPU are there is checked when the run
    starts (rlhflab.rollout.vllm)."""
    v = g.vllm
    if v.mode != "colocate":
        raise ConfigError(f"{key}.vllm.mode: separate (vLLM on its own GPUs) is not supported yet; use mode: colocate "
                          "(one engine per training process, on its GPU, asleep while the trainer steps)")
    if g.top_p < 1.0 or g.top_k > 0:
        raise ConfigError(
            f"{key}: backend vllm needs top_p: 1.0 and top_k: 0; vLLM reports the log-probs of the top-p/top-k "
            "renormalized distribution, not the log softmax(logits / T) the trainer recomputes, so every importance "
            "ratio would be off by the kept mass (docs/vllm.md)")
    if not 0.0 < v.gpu_memory_utilization < 1.0:
        raise ConfigError(f"{key}.vllm.gpu_memory_utilization must be in (0, 1), got {v.gpu_memory_utilization}")
    if v.max_model_len is not None and v.max_model_len < 2:
        raise ConfigError(f"{key}.vllm.max_model_len must be at least 2 (or null), got {v.max_model_len}")
    if v.probe_tol is not None and not v.probe_tol > 0:
        raise ConfigError(f"{key}.vllm.probe_tol must be > 0 (or null), got {v.probe_tol}")
