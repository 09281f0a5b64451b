"""The batch plan: how one optimizer step splits into micro-batches and processes.

Checked before anything loads; an impossible plan names the nearest valid settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhflab.errors import ConfigError


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int  # examples per optimizer step, all processes together
    micro_batch_size: int  # examples per forward/backward on one process
    world_size: int  # data-parallel processes
    accumulation: int  # micro-batches per optimizer step on each process

    @classmethod
    def build(cls, batch_size: int, micro_batch_size: int, world_size: int = 1) -> "BatchPlan":
        if batch_size < 1 or micro_batch_size < 1 or world_size < 1:
            raise ConfigError(
                f"batch_size ({batch_size}), micro_batch_size ({micro_batch_size}) and world size "
                f"({world_size}) must all be at least 1"
            )
        per_pass = micro_batch_size * world_size
        if batch_size % per_pass:
            lower = batch_size // per_pass * per_pass
            upper = lower + per_pass
            near = [str(v) for v in (lower, upper) if v >= per_pass]
            micro_ok = [str(d) for d in _divisors(batch_size) if (batch_size // d) % world_size == 0]
            what = (
                f"micro_batch_size {micro_batch_size} x world size {world_size} = {per_pass}"
                if world_size > 1
                else f"micro_batch_size {micro_batch_size}"
            )
            accumulation_zero = batch_size < per_pass
            raise ConfigError(
                f"impossible batch plan: batch_size {batch_size} is not a multiple of {what}"
                + (" (that would mean zero gradient-accumulation steps)" if accumulation_zero else "")
                + f". Nearest valid batch_size: {' or '.join(near)}"
                + (
                    f"; or keep batch_size {batch_size} with micro_batch_size in {{{', '.join(micro_ok)}}}."
                    if micro_ok
                    else f" (no micro_batch_size divides batch_size {batch_size} over {world_size} processes)."
                )
            )
        return cls(batch_size, micro_batch_size, world_size, batch_size // per_pass)

    def describe(self, unit: str = "examples") -> str:
        return (
            f"batch plan: {self.batch_size} {unit}/step = {self.world_size} process(es) x "
            f"{self.accumulation} micro-batch(es) x {self.micro_batch_size} {unit}"
        )
