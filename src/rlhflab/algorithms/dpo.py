"""Offline preference optimization: every pairwise loss of `rlhflab.losses.preference.PAIRWISE`.

One step for all of them: chosen and rejected go through the policy in one concatenated forward
(2B sequences), the LM head runs only on completion tokens (`rlhflab.models.logps`), and the
reference log-probs come either from a pass over the data before training (`reference:
precompute`, cached on disk) or from a reference forward every step (`online`). With LoRA the
reference is the adapter-disabled base. The configured losses are summed with their weights;
the loop averages over pairs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlhflab.algorithms import reference as refcache
from rlhflab.algorithms.base import Algorithm, StepOutput, TrainContext
from rlhflab.config import RunConfig, dpo_losses
from rlhflab.errors import DataError
from rlhflab.eval.stats import falling_trend
from rlhflab.losses.preference import PAIRWISE, PairLogps, hparams_of
from rlhflab.types import LMBatch, PairBatch


_COMMON = ("chosen_reward", "rejected_reward", "margin", "accuracy")
"""Per-loss metrics the trainer logs once for all losses (reward/chosen, ...)."""


def concat_sides(batch: PairBatch) -> LMBatch:
    """Chosen rows then rejected rows: one (2B, T) batch."""
    c, r = batch.chosen, batch.rejected
    return LMBatch(
        input_ids=torch.cat([c.input_ids, r.input_ids]),
        attention_mask=torch.cat([c.attention_mask, r.attention_mask]),
        loss_mask=torch.cat([c.loss_mask, r.loss_mask]),
        rows=c.rows + r.rows,
    )


class DPO(Algorithm):
    name = "dpo"
    data_kind = "pairwise"
    unit = "pairs"
    item_name = "pairs"
    metric_docs = {
        "reward/chosen": "mean implicit reward of the chosen response: beta * (logp_c - ref_logp_c); "
                         "reference-free losses: beta * logp_c / len_c",
        "reward/rejected": "the same for the rejected response",
        "reward/margin": "mean of reward/chosen - reward/rejected",
        "reward/accuracy": "fraction of pairs with reward/chosen > reward/rejected",
        "logp/chosen": "mean summed log-prob of the chosen completion under the policy",
        "logp/rejected": "mean summed log-prob of the rejected completion",
        "logp/chosen_per_token": "mean of logp_c / len_c (watched for the falling-chosen warning)",
        "logratio/chosen": "mean per-token log(pi / pi_ref) on the chosen completion: (logp_c - ref_logp_c) / len_c",
        "logratio/rejected": "the same on the rejected completion",
        "loss/<name>": "each configured loss, before its weight",
        "<name>/<key>": "loss-specific quantities (see docs/preference_losses.md)",
        "eval/kl": "exact per-token KL(pi || pi_ref) = sum_v pi(v) log(pi(v) / pi_ref(v)), averaged over "
                   "the eval completions' tokens (both sides)",
    }

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.d = cfg.dpo
        self.losses = dpo_losses(self.d)
        needs = set().union(*(PAIRWISE[n].requires for n, _, _ in self.losses))
        self.needs_kl = "token_kl" in needs
        self.needs_ref = "reference" in needs or self.needs_kl
        if not self.needs_ref:
            self.mode = "none"
        elif self.needs_kl or self.d.reference == "online":
            self.mode = "online"
        else:
            self.mode = "precompute"
        self.needs_rewards = "rewards" in needs
        betas = [float(hp.get("beta", hparams_of(n)["beta"])) for n, _, hp in self.losses if "beta" in hparams_of(n)]
        self.beta = betas[0] if betas else 0.1
        """beta of the implicit rewards in the metrics: the first configured loss's beta, else 0.1."""
        self.ref_model: torch.nn.Module | None = None
        self.format_ids: Tensor | None = None
        self.extra: dict[str, Any] = {"reference_mode": self.mode}

    # ------------------------------------------------------------------ data and models
    def check_data(self, loaded: Any) -> None:
        have = [("chosen_winrate" in ex.scores, "rejected_winrate" in ex.scores) for ex in loaded.examples]
        if any(any(h) for h in have) and not all(all(h) for h in have):
            ex = loaded.examples[next(i for i, h in enumerate(have) if not all(h))]
            raise DataError(loaded.path, ex.row, "chosen_winrate", "some rows have win rates and this one lacks "
                            "chosen_winrate or rejected_winrate", "give both win rates on every row, or on none")
        if not self.needs_rewards:
            return
        for ex in loaded.examples:
            for col in ("chosen_reward", "rejected_reward"):
                if col not in ex.scores:
                    raise DataError(loaded.path, ex.row, col, f"dpo.loss rpo needs '{col}' on every row",
                                    "add chosen_reward and rejected_reward (numbers, e.g. reward-model scores)")

    def setup(self, tokenizer: Any) -> None:
        super().setup(tokenizer)
        if self.d.mask_format_tokens:
            self.format_set = set(tokenizer.all_special_ids)
            self.format_ids = torch.tensor(sorted(self.format_set), dtype=torch.long)

    def load_model(self, path: str, device: torch.device) -> torch.nn.Module:
        from rlhflab.models import load_causal_lm

        return load_causal_lm(path, device=device, trust_remote_code=self.cfg.trust_remote_code, lora=self.cfg.lora)

    def before_training(self, model: torch.nn.Module, items: list[Any], eval_items: list[Any] | None,
                        ctx: TrainContext) -> None:
        from rlhflab.models import frozen_copy, is_peft

        if self.mode == "none":
            return
        if self.cfg.ref_model is not None:
            self.ref_model = refcache.load_reference_model(self.cfg, ctx.device)
        elif not is_peft(model) and (self.mode == "online" or (self.d.eval_kl and eval_items)):
            self.ref_model = frozen_copy(model)
        if self.mode == "precompute":
            ident = self.cfg.ref_model or ctx.model_path
            for name, part in (("train", items), ("eval", eval_items or [])):
                if part:
                    self._precompute(model, part, ident, ctx, name)
            if self.cfg.ref_model is not None and not (self.d.eval_kl and eval_items):
                self.ref_model = None  # no longer needed

    def _precompute(self, model: torch.nn.Module, items: list[Any], ident: str, ctx: TrainContext, split: str) -> None:
        from rlhflab.models import resolve_model_path

        logps, cached = refcache.precompute(
            items, lambda it: (it.chosen, it.rejected), self._mask_list,
            lambda part: self._ref_pair_logps(model, part, ctx.device), resolve_model_path(ident),
            f"dtype={self.cfg.dtype}|device={ctx.device.type}|kind=pair-sums-v1", ctx, split)
        for it, (c, r) in zip(items, logps.tolist()):
            it.ref = (c, r)
        self.extra[f"reference_{split}_cached"] = cached

    def _mask_list(self, seq: Any) -> list[bool]:
        if self.format_ids is None:
            return seq.loss_mask
        return [m and t not in self.format_set for m, t in zip(seq.loss_mask, seq.input_ids)]

    def _ref_pair_logps(self, model: torch.nn.Module, part: list[Any], device: torch.device) -> Tensor:
        from rlhflab.models.logps import reference_context, sequence_logps

        both = concat_sides(self.collate(part).to(device))
        with reference_context(model, self.ref_model, initial_policy_ok=True) as ref:
            logp, _ = sequence_logps(ref, both)
        B = len(part)
        return torch.stack([logp[:B], logp[B:]], dim=1)  # (B, 2)

    def collate(self, items: list[Any]) -> PairBatch:
        from rlhflab.data import collate_pairs

        batch = collate_pairs(items, self.pad_id)
        if self.format_ids is not None:
            for side in (batch.chosen, batch.rejected):
                side.loss_mask &= ~torch.isin(side.input_ids, self.format_ids)
        return batch

    def units(self, batch: PairBatch) -> int:
        return len(batch)

    # ------------------------------------------------------------------ the step
    def pair_logps(self, model: torch.nn.Module, batch: PairBatch) -> PairLogps:
        """Policy (and reference) log-probs of a batch as the losses' input."""
        from rlhflab.models.logps import reference_context, sequence_logps

        B = len(batch)
        both = concat_sides(batch)
        logp, tok = sequence_logps(model, both)  # (2B,)
        lens = both.loss_mask.sum(1).float()
        p = PairLogps(chosen=logp[:B], rejected=logp[B:], chosen_len=lens[:B], rejected_len=lens[B:])
        if batch.ref_chosen is not None:
            p.ref_chosen, p.ref_rejected = batch.ref_chosen, batch.ref_rejected
        elif self.mode != "none":
            with reference_context(model, self.ref_model) as ref:
                ref_logp, ref_tok = sequence_logps(ref, both, materialize=not self.needs_kl)
            p.ref_chosen, p.ref_rejected = ref_logp[:B], ref_logp[B:]
            if self.needs_kl:
                kl = tok.sums(_token_kl(tok, ref_tok), 2 * B)
                p.chosen_token_kl, p.rejected_token_kl = kl[:B], kl[B:]
        for name in ("chosen_reward", "rejected_reward", "chosen_winrate", "rejected_winrate"):
            if name in batch.scores:
                setattr(p, name, batch.scores[name])
        return p

    def _losses(self, p: PairLogps) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted per-pair loss (B,) and per-pair metrics (B,)."""
        total = torch.zeros_like(p.chosen)
        metrics: dict[str, Tensor] = {}
        for name, weight, hp in self.losses:
            loss, m = PAIRWISE[name](p, **hp)
            total = total + weight * loss
            metrics[f"loss/{name}"] = loss.detach()
            metrics.update({f"{name}/{k}": v.detach().expand_as(p.chosen) for k, v in m.items() if k not in _COMMON})
        c, r = p.chosen.detach(), p.rejected.detach()
        lc, lr = p.chosen_len.clamp(min=1), p.rejected_len.clamp(min=1)
        if p.ref_chosen is not None:
            hc, hr = c - p.ref_chosen, r - p.ref_rejected
            rc, rr = self.beta * hc, self.beta * hr
            metrics["logratio/chosen"], metrics["logratio/rejected"] = hc / lc, hr / lr
        else:
            rc, rr = self.beta * c / lc, self.beta * r / lr
        metrics.update({
            "reward/chosen": rc, "reward/rejected": rr, "reward/margin": rc - rr,
            "reward/accuracy": (rc > rr).float(), "logp/chosen": c, "logp/rejected": r,
            "logp/chosen_per_token": c / lc,
        })
        return total, metrics

    def loss(self, model: torch.nn.Module, batch: PairBatch) -> StepOutput:
        per_pair, metrics = self._losses(self.pair_logps(model, batch))
        return StepOutput(per_pair.sum(), {k: v.sum() for k, v in metrics.items()})

    def evaluate(self, model: torch.nn.Module, items: list[Any], micro_batch_size: int) -> dict[str, float]:
        device = next(model.parameters()).device
        sums: dict[str, float] = {}
        kl_sum, kl_tokens = 0.0, 0
        for k in range(0, len(items), micro_batch_size):
            batch = self.collate(items[k:k + micro_batch_size]).to(device)
            per_pair, metrics = self._losses(self.pair_logps(model, batch))
            sums["loss"] = sums.get("loss", 0.0) + float(per_pair.sum())
            for name, v in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(v.sum())
            if self.d.eval_kl and self.mode != "none":
                kl, n = self._eval_kl(model, batch)
                kl_sum, kl_tokens = kl_sum + kl, kl_tokens + n
        out = {name: v / len(items) for name, v in sums.items()}
        if kl_tokens:
            out["kl"] = kl_sum / kl_tokens
        return out

    def _eval_kl(self, model: torch.nn.Module, batch: PairBatch) -> tuple[float, int]:
        from rlhflab.models.logps import completion_logits, reference_context
        from rlhflab.ops import policy_ref_kl

        both = concat_sides(batch)
        tok = completion_logits(model, both)
        with reference_context(model, self.ref_model) as ref:
            ref_tok = completion_logits(ref, both)
        return float(policy_ref_kl(tok.logits, ref_tok.logits).sum()), int(tok.targets.numel())

    def check_history(self, history: list[dict[str, Any]]) -> list[str]:
        w = self.d.chosen_logp_warn_steps
        if not w or len(history) < w or getattr(self, "_warned_chosen", False):
            return []
        values = [h["logp/chosen_per_token"] for h in history[-w:] if "logp/chosen_per_token" in h]
        if len(values) == w and falling_trend(values, 0.1):
            self._warned_chosen = True
            return [f"the chosen responses' log-prob per token fell steadily over the last {w} steps "
                    f"({values[0]:.3f} -> {values[-1]:.3f}): the policy is lowering the likelihood of the "
                    "preferred answers, a known DPO failure mode. Consider dpo.loss: dpop, dpo_nll, or a lower lr."]
        return []

    def summary_extra(self) -> dict[str, Any]:
        return dict(self.extra)

    def save_final(self, model: torch.nn.Module, tokenizer: Any, out_dir: str) -> None:
        from rlhflab.models import save_pretrained_hf

        save_pretrained_hf(model, tokenizer, out_dir)


def _token_kl(tok: Any, ref_tok: Any) -> Tensor:
    """Per-token KL(reference || policy) (N,), differentiable in the policy's logits."""
    from rlhflab.ops import ref_policy_kl

    if ref_tok.logits is None and not hasattr(ref_tok.head, "lora_A"):
        return ref_policy_kl(tok.logits, ref_tok.hidden, ref_tok.head)
    ref_logits = ref_tok.logits if ref_tok.logits is not None else ref_tok.head(ref_tok.hidden)
    lq = torch.log_softmax(ref_logits.float(), dim=-1)  # fallback: both (N, V) tensors at once
    return (lq.exp() * (lq - torch.log_softmax(tok.logits.float(), dim=-1))).sum(-1)
