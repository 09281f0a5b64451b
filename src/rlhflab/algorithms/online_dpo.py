"""Online / iterative DPO and rejection-sampling fine-tuning on the shared rollout rounds.

online_dpo (Qwen2's online stage, 2407.10671 Sec. 4.2; iterative DPO, 2312.11456): each round,
sample `num_generations` responses per prompt from the current policy, let the scorers pick the
best and the worst as a (chosen, rejected) pair, and take DPO-family steps on the pairs with the
reference's log-probs computed once per round. Any loss of `losses.preference.PAIRWISE` that
needs only the reference, lengths or rewards works (the scores go in as chosen/rejected rewards,
so `rpo` uses them).

best_of_n (rejection-sampling fine-tuning, as in Llama 2 Sec. 3.2.3 and RAFT 2304.06767): each
round, keep each prompt's highest-reward sample (optionally only above `min_reward`) and take a
supervised step on it (token NLL, normalized by tokens).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rlhflab.algorithms.base import StepOutput, TrainContext
from rlhflab.algorithms.online import OnlineAlgorithm
from rlhflab.algorithms.rollout_batch import RolloutBatch, per_token_to_sequences
from rlhflab.losses.preference import PAIRWISE, PairLogps, hparams_of
from rlhflab.models.logps import completion_token_logps, reference_context
from rlhflab.rewards.base import Scores
from rlhflab.rollout import Completion

ONLINE_PAIR_INPUTS = frozenset({"reference", "lengths", "rewards"})


class OnlineDPO(OnlineAlgorithm):
    name = "online_dpo"
    unit = "pairs"
    metric_docs = {
        "pairs": "prompts whose best and worst samples differ by more than min_gap (trained on)",
        "reward/chosen_score": "mean scorer reward of the chosen (best) samples",
        "reward/rejected_score": "mean scorer reward of the rejected (worst) samples",
        "reward/accuracy": "fraction of pairs whose implicit reward ranks chosen above rejected",
        "reward/margin": "mean implicit reward margin beta * (h_c - h_r)",
    }

    def __init__(self, cfg):
        super().__init__(cfg)
        self.ref_model: nn.Module | None = None
        fn = PAIRWISE[self.s.loss]
        missing = set(getattr(fn, "requires", ())) - ONLINE_PAIR_INPUTS
        if missing:
            from rlhflab.errors import ConfigError

            raise ConfigError(f"online_dpo.loss '{self.s.loss}' needs {', '.join(sorted(missing))}, which online pairs do "
                              "not have; use a loss that needs only the reference, lengths or rewards (dpo, ipo, rpo, ...)")
        self.hparams = {"beta": self.s.beta} if "beta" in hparams_of(self.s.loss) else {}

    def batch_plan(self) -> Any:
        from rlhflab.algorithms.base import Algorithm

        return Algorithm.batch_plan(self)  # batch_size pairs per step (fewer when some prompts give no pair)

    plan_unit = "pairs"

    def setup_models(self, model: nn.Module, ctx: TrainContext) -> None:
        from rlhflab.algorithms.reference import load_reference_model
        from rlhflab.models import frozen_copy, is_peft

        needs_ref = "reference" in getattr(PAIRWISE[self.s.loss], "requires", ())
        if not needs_ref:
            return
        if self.cfg.ref_model is not None:
            self.ref_model = load_reference_model(self.cfg, ctx.device)
        elif not is_peft(model):
            self.ref_model = frozen_copy(model)

    def prepare(self, model: nn.Module, batch: RolloutBatch, completions: list[Completion], scores: dict[str, Scores],
                round_: int) -> RolloutBatch | None:
        G = self.gen_cfg.num_generations
        r = scores["reward"].values.view(-1, G)
        best, worst = r.argmax(1), r.argmin(1)
        keep = (r.max(1).values - r.min(1).values) > self.s.min_gap
        idx = torch.arange(r.shape[0])[keep]
        self.pending["pairs"] = int(keep.sum())
        if not bool(keep.any()):
            return None
        chosen = (idx * G + best[keep]).tolist()
        rejected = (idx * G + worst[keep]).tolist()
        rows = chosen + rejected  # chosen first, then rejected, in the same prompt order
        out = batch.select(rows)
        flat = scores["reward"].values
        out.seq["score"] = flat[torch.tensor(rows)]
        self.pending["reward/chosen_score"] = float(flat[torch.tensor(chosen)].mean())
        self.pending["reward/rejected_score"] = float(flat[torch.tensor(rejected)].mean())
        if "reference" in getattr(PAIRWISE[self.s.loss], "requires", ()):
            policy = self.policy(model)
            dev = next(policy.parameters()).device
            m = self.cfg.micro_batch_size * 2
            chunks = [out.select(list(range(s, min(s + m, len(out))))) for s in range(0, len(out), m)]

            def ref_sums(part: RolloutBatch) -> Tensor:
                part = part.to(dev)
                lp, _ = completion_token_logps(ref, part.lm)
                return per_token_to_sequences(lp, part.loss_mask).cpu()

            with reference_context(policy, self.ref_model) as ref:
                out.seq["ref"] = torch.cat(self.sharded_map(ref_sums, chunks))
        return out

    def batches_for_step(self, model: nn.Module, step: int) -> list[Any] | None:
        if self.buffer_round != step:
            self.buffer = self.make_rollout(model, step)
            self.buffer_round = step
        buf = self.buffer
        if buf is None:
            return []
        P = len(buf) // 2
        m = self.cfg.micro_batch_size
        return [buf.select(list(range(s, min(s + m, P))) + list(range(P + s, P + min(s + m, P)))) for s in range(0, P, m)]

    def units(self, batch: RolloutBatch) -> int:
        return len(batch) // 2

    def loss(self, model: nn.Module, batch: RolloutBatch) -> StepOutput:
        lp, _ = completion_token_logps(self.policy(model), batch.lm)
        seq = per_token_to_sequences(lp, batch.loss_mask)
        lengths = batch.loss_mask.sum(1).float()
        P = len(batch) // 2
        ref = batch.seq.get("ref")
        logps = PairLogps(seq[:P], seq[P:], None if ref is None else ref[:P], None if ref is None else ref[P:],
                          lengths[:P], lengths[P:], batch.seq["score"][:P], batch.seq["score"][P:])
        per_pair, m = PAIRWISE[self.s.loss](logps, **self.hparams)
        metrics = {f"reward/{k.replace('_reward', '')}" if k.endswith("_reward") else f"reward/{k}": v.sum()
                   for k, v in m.items() if k in ("chosen_reward", "rejected_reward", "margin", "accuracy")}
        metrics["logp/chosen"] = seq[:P].detach().sum()
        metrics["logp/rejected"] = seq[P:].detach().sum()
        return StepOutput(per_pair.sum(), metrics)


class BestOfN(OnlineAlgorithm):
    name = "best_of_n"
    unit = "tokens"
    metric_docs = {
        "kept": "fraction of prompts whose best sample was kept (reward >= min_reward)",
        "reward/best": "mean reward of the kept samples (reward/mean: of all samples)",
        "nll": "token-mean negative log-likelihood of the kept samples",
    }

    def prepare(self, model: nn.Module, batch: RolloutBatch, completions: list[Completion], scores: dict[str, Scores],
                round_: int) -> RolloutBatch | None:
        G = self.gen_cfg.num_generations
        r = scores["reward"].values.view(-1, G)
        best = r.argmax(1)
        keep = torch.ones(r.shape[0], dtype=torch.bool)
        if self.s.min_reward is not None:
            keep = r.max(1).values >= self.s.min_reward
        self.pending["kept"] = float(keep.float().mean())
        if not bool(keep.any()):
            return None
        rows = (torch.arange(r.shape[0])[keep] * G + best[keep]).tolist()
        self.pending["reward/best"] = float(scores["reward"].values[torch.tensor(rows)].mean())
        return batch.select(rows)

    def units(self, batch: RolloutBatch) -> int:
        return int(batch.loss_mask.sum())

    def loss(self, model: nn.Module, batch: RolloutBatch) -> StepOutput:
        lp, _ = completion_token_logps(self.policy(model), batch.lm)
        nll = -torch.where(batch.loss_mask, lp, torch.zeros_like(lp)).sum()
        return StepOutput(nll, {"nll": nll.detach()})
