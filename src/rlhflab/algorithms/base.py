"""What an algorithm supplies to the one training loop.

An algorithm says which data it reads, how to build its model, how to batch its examples, and
the loss of one micro-batch as a SUM over its normalization units (tokens for SFT, pairs for
reward models). The loop divides by the number of units in the whole optimizer step, so a step
split into micro-batches gives the same gradient as one big batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from rlhflab.config import RunConfig


@dataclass
class TrainContext:
    """What `before_training` may use besides the model and the data."""

    model_path: str  # the resolved policy folder
    device: torch.device
    console: Any  # a rich Console
    micro_batch_size: int
    dist: Any = None  # the run's train.distributed.DistContext (None: one process)


@dataclass
class StepOutput:
    loss_sum: Tensor
    """Scalar: the loss summed over this micro-batch's units (graph attached)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Detached scalars, each summed over this micro-batch's units; the loop averages per unit. A
    (sum, count) tuple is averaged over its own summed counts instead."""


class Algorithm(ABC):
    name: ClassVar[str]
    data_kind: ClassVar[str]
    """Which data the algorithm reads: 'sft' | 'pairwise' | 'unpaired' | 'prompt'."""
    unit: ClassVar[str]
    """What the loss is normalized by, e.g. 'tokens' or 'pairs'."""
    metric_docs: ClassVar[dict[str, str]] = {}
    """Every logged metric of this algorithm with its formula (also in docs/metrics.md)."""

    item_name: ClassVar[str] = "examples"
    """What one sampled item is called in the batch plan (examples, packed rows, pairs)."""

    def __init__(self, cfg: RunConfig):
        from rlhflab.train.distributed import SINGLE

        self.cfg = cfg
        self.pad_id = 0
        self.dist = SINGLE
        """This process's place in a multi-process run (train/distributed.py), set by train.run."""

    @property
    def plan_unit(self) -> str:
        """What the batch plan counts (items for offline algorithms, sequences for online ones)."""
        return self.item_name

    def batch_plan(self) -> Any:
        """How an optimizer step splits into micro-batches (checked before anything loads)."""
        from rlhflab.train.distributed import launched_world_size
        from rlhflab.train.plan import BatchPlan

        return BatchPlan.build(self.cfg.batch_size, self.cfg.micro_batch_size, launched_world_size())

    def check_data(self, loaded: Any) -> None:
        """Algorithm-specific checks of the validated rows (before any model loads)."""

    def setup(self, tokenizer: Any) -> None:
        """Called once the tokenizer is known."""
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)

    @abstractmethod
    def load_model(self, path: str, device: torch.device) -> torch.nn.Module:
        """Build the trainable model from a resolved local folder."""

    def before_training(self, model: torch.nn.Module, items: list[Any], eval_items: list[Any] | None,
                        ctx: "TrainContext") -> None:
        """Called once the model is built and before any checkpoint is restored, so `model` is the
        initial policy: precompute reference log-probs, keep a frozen reference copy, etc."""

    def begin_step(self, model: torch.nn.Module, batches: list[Any]) -> None:
        """Called before the micro-batches of an optimizer step, with all of them (e.g. KTO's
        reference point is an estimate over the whole step, computed without gradient)."""

    def batches_for_step(self, model: torch.nn.Module, step: int) -> list[Any] | None:
        """The micro-batches of optimizer step `step` (0-based); None = the loop draws items with its
        sampler and collates them. Online algorithms generate their batches here."""
        return None

    def after_update(self) -> None:
        """Called whenever the trainable weights changed (an optimizer step, a restored checkpoint)."""

    def step_metrics(self, step: int) -> dict[str, Any]:
        """Extra metrics of the step just taken (e.g. rollout diagnostics, time breakdown)."""
        return {}

    def can_checkpoint(self, step: int) -> bool:
        """Whether a checkpoint after `step` optimizer steps can be resumed exactly (online
        algorithms: only at rollout-batch boundaries)."""
        return True

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable algorithm state to checkpoint (e.g. a Lagrange multiplier)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def summary_extra(self) -> dict[str, Any]:
        """Extra entries for summary.json (e.g. how long the reference pass took)."""
        return {}

    def check_history(self, history: list[dict[str, Any]]) -> list[str]:
        """Warnings about the run so far (each is shown once and kept in summary.json)."""
        return []

    def prepare_items(self, items: list[Any]) -> list[Any]:
        """Turn tokenized examples into the items the sampler draws from (e.g. packed rows)."""
        return items

    @abstractmethod
    def collate(self, items: list[Any]) -> Any:
        """Batch a list of items."""

    @abstractmethod
    def units(self, batch: Any) -> int:
        """Normalization units in a batch."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Any) -> StepOutput:
        """Loss of one micro-batch, summed over its units."""

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, items: list[Any], micro_batch_size: int) -> dict[str, float]:
        """Held-out metrics (names without the 'eval/' prefix)."""

    @abstractmethod
    def save_final(self, model: torch.nn.Module, tokenizer: Any, out_dir: str) -> None:
        """Write the final Hugging Face folder."""
