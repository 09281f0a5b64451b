"""Unpaired and single-sample preference losses: KTO, NPO, D2O, DRO. Imports only torch.

Every input log-probability is a sum over completion tokens (`rlhflab.ops.masked_sum` of the
token log-probs with the loss mask), shape (B,) or (B, K) for K samples per prompt. Each loss
returns `(per_example_loss, metrics)`; metrics are detached tensors, (B,) per example. The loop,
not the loss, reduces over examples and owns the accumulation normalizer. The contract, the data
each loss needs and what is not supported are in docs/unpaired_losses.md.

Notation: h = logp - ref_logp is the log-likelihood ratio log(pi_theta(y|x) / pi_ref(y|x)),
sigma is the logistic sigmoid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

KTO_WEIGHT_RATIO_RANGE = (1.0, 4.0 / 3.0)
"""KTO paper (arXiv 2402.01306, hyperparameter advice): lambda_D n_D / (lambda_U n_U) in [1, 4/3]."""


def kto_reference_point(mismatched_logp: Tensor, mismatched_ref_logp: Tensor) -> Tensor:
    """KTO reference point z0: the batch-mismatched KL estimate (arXiv 2402.01306, Sec. 4).

    z0 = max(0, mean_j (logp(y'_j | x_j) - ref_logp(y'_j | x_j)))

    The paper's z0 = KL(pi_theta(y'|x) || pi_ref(y'|x)) is estimated from completions paired
    with prompts they do not answer: the trainer pairs prompt i with completion (i + 1) mod B
    (B = the step's examples), runs the policy and the reference on those pairs without gradient,
    and calls this function once with the log-probs of all mismatched pairs of the optimizer step
    (all micro-batches of the step). The paper and its reference code (HALOs) estimate it
    per (global) micro-batch; rlhflab uses the whole step so that accumulation 1x8 equals 8x1.
    The estimate is biased (a mean of log ratios, clamped at 0) and never back-propagated.

    Example: mismatched log ratios [0.5, -1, 2.5] give z0 = 2/3; [-1, -2] give z0 = 0.

    Args:
        mismatched_logp, mismatched_ref_logp: any equal shapes (typically (B,)), summed
            log-probs of the mismatched completions under the policy and the reference.
    Returns:
        0-dim tensor z0 >= 0, detached.
    """
    ratio = (mismatched_logp - mismatched_ref_logp).detach()
    return ratio.mean().clamp(min=0.0)


def kto_weight_ratio(
    n_desirable: int, n_undesirable: int, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> float:
    """lambda_D n_D / (lambda_U n_U), the KTO class-balance ratio (arXiv 2402.01306).

    The paper recommends weights with this ratio in [1, 4/3] (`KTO_WEIGHT_RATIO_RANGE`); e.g. with
    1:3 desirable:undesirable data and lambda_U = 1, lambda_D in [3, 4]. A trainer warns when the
    ratio is outside the range. Returns inf when there are desirable but no undesirable examples.

    Example: kto_weight_ratio(100, 300, 3.0, 1.0) = 300 / 300 = 1.0 (in range);
    kto_weight_ratio(100, 300) = 1/3 (out of range).
    """
    if n_desirable < 0 or n_undesirable < 0 or n_desirable + n_undesirable == 0:
        raise ValueError(f"need non-negative counts, not both zero; got {n_desirable}, {n_undesirable}")
    if desirable_weight <= 0 or undesirable_weight <= 0:
        raise ValueError(f"KTO weights must be > 0; got {desirable_weight}, {undesirable_weight}")
    denominator = undesirable_weight * n_undesirable
    return math.inf if denominator == 0 else desirable_weight * n_desirable / denominator


def kto(
    logp: Tensor,
    ref_logp: Tensor,
    desirable: Tensor,
    kl_ref_point: Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Kahneman-Tversky Optimization (Ethayarajh et al., "KTO: Model Alignment as Prospect
    Theoretic Optimization", arXiv 2402.01306, Sec. 4, the KTO loss).

    With r = logp - ref_logp and the reference point z0 (see `kto_reference_point`):

        v(x, y) = lambda_D sigma(beta (r - z0))   if y is desirable
                  lambda_U sigma(beta (z0 - r))   if y is undesirable
        L_KTO   = E[lambda_y - v(x, y)]

    The paper writes the loss as lambda_y - v(x, y); we compute the equal form
    lambda_y (1 - sigma(.)) per example. Both have the same value and, lambda_y being a constant,
    the same gradient: d loss / d r = -lambda_D beta sigma(a)(1 - sigma(a)), a = beta (r - z0), for
    a desirable y and +lambda_U beta sigma(b)(1 - sigma(b)), b = beta (z0 - r), for an undesirable
    one. z0 is treated as a constant (detached here even if it carries a graph), as in the paper.

    Example: beta = 1, z0 = 0.5, lambda_D = 2, lambda_U = 1.5: desirable r = 2 gives
    2 (1 - sigma(1.5)) = 2 sigma(-1.5) = 0.3648510; undesirable r = 1 gives
    1.5 (1 - sigma(-0.5)) = 1.5 sigma(0.5) = 0.9336890.

    Args:
        logp, ref_logp: (B,) summed completion log-probs under the policy and the reference.
        desirable: (B,) bool, True for a desirable (thumbs-up) completion.
        kl_ref_point: z0, a float, 0-dim tensor or (B,) tensor (already detached, >= 0).
        beta: the paper's beta (risk aversion / KL strength); TRL and HALOs default 0.1.
        desirable_weight, undesirable_weight: lambda_D, lambda_U (see `kto_weight_ratio`).
    Returns:
        loss (B,); metrics (B,): "log_ratio" r, "reward" beta r, "desirable" 1.0 / 0.0,
        "ref_point" z0, "value" v(x, y).
    """
    r = logp - ref_logp  # (B,)
    z0 = torch.as_tensor(kl_ref_point, dtype=r.dtype, device=r.device).detach().expand_as(r)
    is_d = desirable.to(torch.bool)
    lam = torch.where(is_d, torch.full_like(r, desirable_weight), torch.full_like(r, undesirable_weight))
    utility = torch.sigmoid(beta * torch.where(is_d, r - z0, z0 - r))  # (B,)
    loss = lam * (1.0 - utility)
    metrics = {
        "log_ratio": r.detach(),
        "reward": (beta * r).detach(),
        "desirable": is_d.to(r.dtype),
        "ref_point": z0.clone(),
        "value": (lam * utility).detach(),
    }
    return loss, metrics


def npo(logp: Tensor, ref_logp: Tensor, beta: float = 0.1) -> tuple[Tensor, dict[str, Tensor]]:
    """Negative Preference Optimization (Zhang et al., "Negative Preference Optimization: From
    Catastrophic Collapse to Effective Unlearning", arXiv 2404.05868, Sec. 3, the NPO loss), negatives
    (the forget set) only.

        L_NPO = (2 / beta) log(1 + (pi_theta / pi_ref)^beta) = -(2 / beta) log sigma(-beta h)

    with h = logp - ref_logp: DPO with the positive term dropped, scaled by 2 / beta. The gradient
    is d loss / d logp = 2 sigma(beta h) = 2 pi^beta / (pi^beta + pi_ref^beta), the paper's
    adaptive weight W (reported as "weight"). As beta -> 0, L_NPO - (2 / beta) log 2 -> h, the
    gradient-ascent loss on the log-likelihood (up to the constant log pi_ref), with weight 1; the
    loss is bounded below by 0 for any beta > 0. The authors' code computes the same quantity
    (-logsigmoid(beta (nll - nll_ref)) * 2 / beta). The paper's NPO+RT / NPO+KL variants add a
    retain-set term (NLL or KL on retain data); it is not part of this loss (the npo trainer adds
    NPO+RT's per-token NLL on desirable rows with `npo.retain_weight`).

    Example: beta = 1: h = 1 gives 2 log(1 + e) = 2.6265234; h = -1 gives 2 log(1 + 1/e) =
    0.6265234; h = 0 gives (2 / beta) log 2 for any beta.

    Args:
        logp, ref_logp: (B,) summed log-probs of the negative (forget) completions.
        beta: inverse temperature; 0.1 in the paper's TOFU experiments.
    Returns:
        loss (B,); metrics (B,): "log_ratio" h, "weight" 2 sigma(beta h).
    """
    h = logp - ref_logp  # (B,)
    loss = -(2.0 / beta) * F.logsigmoid(-beta * h)
    metrics = {"log_ratio": h.detach(), "weight": (2.0 * torch.sigmoid(beta * h)).detach()}
    return loss, metrics


def d2o(
    neg_logp: Tensor,
    neg_ref_logp: Tensor,
    sample_logp: Tensor,
    sample_ref_logp: Tensor,
    sample_mask: Tensor | None = None,
    beta: float = 0.1,
    alpha: float = 0.1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Distributional Dispreference Optimization (Duan et al., "Negating Negatives: Alignment with
    Human Negative Samples via Distributional Dispreference Optimization", arXiv 2403.03419,
    Sec. 3.2, eq. 3).

        L_D2O = -E_(x, y_l) log sigma( (beta / K) sum_i log pi_theta(y_i|x) / pi_r-(y_i|x)
                                       - alpha log pi_theta(y_l|x) / pi_r+(y_l|x) ),
        y_1..y_K ~ pi_r(.|x) self-generated, y_l the human-labelled negative.

    The paper allows two references: pi_r- for the samples and pi_r+ for the negative; pass their
    log-probs as `sample_ref_logp` and `neg_ref_logp`. Its experiments (and rlhflab by default) use
    one reference, the initial SFT model, for both. With `sample_mask`, the 1/K average runs over
    the K_b valid samples of row b: (beta / K_b) sum_{i valid}. A row with K_b = 0 keeps only the
    negative term, -log sigma(-alpha h_l) (NPO with beta = alpha, scaled by alpha / 2); the
    "num_samples" metric lets the trainer drop such rows.

    Gradient (the paper's eq. 4): with z the logit above, d loss / d neg_logp = alpha sigma(-z) and
    d loss / d sample_logp_i = -(beta / K_b) sigma(-z); the weight sigma(-z) is shared by the K
    samples. K = 1 with alpha = beta is DPO with the sample as the chosen response.

    Example: beta = 1, alpha = 0.5, sample ratios [1, 3], negative ratio 2: z = 2 - 1 = 1, loss
    -log sigma(1) = 0.3132617; masking the second sample: z = 1 - 1 = 0, loss log 2 = 0.6931472.

    Args:
        neg_logp, neg_ref_logp: (B,) summed log-probs of the human negative y_l.
        sample_logp, sample_ref_logp: (B, K) summed log-probs of the self-generated samples.
        sample_mask: (B, K) bool, True for a real sample (rows may have fewer); None = all real.
            Masked entries may hold any value, inf and nan included.
        beta: weight on the samples' mean log ratio; alpha: weight on the negative's log ratio.
            Both 0.1 in the paper's main experiments (with K = 11).
    Returns:
        loss (B,); metrics (B,): "margin" z, "neg_log_ratio" h_l, "sample_log_ratio" (masked mean
        over samples), "num_samples" K_b, "accuracy" 1.0 where z > 0.
    """
    ratios = sample_logp - sample_ref_logp  # (B, K)
    mask = torch.ones_like(ratios, dtype=torch.bool) if sample_mask is None else sample_mask.to(torch.bool)
    ratios = torch.where(mask, ratios, torch.zeros_like(ratios))  # junk never reaches value or grad
    count = mask.sum(dim=-1).to(ratios.dtype)  # (B,)
    sample_mean = ratios.sum(dim=-1) / count.clamp(min=1.0)
    neg_ratio = neg_logp - neg_ref_logp  # (B,)
    z = beta * sample_mean - alpha * neg_ratio
    loss = -F.logsigmoid(z)
    metrics = {
        "margin": z.detach(),
        "neg_log_ratio": neg_ratio.detach(),
        "sample_log_ratio": sample_mean.detach(),
        "num_samples": count.detach(),
        "accuracy": (z > 0).to(z.dtype).detach(),
    }
    return loss, metrics


def dro(
    logp: Tensor,
    ref_logp: Tensor,
    reward: Tensor,
    value: Tensor,
    tau: float = 1.0,
    rescale_policy_grad: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Direct Reward Optimisation, DRO-V (Richemond et al., "Offline Regularised Reinforcement
    Learning for Large Language Models Alignment", arXiv 2405.19107, the DRO objective and the
    DRO-V algorithm), for single trajectories (x, y, r) with a scalar reward and a value V(x).

    Objective, with h = logp - ref_logp and the residual delta = r - V(x) - tau h:

        L_DRO(pi, V) = 1/2 E[(r(x, y) - V(x) - tau log pi(y|x) / pi_ref(y|x))^2]

    The paper's DRO-V gradient updates:

        grad_phi   = E[(V(x) - r + tau h) grad V(x)]                         (value)
        grad_theta = -tau E[grad log pi (r - V(x)) - (tau / 2) grad h^2]     (policy)

    "rescaled by 1/tau in practice". This function returns loss = policy_loss + value_loss with
    stop-gradients (sg) placed so each part moves only its own parameters:

        policy_loss = (1 / (2 c)) (r - sg(V) - tau h)^2,  c = tau if rescale_policy_grad else 1
        value_loss  = 1/2 (r - V - tau sg(h))^2

    so d loss / d logp = -(tau / c)(r - V - tau h), which is -(r - V) + tau h with the paper's
    1/tau rescaling (default) and -tau (r - V) + tau^2 h without it, and d loss / d value =
    V - r + tau h. The reward gets no gradient. At the optimum V = r - tau h both parts are 0 and
    so are both gradients. The value of L_DRO itself is the "dro_loss" metric (= value_loss).

    Example: tau = 1, r = 1, V = 0.25, h = 0.5: delta = 0.25, value_loss = 0.03125,
    policy_loss = 0.03125, d/d logp = -0.25, d/d value = -0.25.

    Args:
        logp, ref_logp: (B,) summed completion log-probs under the policy and the reference.
        reward: (B,) scalar rewards (e.g. thumbs up 1 / down 0); no gradient is taken.
        value: (B,) V(x) from the value network (one number per prompt).
        tau: KL-regularisation strength; 1.0 was best in the paper's sweep (0.1, 1, 5).
        rescale_policy_grad: apply the paper's 1/tau rescaling of the policy gradient.
    Returns:
        loss (B,); metrics (B,): "policy_loss", "value_loss", "dro_loss" L_DRO per example,
        "residual" delta, "advantage" r - V, "log_ratio" h, "value" V.
    """
    h = logp - ref_logp  # (B,)
    reward = reward.detach()
    scale = tau if rescale_policy_grad else 1.0
    policy_residual = reward - value.detach() - tau * h
    value_residual = reward - value - tau * h.detach()
    policy_loss = policy_residual.pow(2) / (2.0 * scale)
    value_loss = 0.5 * value_residual.pow(2)
    metrics = {
        "policy_loss": policy_loss.detach(),
        "value_loss": value_loss.detach(),
        "dro_loss": value_loss.detach(),
        "residual": value_residual.detach(),
        "advantage": (reward - value).detach(),
        "log_ratio": h.detach(),
        "value": value.detach(),
    }
    return policy_loss + value_loss, metrics


__all__ = ["KTO_WEIGHT_RATIO_RANGE", "d2o", "dro", "kto", "kto_reference_point", "kto_weight_ratio", "npo"]
