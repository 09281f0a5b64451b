"""How the loop runs the model: as it is (one process), under DistributedDataParallel, or sharded
with FSDP2 (`fully_shard`).

DDP and FSDP see a parameter's use only inside the forward of the module they wrap, but an
algorithm's loss calls its model in many ways (the decoder alone and then the LM head on completion
positions, a critic, the adapter-disabled base as reference). So the wrapped module is `StepModule`,
whose forward runs any function of the model: `engine(fn, *args)` = `fn(model, *args)` with every
parameter use inside the wrapper, gradients synchronized on the last micro-batch of a step.

Work outside a training forward (generation, reference and old-policy passes, evaluation, saving)
runs inside `engine.gathered()`: a no-op for DDP, where every rank holds the whole model; for FSDP
the full parameters are gathered on every rank for its duration (models.save writes them from
there, since FSDP's own state_dict() would hand back the shards).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from rlhflab.train.distributed import DistContext


class StepModule(nn.Module):
    """The model, with `forward(fn, *args) = fn(model, *args)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.model, *args)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of every Hugging Face model inside `model` (their `_no_split_modules`
    classes): the units FSDP shards and gathers one at a time."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


class Engine:
    """Runs the model for the loop: `engine(fn, *args)`, `no_sync()`, `gathered()`, `clip_grad_norm()`."""

    def __init__(self, model: nn.Module, dist: DistContext, strategy: str = "ddp", find_unused_parameters: bool = False):
        self.model, self.dist, self.strategy = model, dist, strategy if dist.enabled else "none"
        self.wrapped: nn.Module | None = None
        self.fsdp_modules: list[Any] = []
        if self.strategy == "ddp":
            import inspect

            from torch.nn.parallel import DistributedDataParallel

            # device_ids=None: the loop moves batches itself; no buffer sync per forward: no batch-norm
            # statistics to keep in step (the constructor still broadcasts rank 0's weights once)
            no_buffer_sync = ({"forward_sync_buffers": False}
                              if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                              else {"broadcast_buffers": False})
            self.wrapped = DistributedDataParallel(StepModule(model), device_ids=None,
                                                   find_unused_parameters=find_unused_parameters, **no_buffer_sync)
        elif self.strategy == "fsdp":
            from torch.distributed.fsdp import FSDPModule, fully_shard

            layers = decoder_layers(model)
            if not layers:
                from rlhflab.errors import ConfigError

                raise ConfigError("distributed.strategy fsdp: the model declares no decoder-layer classes "
                                  "(_no_split_modules), so there is nothing to shard layer by layer; use strategy: ddp")
            for layer in layers:
                fully_shard(layer)
            root = StepModule(model)
            fully_shard(root)
            # mark the root now: work outside the training forward (generation, reference passes)
            # calls the layers directly, and a layer reached first would take itself for the root
            root._get_fsdp_state()._lazy_init()  # noqa: SLF001
            self.wrapped = root
            self.fsdp_modules = [m for m in root.modules() if isinstance(m, FSDPModule)]
        elif self.strategy != "none":
            raise ValueError(f"unknown distributed strategy {strategy!r}")

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.wrapped is None:
            return fn(self.model, *args)
        return self.wrapped(fn, *args)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally (every micro-batch of a step but the last)."""
        if self.strategy == "ddp":
            with self.wrapped.no_sync():  # type: ignore[union-attr]
                yield
        elif self.strategy == "fsdp":
            self.wrapped.set_requires_gradient_sync(False)  # type: ignore[union-attr]
            try:
                yield
            finally:
                self.wrapped.set_requires_gradient_sync(True)  # type: ignore[union-attr]
        else:
            yield

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """The full parameters on every rank while inside (FSDP); nothing to do otherwise."""
        if self.strategy != "fsdp":
            yield
            return
        for m in self.fsdp_modules:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        try:
            yield
        finally:
            for m in self.fsdp_modules:
                m.reshard()
                m.set_reshard_after_forward(True, recurse=False)

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        """The global gradient norm (before clipping), identical on every rank."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)
