"""The one optimization loop every algorithm runs in.

Per optimizer step: draw `batch_size` items (a pure function of seed and step, so resuming
needs only the step), split them into micro-batches, sum each micro-batch's loss over its units
and divide by the units of the whole step (exact gradient accumulation), check for non-finite
values, clip, step AdamW with the scheduled learning rate, log, checkpoint, evaluate.

In a multi-process run (train/distributed.py) rank r takes micro-batches r, r + W, r + 2W, ... of
the same global step, the step's units are summed over ranks before any backward, and each rank
scales its loss by W / units so DDP's (or FSDP's) gradient average is the exact global gradient:
W processes give the parameters of one process with the same global batch. Metrics are summed
over ranks; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhflab.algorithms.base import Algorithm
from rlhflab.config import RunConfig
from rlhflab.report.runlog import record_warning
from rlhflab.train.checkpoint import load_checkpoint, save_checkpoint
from rlhflab.train.distributed import SINGLE, CollectiveTimeout, DistContext
from rlhflab.train.metrics import MetricsWriter, NullWriter, make_progress
from rlhflab.train.parallel import Engine
from rlhflab.train.schedule import lr_at


class NonFiniteError(RuntimeError):
    """The guard found a non-finite loss or gradient (nonfinite: halt)."""


class Sampler:
    """Item indices of each optimizer step: epoch e is the permutation randperm(n, seed + e)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [self._perm(pos // self.n)[pos % self.n] for pos in range(start, start + self.batch_size)]


@dataclass
class LoopState:
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def autocast(cfg: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and cfg.dtype in ("auto", "bfloat16", "float16"):
        dtype = torch.float16 if cfg.dtype == "float16" else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def make_adamw(params: list[torch.nn.Parameter], **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for the parameters' device and dtype (CPU
    and CUDA, floating point: several times faster than the per-tensor loop on a 135M model),
    else the default implementation."""
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if fusable:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, **kwargs)


def _first_nonfinite_grad(model: torch.nn.Module) -> str:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return "(none found)"


class Loop:
    def __init__(self, cfg: RunConfig, algo: Algorithm, model: torch.nn.Module, items: list[Any],
                 eval_items: list[Any] | None, out_dir: Path, device: torch.device, console,
                 dist: DistContext = SINGLE):
        self.cfg, self.algo, self.model, self.items, self.eval_items = cfg, algo, model, items, eval_items
        self.out_dir, self.device, self.console, self.dist = out_dir, device, console, dist
        self.plan = algo.batch_plan()
        self.sampler = Sampler(len(items), cfg.batch_size, cfg.seed)
        d = cfg.distributed
        self.engine = Engine(model, dist, d.strategy, d.find_unused_parameters)  # before the optimizer: FSDP swaps parameters
        params = [p for p in model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = make_adamw(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.params = params
        self.state = LoopState()
        self.gen_eval: Any = None
        """An eval.during_training.TrainingEvaluator (the run's `evaluation:` section), set by train.run."""

    # ------------------------------------------------------------------ one step
    def _micro_batches(self, step: int) -> list[Any]:
        """This rank's micro-batches of the step: k = rank, rank + W, ... of the global step's."""
        idx = self.sampler.indices(step)
        m = self.cfg.micro_batch_size
        starts = self.dist.strided(range(0, len(idx), m))
        return [self.algo.collate([self.items[i] for i in idx[k:k + m]]) for k in starts]

    def _share(self, batches: list[Any]) -> tuple[list[Any], list[float]]:
        """This rank's share of a step's global micro-batches, and each one's weight. Every rank runs
        the same number of forward/backward passes (the gradient all-reduce is collective), so a
        rank short of one repeats a micro-batch with weight 0."""
        mine = self.dist.strided(batches)
        need = -(-len(batches) // self.dist.world_size)
        weights = [1.0] * len(mine) + [0.0] * (need - len(mine))
        return mine + [batches[0]] * (need - len(mine)), weights

    def train_step(self, step: int) -> dict[str, Any]:
        try:
            with self.dist.phase("step", step + 1):
                return self._train_step(step)
        except RuntimeError as e:  # a gradient all-reduce that hit the default group's timeout
            if not self.dist.enabled or isinstance(e, CollectiveTimeout) or "timed out" not in str(e).lower():
                raise
            raise CollectiveTimeout(f"rank {self.dist.rank}/{self.dist.world_size}: a collective of step {step + 1} "
                                    f"timed out in phase '{self.dist.phase_name}'{self.dist._others()}: {e}") from e

    def _train_step(self, step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.model.train()
        with self.dist.phase("rollout", step + 1), self.engine.gathered():
            batches = self.algo.batches_for_step(self.model, step)
        weights = None
        if batches is None:
            batches = self._micro_batches(step)
        elif batches:
            batches, weights = self._share(batches)
        weights = weights or [1.0] * len(batches)
        t_batches = time.perf_counter() - t0
        if not batches:  # an online round with nothing to learn from (e.g. no pair had a reward gap)
            elapsed = time.perf_counter() - t0
            row = {"step": step + 1, "loss": float("nan"), "lr": 0.0, "grad_norm": float("nan"), "units": 0,
                   "examples": self.cfg.batch_size, "skipped": 1, "epoch": (step + 1) * self.cfg.batch_size / len(self.items),
                   "time/step_s": elapsed, "time/update_s": 0.0}
            row.update(self.algo.step_metrics(step))
            return row
        local_units = sum(self.algo.units(b) * w for b, w in zip(batches, weights))
        total_units = int(self.dist.sum_floats([local_units])[0])
        if total_units == 0:
            from rlhflab.data import raise_if_no_loss_tokens

            for b in batches:
                raise_if_no_loss_tokens(b)
        lr = lr_at(step, lr=self.cfg.optim.lr, max_steps=self.cfg.max_steps, warmup_steps=self.cfg.optim.warmup_steps,
                   schedule=self.cfg.optim.schedule, min_lr_ratio=self.cfg.optim.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        batches = [b.to(self.device) for b in batches]
        with autocast(self.cfg, self.device), self.engine.gathered():
            self.algo.begin_step(self.model, [b for b, w in zip(batches, weights) if w])
        loss_total, metric_sums, metric_counts, tokens = 0.0, {}, {}, 0
        problem = None
        world = self.dist.world_size  # DDP/FSDP average over ranks; the units are global
        for i, (batch, w) in enumerate(zip(batches, weights)):
            last = i == len(batches) - 1
            with autocast(self.cfg, self.device), (contextlib.nullcontext() if last else self.engine.no_sync()):
                out = self.engine(self.algo.loss, batch)  # algo.loss(model, batch) inside DDP's / FSDP's forward
                (out.loss_sum * (w * world) / total_units).backward()  # every rank runs every backward: the sync is collective
            if not w:
                continue
            if not torch.isfinite(out.loss_sum) and problem is None:
                problem = f"non-finite loss ({float(out.loss_sum.detach())}) in micro-batch with rows {getattr(batch, 'rows', [])}"
            loss_total += float(out.loss_sum.detach())
            for k, v in out.metrics.items():
                if isinstance(v, tuple):  # (sum, count): averaged over its own count, not the step's units
                    metric_counts[k] = metric_counts.get(k, 0.0) + float(v[1])
                    v = v[0]
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
            tokens += _count_tokens(batch)
        if self.dist.enabled:  # every rank's sums; a problem on any rank skips the step on all
            parts = self.dist.all_gather_object((loss_total, tokens, metric_sums, metric_counts, problem))
            loss_total, tokens = sum(p[0] for p in parts), sum(p[1] for p in parts)
            metric_sums, metric_counts = _sum_dicts([p[2] for p in parts]), _sum_dicts([p[3] for p in parts])
            problem = next((f"rank {r}: {p[4]}" for r, p in enumerate(parts) if p[4]), None)
        grad_norm = float("nan")
        if problem is None:
            max_norm = self.cfg.optim.max_grad_norm or float("inf")
            grad_norm = self.engine.clip_grad_norm(self.params, max_norm)
            if not math.isfinite(grad_norm):
                problem = f"non-finite gradient (first in parameter '{_first_nonfinite_grad(self.model)}')"
        skipped = 0
        if problem is not None:
            rows = [r for b in batches for r in getattr(b, "rows", [])]
            msg = f"step {step + 1}: {problem}; batch rows {rows}"
            if self.cfg.nonfinite == "halt":
                raise NonFiniteError(msg + ". Stopped (nonfinite: halt); lower optim.lr or check the data. "
                                     "The newest checkpoint is intact.")
            self.console.print(f"[yellow]warning:[/] {msg}; step skipped (nonfinite: skip)")
            if self.dist.is_main:
                record_warning(self.out_dir, step + 1, f"{msg}; step skipped (nonfinite: skip)")
            self.optimizer.zero_grad(set_to_none=True)
            skipped = 1
        else:
            self.optimizer.step()
            self.algo.after_update()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's kernels are done: time/step_s is its real duration
        elapsed = time.perf_counter() - t0
        row: dict[str, Any] = {
            "step": step + 1,
            "loss": loss_total / total_units if not skipped else float("nan"),
            "lr": lr,
            "grad_norm": grad_norm,
            "units": total_units,
            "examples": self.cfg.batch_size,
            "skipped": skipped,
            "epoch": (step + 1) * self.cfg.batch_size / len(self.items),
            "time/step_s": elapsed,
            "time/update_s": elapsed - t_batches,
            "throughput/tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
        }
        for k, v in metric_sums.items():
            count = metric_counts.get(k, total_units)
            row[k] = v / count if count else float("nan")
        row.update(self.algo.step_metrics(step))
        return row

    # ------------------------------------------------------------------ the run
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics; every rank computes them on the whole eval set (online algorithms shard
        their generation inside), so all ranks hold the same numbers."""
        if not self.eval_items:
            return {}
        self.model.eval()
        with self.dist.phase("evaluation", self.state.step), torch.no_grad(), autocast(self.cfg, self.device), \
                self.engine.gathered():
            result = self.algo.evaluate(self.model, self.eval_items, self.cfg.micro_batch_size)
        return {f"eval/{k}": v for k, v in result.items()}

    def resume_from(self, ckpt: Path) -> None:
        with self.dist.phase("checkpoint"):
            state = load_checkpoint(ckpt, self.model, self.optimizer)
        self.state.step = int(state["step"])
        self.algo.load_state_dict(state.get("algorithm_state", {}))
        self.algo.after_update()

    def save(self, step: int) -> None:
        """Checkpoint `step`: rank 0 writes; under FSDP every rank takes part in gathering the state."""
        with self.dist.phase("checkpoint", step):
            save_checkpoint(self.out_dir / "checkpoints", step, self.model, self.optimizer,
                            {"max_steps": self.cfg.max_steps, "seed": self.cfg.seed, "world_size": self.dist.world_size,
                             "algorithm_state": self.algo.state_dict()}, self.cfg.keep_checkpoints,
                            write=self.dist.is_main)
            self.dist.barrier()  # no rank runs ahead of a checkpoint it might resume from

    def run(self, stop_at: int | None = None) -> LoopState:
        cfg = self.cfg
        main = self.dist.is_main
        writer = MetricsWriter(self.out_dir, cfg, self.state.step if self.state.step else None, self.console) if main \
            else NullWriter()
        finished = False
        end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        try:
            with make_progress(self.console) as progress:
                task = progress.add_task("train", total=cfg.max_steps, completed=self.state.step, info="")
                while self.state.step < end:
                    row = self.train_step(self.state.step)
                    self.state.step += 1
                    step = self.state.step
                    last = step == cfg.max_steps
                    if (cfg.eval_every and step % cfg.eval_every == 0) or last:
                        row.update(self.evaluate())
                    if self.gen_eval is not None and self.gen_eval.due(step, last):
                        with self.dist.phase("evaluation", step), self.engine.gathered():
                            if main:  # rank 0 generates and writes evals.jsonl / best/; the others wait
                                row.update(self.gen_eval.run(self.model, step, progress))
                            self.dist.barrier()
                    writer.write(row)
                    self.state.history.append(row)
                    for w in self.algo.check_history(self.state.history):
                        if w not in self.state.warnings:
                            self.state.warnings.append(w)
                            progress.console.print(f"[yellow]warning:[/] step {step}: {w}")
                            if main:
                                record_warning(self.out_dir, step, w)
                    if step % cfg.log_every == 0 or last:
                        info = f"loss {row['loss']:.4f} lr {row['lr']:.2e}"
                        if "eval/loss" in row:
                            info += f" eval {row['eval/loss']:.4f}"
                        progress.update(task, completed=step, info=info)
                    else:
                        progress.update(task, completed=step)
                    due = (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or last
                    if due and self.algo.can_checkpoint(step):
                        self.save(step)
            finished = True
        finally:
            writer.close(ok=finished)
        return self.state


def _sum_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _count_tokens(batch: Any) -> int:
    if hasattr(batch, "attention_mask"):
        return int(batch.attention_mask.bool().sum())
    if hasattr(batch, "chosen"):
        return _count_tokens(batch.chosen) + _count_tokens(batch.rejected)
    if hasattr(batch, "seqs"):
        return _count_tokens(batch.seqs)
    return 0
