"""The process group of a multi-process run, and every collective rlhflab issues, each with the
timeout of its phase.

A run launched by torchrun (or `accelerate launch`, which starts the same workers) finds RANK,
WORLD_SIZE and LOCAL_RANK in its environment and joins the default process group (nccl on CUDA,
gloo on CPU). A second, gloo group carries rlhflab's own small collectives (unit counts, metrics,
gathered rollouts), so they also work beside nccl and can wait with a timeout.

Every collective belongs to a phase (init, data, rollout, step, evaluation, checkpoint). Each
rank records its current phase in the launcher's key-value store, so a collective that waits
longer than its phase's timeout stops the run with an error naming this rank, the phase and what
every other rank was last doing, instead of hanging. Without a launcher, `SINGLE` stands for the
one process and every collective is the identity.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhflab.errors import UserError


class CollectiveTimeout(RuntimeError):
    """A collective waited longer than its phase's timeout (the message names rank and phase)."""


def launched_world_size() -> int:
    """WORLD_SIZE set by torchrun / accelerate, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class DistContext:
    """This process's place in the run. The default is the single process (no collectives)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeouts: dict[str, float] = field(default_factory=dict)
    group: Any = None
    """The gloo group of rlhflab's own collectives (None in a single process)."""
    store: Any = None
    phase_name: str = "start"
    phase_step: int | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ sharding
    def block(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [lo, hi) of n items: the first n % W ranks get one more."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def strided(self, items: Sequence[Any]) -> list[Any]:
        """Items rank, rank + W, rank + 2W, ...: this rank's share of a list of micro-batches."""
        return list(items[self.rank::self.world_size])

    # ------------------------------------------------------------------ phases
    @contextlib.contextmanager
    def phase(self, name: str, step: int | None = None) -> Iterator[None]:
        """Collectives inside use `name`'s timeout; the store shows this rank is in `name`."""
        prev = (self.phase_name, self.phase_step)
        self._enter(name, step)
        try:
            yield
        finally:
            self._enter(*prev)

    def _enter(self, name: str, step: int | None) -> None:
        self.phase_name, self.phase_step = name, step
        if self.store is not None:
            where = name if step is None else f"{name} (step {step})"
            with contextlib.suppress(Exception):
                self.store.set(f"rlhflab/phase/{self.rank}", f"{where} since {time.strftime('%H:%M:%S')}")

    def timeout(self, phase: str | None = None) -> float:
        return float(self.timeouts.get(phase or self.phase_name, self.timeouts.get("step", 600.0)))

    def _others(self) -> str:
        if self.store is None:
            return ""
        seen = []
        for r in range(self.world_size):
            if r == self.rank:
                continue
            try:
                self.store.set_timeout(datetime.timedelta(seconds=5))
                seen.append(f"rank {r}: {self.store.get(f'rlhflab/phase/{r}').decode()}")
            except Exception:  # noqa: BLE001 - the store's host (rank 0) may be gone
                seen.append(f"rank {r}: unknown (the store did not answer; the rank or its node may have died)")
        return "; last phase of the other ranks: " + ", ".join(seen)

    def _wait(self, work: Any, what: str) -> None:
        limit = self.timeout()
        try:
            ok = work.wait(timeout=datetime.timedelta(seconds=limit))
        except RuntimeError as e:
            if "timed out" not in str(e).lower() and "timeout" not in str(e).lower():
                raise
            ok = False
        if ok is False:
            raise CollectiveTimeout(
                f"rank {self.rank}/{self.world_size}: {what} in phase '{self.phase_name}'"
                + (f" (step {self.phase_step})" if self.phase_step is not None else "")
                + f" waited more than {limit:g} s for the other ranks{self._others()}. A rank that is slower on purpose "
                f"(long generation, a large evaluation) needs a longer distributed.timeouts.{self.phase_name}.")

    # ------------------------------------------------------------------ collectives (gloo group, CPU tensors)
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """`tensor` reduced over ranks (sum | max | min), in place; returned for convenience."""
        if not self.enabled:
            return tensor
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        host = tensor.detach().cpu().clone()
        self._wait(dist.all_reduce(host, op=ops[op], group=self.group, async_op=True), f"all_reduce({op})")
        tensor.copy_(host.to(tensor.device))
        return tensor

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        return self.all_reduce(t).tolist()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (pickled; tensors inside should be on the CPU)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        data = torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(self.world_size)]
        self._wait(dist.all_gather(sizes, torch.tensor([data.numel()]), group=self.group, async_op=True),
                   "all_gather (sizes)")
        width = max(int(s) for s in sizes)
        padded = torch.zeros(width, dtype=torch.uint8)
        padded[:data.numel()] = data
        bufs = [torch.zeros(width, dtype=torch.uint8) for _ in range(self.world_size)]
        self._wait(dist.all_gather(bufs, padded, group=self.group, async_op=True), "all_gather")
        return [pickle.loads(b[:int(s)].numpy().tobytes()) for b, s in zip(bufs, sizes)]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        return self.all_gather_object(obj if self.rank == src else None)[src]

    def barrier(self) -> None:
        if self.enabled:
            self.all_reduce(torch.zeros(1))

    def agree(self, flag: bool) -> bool:
        """True only when `flag` is true on every rank."""
        return bool(self.all_reduce(torch.tensor([1.0 if flag else 0.0]), "min").item() > 0)


SINGLE = DistContext()
"""The context of a run without a launcher."""


def init_distributed(backend: str = "auto", timeouts: dict[str, float] | None = None,
                     device_type: str | None = None) -> DistContext:
    """Join the launcher's process group (WORLD_SIZE > 1), or return SINGLE. Idempotent."""
    world = launched_world_size()
    timeouts = dict(timeouts or {})
    if world == 1:
        return DistContext(timeouts=timeouts)
    import torch.distributed as dist

    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE is {world} but {', '.join(missing)} is not set: start multi-process runs with "
                        "torchrun (torchrun --nproc_per_node N $(which rlhflab) train ...) or accelerate launch")
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"rank {rank} has LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPU(s): "
                            "start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local)
    step_timeout = float(timeouts.get("step", 600.0))
    init_timeout = float(timeouts.get("init", 600.0))
    if not dist.is_initialized():
        try:
            # the default group's timeout bounds DDP's gradient all-reduce (phase 'step')
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=max(step_timeout, init_timeout)))
        except Exception as e:  # noqa: BLE001
            raise CollectiveTimeout(f"rank {rank}/{world}: could not join the process group ({backend}) within "
                                    f"{init_timeout:g} s at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
                                    f" (distributed.timeouts.init): {e}") from e
    # rlhflab's own collectives: a gloo group whose own limit is above every phase's, so the phase
    # timeouts (DistContext._wait) are the ones that fire
    longest = max([600.0, *[float(v) for v in timeouts.values()]]) + 60.0
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=longest))
    store = None
    with contextlib.suppress(Exception):
        store = dist.distributed_c10d._get_default_store()  # noqa: SLF001
    ctx = DistContext(rank, world, local, backend, timeouts, group, store)
    ctx._enter("init", None)
    with ctx.phase("init"):
        ctx.barrier()  # every rank is here, and its phase key exists
    return ctx


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
