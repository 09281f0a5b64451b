"""Preference optimization from single completions: KTO, NPO and DRO.

Data: the `unpaired` format (prompt, completion, label) for KTO and NPO, the `scored` format
(prompt, completion, reward) for DRO. The losses are in `rlhflab.losses.unpaired` (contract in
docs/unpaired_losses.md); this module feeds them: summed completion log-probs of the policy, the
reference's (precomputed and cached, or online), KTO's reference point over the whole optimizer
step, DRO's value network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rlhflab.algorithms import reference as refcache
from rlhflab.algorithms.base import Algorithm, StepOutput, TrainContext
from rlhflab.config import RunConfig
from rlhflab.errors import DataError
from rlhflab.losses import unpaired as L
from rlhflab.types import LMBatch, TokenizedSeq, UnpairedBatch


def _rows(batch: LMBatch) -> list[TokenizedSeq]:
    """The unpadded sequences of a batch."""
    out = []
    for b, n in enumerate(batch.attention_mask.sum(1).tolist()):
        out.append(TokenizedSeq(batch.input_ids[b, :n].tolist(), batch.loss_mask[b, :n].tolist(), batch.rows[b] if batch.rows else b))
    return out


def _prompt_len(seq: TokenizedSeq) -> int:
    return seq.loss_mask.index(True) if True in seq.loss_mask else len(seq.input_ids)


def mismatched(seqs: list[TokenizedSeq]) -> list[TokenizedSeq]:
    """KTO's mismatched pairs: prompt i followed by the completion of sequence (i + 1) mod n."""
    out = []
    for i, s in enumerate(seqs):
        o = seqs[(i + 1) % len(seqs)]
        p, q = _prompt_len(s), _prompt_len(o)
        out.append(TokenizedSeq(s.input_ids[:p] + o.input_ids[q:], [False] * p + o.loss_mask[q:], s.row))
    return out


def prompt_only(batch: LMBatch) -> LMBatch:
    """The same rows with the attention mask cut at the first scored token (the prompt alone)."""
    first = torch.where(batch.loss_mask.any(1), batch.loss_mask.float().argmax(1), batch.attention_mask.sum(1))
    keep = torch.arange(batch.input_ids.shape[1], device=first.device)[None, :] < first[:, None]
    return LMBatch(batch.input_ids, (batch.attention_mask.bool() & keep).long(), torch.zeros_like(batch.loss_mask), batch.rows)


class PolicyWithValue(nn.Module):
    """DRO's two networks in one module so the loop optimizes and checkpoints both."""

    def __init__(self, policy: nn.Module, value: nn.Module):
        super().__init__()
        self.policy, self.value = policy, value


