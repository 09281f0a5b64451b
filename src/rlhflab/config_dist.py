"""The `distributed:` section: how a run launched by torchrun / accelerate uses its processes.

A run started by `torchrun --nproc_per_node N rlhflab train ...` (or `accelerate launch`) reads its
rank and world size from the launcher's environment; without a launcher the run is one process and
this section changes nothing (docs/distributed.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlhflab.errors import ConfigError


@dataclass(frozen=True)
class PhaseTimeouts:
    """Seconds a collective may wait for the other ranks in each phase before the run stops with an
    error naming this rank, the phase and what every other rank was last doing."""

    init: float = 600.0
    """Joining the process group (every rank must start within this)."""
    step: float = 600.0
    """An optimizer step: unit counts, gradient all-reduce, metrics."""
    rollout: float = 1800.0
    """An online round: gathering every rank's completions and per-token tensors (generation time
    differs between ranks, so this is the longest)."""
    data: float = 1800.0
    """Before training: the reference log-probs of the data, computed in shards and gathered."""
    evaluation: float = 3600.0
    """Evaluation during training (the `evaluation:` section runs on rank 0 while the others wait)."""
    checkpoint: float = 1800.0
    """Writing a checkpoint or the final model (rank 0 writes; FSDP gathers the full weights)."""


@dataclass(frozen=True)
class DistributedConfig:
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """ddp: every rank holds the whole model (DistributedDataParallel); fsdp: parameters, gradients
    and optimizer state are sharded over the ranks (FSDP2 `fully_shard` per decoder layer), for
    models whose training state does not fit one device (the weights are still loaded whole on
    each rank first: docs/distributed.md, Limits)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """auto: nccl on CUDA, gloo on CPU."""
    find_unused_parameters: bool = False
    """DDP: allow trainable parameters that get no gradient in a step (slower; only if DDP asks)."""
    timeouts: PhaseTimeouts = field(default_factory=PhaseTimeouts)
    """Per-phase collective timeouts in seconds."""


def check_distributed(d: DistributedConfig) -> None:
    for name in ("init", "step", "rollout", "data", "evaluation", "checkpoint"):
        value = getattr(d.timeouts, name)
        if not value > 0:
            raise ConfigError(f"distributed.timeouts.{name} must be positive seconds, got {value}")
