"""Reward and cost models: a scalar head on a causal LM trained on preference pairs.

- bradley_terry: -log sigmoid(r_c - r_r)                       (InstructGPT, 2203.02155 eq. 1)
- margin:        -log sigmoid(r_c - r_r - m)                   (Llama 2, 2307.09288 eq. 2)
- cost:          Safe RLHF cost-model loss                     (2310.12773 Sec. 3.2 eq. 6)
Held-out metrics: pairwise accuracy, expected calibration error of sigmoid(score gap), score stats.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhflab.algorithms.base import Algorithm, StepOutput
from rlhflab.errors import DataError
from rlhflab.losses.reward import bradley_terry, safe_rlhf_cost_loss
from rlhflab.types import PairBatch


def expected_calibration_error(gaps: torch.Tensor, bins: int) -> float:
    """ECE of p = sigmoid(gap) as a prediction that the first response is preferred (it always is).

    Each pair is a binary prediction with confidence max(p, 1-p), correct when p > 0.5;
    ECE = sum_bins (n_bin / N) * |accuracy_bin - mean confidence_bin| over equal-width bins on [0.5, 1].
    """
    p = torch.sigmoid(gaps.double())
    conf = torch.maximum(p, 1 - p)
    correct = (p > 0.5).double()
    edges = torch.linspace(0.5, 1.0, bins + 1, dtype=torch.float64)
    ece = 0.0
    for i in range(bins):
        upper_ok = conf <= edges[i + 1] if i == bins - 1 else conf < edges[i + 1]
        sel = (conf >= edges[i]) & upper_ok
        if sel.any():
            ece += float(sel.double().mean() * (correct[sel].mean() - conf[sel].mean()).abs())
    return ece


class RewardModel(Algorithm):
    name = "reward_model"
    data_kind = "pairwise"
    unit = "pairs"
    item_name = "pairs"
    metric_docs = {
        "accuracy": "fraction of pairs with r_chosen > r_rejected (cost models: c_rejected > c_chosen)",
        "score_gap": "mean of r_chosen - r_rejected (cost models: c_rejected - c_chosen)",
        "chosen_score": "mean score of the chosen responses",
        "rejected_score": "mean score of the rejected responses",
        "sign_accuracy": "cost models: fraction of responses whose cost sign matches the label (>0 unsafe)",
        "eval/ece": "expected calibration error of sigmoid(score gap), see expected_calibration_error",
        "eval/score_std": "standard deviation of all eval scores (chosen and rejected together)",
    }

    def check_data(self, loaded: Any) -> None:
        rm = self.cfg.reward_model
        if rm.loss == "cost" and loaded.format != "safety":
            raise DataError(loaded.path, None, "chosen_safe",
                            f"reward_model.loss: cost needs safety labels, but the data format is '{loaded.format}'",
                            "add boolean columns chosen_safe and rejected_safe (True = safe) to every row")

    def load_model(self, path: str, device: torch.device) -> torch.nn.Module:
        from rlhflab.models import load_scalar_model

        return load_scalar_model(path, device=device, trust_remote_code=self.cfg.trust_remote_code, lora=self.cfg.lora)

    def collate(self, items: list[Any]) -> PairBatch:
        from rlhflab.data import collate_pairs

        return collate_pairs(items, self.pad_id)

    def units(self, batch: PairBatch) -> int:
        return len(batch)

    def _scores(self, model: torch.nn.Module, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        from rlhflab.models import scalar_scores

        ids = torch.cat([batch.chosen.input_ids, batch.rejected.input_ids])  # (2B, T)
        mask = torch.cat([batch.chosen.attention_mask, batch.rejected.attention_mask])
        scores = scalar_scores(model, ids, mask).float()  # (2B,)
        return scores[: len(batch)], scores[len(batch):]

    def _loss(self, chosen: torch.Tensor, rejected: torch.Tensor, batch: PairBatch) -> tuple[torch.Tensor, dict]:
        """Per-pair loss (B,) and per-pair metrics (B,) under the logged names (see metric_docs)."""
        rm = self.cfg.reward_model
        if rm.loss == "cost":
            loss, m = safe_rlhf_cost_loss(chosen, rejected, batch.chosen_safe, batch.rejected_safe)
            return loss, {"accuracy": m["accuracy"], "score_gap": m["rejected_cost"] - m["chosen_cost"],
                          "chosen_score": m["chosen_cost"], "rejected_score": m["rejected_cost"],
                          "sign_accuracy": m["sign_accuracy"]}
        margin = None
        if rm.loss == "margin":
            margin = batch.margin if batch.margin is not None else torch.full_like(chosen, rm.margin)
        loss, m = bradley_terry(chosen, rejected, margin=margin, center_coef=rm.center_rewards_coef)
        return loss, {"accuracy": m["accuracy"], "score_gap": m["margin"], "chosen_score": m["chosen_score"],
                      "rejected_score": m["rejected_score"]}

    def loss(self, model: torch.nn.Module, batch: PairBatch) -> StepOutput:
        chosen, rejected = self._scores(model, batch)
        per_pair, metrics = self._loss(chosen, rejected, batch)
        return StepOutput(per_pair.sum(), {k: v.sum() for k, v in metrics.items()})

    def evaluate(self, model: torch.nn.Module, items: list[Any], micro_batch_size: int) -> dict[str, float]:
        device = next(model.parameters()).device
        sums: dict[str, float] = {}
        losses, gaps, scores = 0.0, [], []
        for k in range(0, len(items), micro_batch_size):
            batch = self.collate(items[k:k + micro_batch_size]).to(device)
            chosen, rejected = self._scores(model, batch)
            per_pair, metrics = self._loss(chosen, rejected, batch)
            losses += float(per_pair.sum())
            for name, v in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(v.sum())
            gaps.append(metrics["score_gap"].cpu())
            scores += [chosen.cpu(), rejected.cpu()]
        n = len(items)
        result = {name: v / n for name, v in sums.items()}
        result["loss"] = losses / n
        result["ece"] = expected_calibration_error(torch.cat(gaps), self.cfg.reward_model.calibration_bins)
        result["score_std"] = float(torch.cat(scores).std()) if n > 1 else 0.0
        return result

    def save_final(self, model: torch.nn.Module, tokenizer: Any, out_dir: str) -> None:
        from rlhflab.models import save_pretrained_hf

        save_pretrained_hf(model, tokenizer, out_dir)