class _Unpaired(Algorithm):
    data_kind = "unpaired"
    unit = "examples"
    item_name = "completions"
    metric_docs = {
        "logp": "mean summed log-prob of the completion under the policy",
        "log_ratio": "mean of h = logp - ref_logp",
    }

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.s = cfg.algo
        self.ref_model: nn.Module | None = None
        self.precomputed = self.s.reference in ("auto", "precompute")
        self.extra: dict[str, Any] = {"reference_mode": "precompute" if self.precomputed else "online"}

    def policy(self, model: nn.Module) -> nn.Module:
        return model

    def load_model(self, path: str, device: torch.device) -> nn.Module:
        from rlhflab.models import load_causal_lm

        return load_causal_lm(path, device=device, trust_remote_code=self.cfg.trust_remote_code, lora=self.cfg.lora)

    def before_training(self, model: nn.Module, items: list[Any], eval_items: list[Any] | None, ctx: TrainContext) -> None:
        from rlhflab.models import frozen_copy, is_peft, resolve_model_path

        policy = self.policy(model)
        if self.cfg.ref_model is not None:
            self.ref_model = refcache.load_reference_model(self.cfg, ctx.device)
        elif not is_peft(policy) and (not self.precomputed or self.needs_online_reference):
            self.ref_model = frozen_copy(policy)
        if not self.precomputed:
            return
        path = resolve_model_path(self.cfg.ref_model or ctx.model_path)
        for split, part in (("train", items), ("eval", eval_items or [])):
            if part:
                logps, cached = refcache.precompute(
                    part, lambda it: (it.seq,), lambda s: s.loss_mask,
                    lambda chunk: self._reference_logps(policy, self.collate(chunk).seqs.to(ctx.device), True),
                    path, f"dtype={self.cfg.dtype}|device={ctx.device.type}|kind=seq-sums-v1", ctx, split)
                for it, v in zip(part, logps.tolist()):
                    it.ref = v
                self.extra[f"reference_{split}_cached"] = cached
        if not self.needs_online_reference:
            self.ref_model = None  # every reference log-prob is precomputed

    needs_online_reference = False
    """Whether the step needs a reference forward even with precomputed data log-probs (KTO's z0)."""

    def _reference_logps(self, policy: nn.Module, seqs: LMBatch, initial: bool = False) -> Tensor:
        from rlhflab.models.logps import reference_context, sequence_logps

        with reference_context(policy, self.ref_model, initial_policy_ok=initial) as ref:
            return sequence_logps(ref, seqs)[0]

    def collate(self, items: list[Any]) -> UnpairedBatch:
        from rlhflab.data import collate_unpaired

        return collate_unpaired(items, self.pad_id)

    def units(self, batch: UnpairedBatch) -> int:
        return len(batch)

    def logps(self, model: nn.Module, batch: UnpairedBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Policy and reference summed log-probs (B,) and completion lengths (B,)."""
        from rlhflab.models.logps import sequence_logps

        policy = self.policy(model)
        logp, _ = sequence_logps(policy, batch.seqs)
        ref = batch.ref if batch.ref is not None else self._reference_logps(policy, batch.seqs)
        return logp, ref, batch.seqs.loss_mask.sum(1).float()

    def per_example(self, model: nn.Module, batch: UnpairedBatch) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: UnpairedBatch) -> StepOutput:
        loss, metrics = self.per_example(model, batch)
        return StepOutput(loss.sum(), {k: v.detach().sum() for k, v in metrics.items()})

    def evaluate(self, model: nn.Module, items: list[Any], micro_batch_size: int) -> dict[str, float]:
        device = next(model.parameters()).device
        sums: dict[str, float] = {}
        for k in range(0, len(items), micro_batch_size):
            batch = self.collate(items[k:k + micro_batch_size]).to(device)
            self.begin_eval_batch(model, batch)
            loss, metrics = self.per_example(model, batch)
            for name, v in {"loss": loss, **metrics}.items():
                sums[name] = sums.get(name, 0.0) + float(v.sum())
        return {name: v / len(items) for name, v in sums.items()}

    def begin_eval_batch(self, model: nn.Module, batch: UnpairedBatch) -> None:
        """What `begin_step` does before a training step, for one eval micro-batch on this rank alone
        (every rank evaluates the whole eval set)."""

    def summary_extra(self) -> dict[str, Any]:
        return dict(self.extra)

    def save_final(self, model: nn.Module, tokenizer: Any, out_dir: str) -> None:
        from rlhflab.models import save_pretrained_hf

        save_pretrained_hf(self.policy(model), tokenizer, out_dir)


class KTO(_Unpaired):
    name = "kto"
    needs_online_reference = True
    metric_docs = {**_Unpaired.metric_docs,
                   "ref_point": "z0 = max(0, mean over the step's mismatched pairs of logp - ref_logp), no gradient",
                   "reward": "mean beta * (logp - ref_logp)",
                   "desirable": "fraction of desirable examples in the step"}

    def check_data(self, loaded: Any) -> None:
        if loaded.format != "unpaired":
            raise DataError(loaded.path, None, "label", "algorithm: kto needs the unpaired format (prompt, completion, label)")

    def before_training(self, model: nn.Module, items: list[Any], eval_items: list[Any] | None, ctx: TrainContext) -> None:
        n_d = sum(it.label for it in items)
        n_u = len(items) - n_d
        ratio = L.kto_weight_ratio(n_d, n_u, self.s.desirable_weight, self.s.undesirable_weight) if n_d and n_u else None
        lo, hi = L.KTO_WEIGHT_RATIO_RANGE
        if ratio is not None and not lo <= ratio <= hi:
            msg = (f"kto: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = {ratio:.2f} "
                   f"({n_d} desirable, {n_u} undesirable); the KTO paper recommends [{lo}, {hi:.2f}]")
            ctx.console.print(f"[yellow]warning:[/] {msg}")
            self.extra["weight_warning"] = msg
        self.z0 = torch.zeros(())
        super().before_training(model, items, eval_items, ctx)

    def begin_step(self, model: nn.Module, batches: list[Any]) -> None:
        self.z0 = self._reference_point(model, batches, self.dist)

    def begin_eval_batch(self, model: nn.Module, batch: UnpairedBatch) -> None:
        from rlhflab.train.distributed import SINGLE

        self.z0 = self._reference_point(model, [batch], SINGLE)

    def _reference_point(self, model: nn.Module, batches: list[Any], d: Any) -> Tensor:
        """z0 over the step's micro-batches of every rank of `d` (this rank holds `batches`)."""
        from rlhflab.data import collate_lm
        from rlhflab.models.logps import sequence_logps

        per_batch = [_rows(b.seqs) for b in batches]
        if d.enabled:  # the step's micro-batches in global order (rank r holds r, r + W, ...)
            parts = d.all_gather_object(per_batch)
            per_batch = [parts[k % d.world_size][k // d.world_size] for k in range(sum(len(p) for p in parts))]
        seqs = mismatched([s for rows in per_batch for s in rows])
        lo, hi = d.block(len(seqs))  # each rank scores a slice of the mismatched pairs
        device, mbs = batches[0].seqs.input_ids.device, max(len(b) for b in batches)
        policy, diffs = self.policy(model), [torch.zeros(0, device=device)]
        with torch.no_grad():
            for k in range(lo, hi, mbs):
                lm = collate_lm(seqs[k:min(k + mbs, hi)], self.pad_id).to(device)
                diffs.append(sequence_logps(policy, lm)[0] - self._reference_logps(policy, lm))
        cat = torch.cat(diffs)
        if d.enabled:
            total, count = d.sum_floats([float(cat.sum()), cat.numel()])
            cat = torch.tensor([total / count])  # the mean over every rank's pairs
        return L.kto_reference_point(cat, torch.zeros_like(cat))

    def per_example(self, model: nn.Module, batch: UnpairedBatch) -> tuple[Tensor, dict[str, Tensor]]:
        logp, ref, _ = self.logps(model, batch)
        loss, m = L.kto(logp, ref, batch.label, self.z0, beta=self.s.beta, desirable_weight=self.s.desirable_weight,
                        undesirable_weight=self.s.undesirable_weight)
        return loss, {"logp": logp.detach(), "log_ratio": (logp - ref).detach(), "ref_point": self.z0.expand_as(logp),
                      "reward": self.s.beta * (logp - ref).detach(), "desirable": batch.label.float()}


class NPO(_Unpaired):
    name = "npo"
    metric_docs = {**_Unpaired.metric_docs,
                   "retain_nll": "mean per-token NLL of the desirable (retain) rows, counted over all rows"}

    def check_data(self, loaded: Any) -> None:
        if loaded.format != "unpaired":
            raise DataError(loaded.path, None, "label", "algorithm: npo needs the unpaired format (prompt, completion, label)")
        if self.s.retain_weight == 0:
            for ex in loaded.examples:
                if ex.label:
                    raise DataError(loaded.path, ex.row, "label",
                                    "npo trains on undesirable (forget) completions only, but this row is desirable",
                                    "drop desirable rows, or set npo.retain_weight > 0 to use them as a retain set (NPO+RT)")

    def per_example(self, model: nn.Module, batch: UnpairedBatch) -> tuple[Tensor, dict[str, Tensor]]:
        logp, ref, n = self.logps(model, batch)
        forget, _ = L.npo(logp, ref, beta=self.s.beta)
        retain = -logp / n.clamp(min=1)
        loss = torch.where(batch.label, self.s.retain_weight * retain, forget)
        return loss, {"logp": logp.detach(), "log_ratio": (logp - ref).detach(),
                      "retain_nll": torch.where(batch.label, retain, torch.zeros_like(retain)).detach()}


class DRO(_Unpaired):
    name = "dro"
    metric_docs = {**_Unpaired.metric_docs,
                   "value": "mean V(x) of the value network", "advantage": "mean r - V(x)",
                   "policy_loss": "mean policy part of the loss", "value_loss": "mean 1/2 (r - V - tau h)^2 (L_DRO)"}

    def check_data(self, loaded: Any) -> None:
        if loaded.format != "scored":
            raise DataError(loaded.path, None, "reward", "algorithm: dro needs the scored format (prompt, completion, reward)")

    def policy(self, model: nn.Module) -> nn.Module:
        return model.policy if isinstance(model, PolicyWithValue) else model

    def load_model(self, path: str, device: torch.device) -> nn.Module:
        from rlhflab.models import load_scalar_model

        value = load_scalar_model(path, device=device, trust_remote_code=self.cfg.trust_remote_code, lora=self.cfg.lora)
        return PolicyWithValue(super().load_model(path, device), value)

    def per_example(self, model: nn.Module, batch: UnpairedBatch) -> tuple[Tensor, dict[str, Tensor]]:
        from rlhflab.models import scalar_scores

        logp, ref, _ = self.logps(model, batch)
        prompt = prompt_only(batch.seqs)
        value = scalar_scores(model.value, prompt.input_ids, prompt.attention_mask).float()
        loss, m = L.dro(logp, ref, batch.reward, value, tau=self.s.tau, rescale_policy_grad=self.s.rescale_policy_grad)
        return loss, {"logp": logp.detach(), "log_ratio": m["log_ratio"], "value": m["value"], "advantage": m["advantage"],
                      "policy_loss": m["policy_loss"], "value_loss": m["value_loss"]}

    def save_final(self, model: nn.Module, tokenizer: Any, out_dir: str) -> None:
        from pathlib import Path

        from rlhflab.models import save_pretrained_hf

        save_pretrained_hf(model.policy, tokenizer, out_dir)
        save_pretrained_hf(model.value, tokenizer, Path(out_dir) / "value")
