"""Reward- and cost-model losses on per-sequence scalar scores. Imports only torch.

All functions take (B,) scores and return `(per_example_loss (B,), metrics)` with detached
metric tensors; the loop takes the mean (or the accumulation-correct sum / count).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bradley_terry(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    margin: Tensor | float | None = None,
    center_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Bradley-Terry pairwise loss for a reward model, optionally with a margin.

    loss = -log sigmoid(r_c - r_r - m) + center_coef * (r_c + r_r)^2

    - InstructGPT (Ouyang et al., arXiv 2203.02155, eq. 1): loss(theta) = -log sigmoid(r(x, y_w)
      - r(x, y_l)) (m = 0).
    - Llama 2 (Touvron et al., arXiv 2307.09288, eq. 2): the margin m(r) is subtracted inside the
      sigmoid, so pairs with a stronger preference must be separated by more.
    - The centering term (Eisenstein et al., arXiv 2312.09244, "reward centering") pulls the sum
      of the two scores to 0; off when center_coef = 0.

    Example: r_c = 1, r_r = 0, m = 0 gives loss = -log sigmoid(1) = log(1 + e^-1) = 0.3132617;
    with m = 1 it is -log sigmoid(0) = log 2 = 0.6931472.

    Args:
        chosen_scores, rejected_scores: (B,) scores of the preferred and the other response.
        margin: None, a float, or (B,) per-pair margins m >= 0.
        center_coef: weight of the (r_c + r_r)^2 term.
    Returns:
        loss (B,); metrics: "accuracy" (B,) 1.0 where r_c > r_r; "margin" (B,) r_c - r_r;
        "chosen_score", "rejected_score" (B,).
    """
    gap = chosen_scores - rejected_scores  # (B,)
    logits = gap if margin is None else gap - margin
    loss = -F.logsigmoid(logits)
    if center_coef:
        loss = loss + center_coef * (chosen_scores + rejected_scores) ** 2
    metrics = {
        "accuracy": (gap > 0).to(gap.dtype).detach(),
        "margin": gap.detach(),
        "chosen_score": chosen_scores.detach(),
        "rejected_score": rejected_scores.detach(),
    }
    return loss, metrics


def safe_rlhf_cost_loss(
    cost_chosen: Tensor,
    cost_rejected: Tensor,
    chosen_safe: Tensor,
    rejected_safe: Tensor,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Safe RLHF cost-model loss (Dai et al., arXiv 2310.12773, Sec. 3.2, eq. 6).

    The paper writes, with y_w the MORE harmful response of the pair and y_l the less harmful,
    and s(y) = +1 when y is unsafe, -1 when safe:

      L_C = -E[log sigmoid(C(y_w) - C(y_l))]
            - E[log sigmoid(s(y_w) * C(y_w)) + log sigmoid(s(y_l) * C(y_l))]

    so a positive cost means unsafe. In our pairwise data the "chosen" response is the
    preferred (safer) one, hence y_w = rejected and y_l = chosen:

      loss = -log sigmoid(c_rejected - c_chosen)
             - log sigmoid(s_rejected * c_rejected) - log sigmoid(s_chosen * c_chosen)

    (the PKU-Alignment safe-rlhf reference code computes the same sequence-wise loss).

    Example: c_chosen = -1 (safe), c_rejected = 1 (unsafe) gives
    -log sigmoid(2) - 2 log sigmoid(1) = 0.1269280 + 2 * 0.3132617 = 0.7534513.

    Args:
        cost_chosen, cost_rejected: (B,) costs of the preferred (safer) and the other response.
        chosen_safe, rejected_safe: (B,) bool, True = the response is safe.
    Returns:
        loss (B,); metrics: "accuracy" (B,) 1.0 where c_rejected > c_chosen; "sign_accuracy" (B,)
        fraction (0, 0.5 or 1) of the pair's two costs whose sign matches its label (c > 0 iff
        unsafe); "chosen_cost", "rejected_cost" (B,).
    """
    s_c = 1.0 - 2.0 * chosen_safe.to(cost_chosen.dtype)  # (B,) +1 unsafe, -1 safe
    s_r = 1.0 - 2.0 * rejected_safe.to(cost_rejected.dtype)
    loss = (
        -F.logsigmoid(cost_rejected - cost_chosen)
        - F.logsigmoid(s_r * cost_rejected)
        - F.logsigmoid(s_c * cost_chosen)
    )
    sign_ok = ((s_c * cost_chosen > 0).to(loss.dtype) + (s_r * cost_rejected > 0).to(loss.dtype)) / 2
    metrics = {
        "accuracy": (cost_rejected > cost_chosen).to(loss.dtype).detach(),
        "sign_accuracy": sign_ok.detach(),
        "chosen_cost": cost_chosen.detach(),
        "rejected_cost": cost_rejected.detach(),
    }
    return loss, metrics


__all__ = ["bradley_terry", "safe_rlhf_cost_loss"]
