"""Clipped policy-gradient surrogate (PPO family) and its reductions. Imports only torch.

Two concerns, kept apart (docs/policy_losses.md):
- `policy_loss`: the per-token surrogate (N, T) and its metrics: PPO clip, DAPO clip-higher,
  dual clip, GSPO's sequence-level ratio.
- `aggregate`: how one micro-batch's per-token losses become (loss_sum, units), in one of the
  named `AGGREGATIONS`; the training loop divides the step's total loss_sum by its total units.
The KL penalty (`ops.kl_estimate`) and the entropy bonus (`ops.entropy_from_logits`) are
per-token terms the caller adds to the per-token loss before `aggregate`.
- `truncated_is_weights` / `engine_mismatch`: the rollout engine vs trainer correction (TIS) that
  multiplies the surrogate per token, and its diagnostics (docs/vllm.md).

Notation: logp, old_logp (N, T) log-probs of the sampled tokens under the current and the
sampling policy; A = advantages; r = exp(logp - old_logp); eps_l = clip_low, eps_h = clip_high;
sg = stop-gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhflab.ops import kl_estimate, masked_mean, masked_sum

Metrics = dict[str, Tensor]

AGGREGATIONS = ("token-mean", "sequence-mean-token-mean", "sequence-mean-token-sum", "sequence-mean-token-sum-norm")
RATIO_LEVELS = ("token", "sequence")
MAX_LOG_RATIO = 20.0
"""Token log-ratios are clamped to [-20, 20] before exp (as verl does): r stays finite in float32."""


def _check(clip_low: float, clip_high: float | None, dual_clip: float | None, ratio_level: str) -> None:
    if not clip_low > 0 or (clip_high is not None and not clip_high > 0):
        raise ValueError(f"policy_loss: clip_low and clip_high must be > 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"policy_loss: dual_clip must be > 1 (the paper uses 3), got {dual_clip}")
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"policy_loss: unknown ratio_level={ratio_level!r}; choose from {list(RATIO_LEVELS)}")


def _masked_extreme(x: Tensor, m: Tensor, largest: bool) -> Tensor:
    """max (min) of x over the mask; 0 when the mask is empty."""
    fill = torch.tensor(float("-inf") if largest else float("inf"), dtype=x.dtype, device=x.device)
    v = torch.where(m, x, fill)
    v = v.max() if largest else v.min()
    return torch.where(m.any(), v, torch.zeros_like(v))


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip_low: float = 0.2,
                clip_high: float | None = None, dual_clip: float | None = None,
                ratio_level: str = "token") -> tuple[Tensor, Metrics]:
    """Per-token clipped surrogate loss (minus the PPO objective), all tensors (N, T):

        loss_t = -min(r_t A_t, clip(r_t, 1 - eps_l, 1 + eps_h) A_t)

    - PPO (Schulman et al., arXiv 1707.06347, eq. 7): r_t = exp(logp_t - old_logp_t);
      clip_high=None means eps_h = eps_l.
    - Clip-higher (DAPO, Yu et al., arXiv 2503.14476): eps_h > eps_l (e.g. 0.2 / 0.28).
    - Dual clip (Ye et al., arXiv 1912.09729), c = dual_clip > 1: for A_t < 0 the
      objective is max(min(r_t A_t, clip(r_t) A_t), c A_t), i.e. loss_t <= -c A_t; unchanged
      for A_t >= 0.
    - ratio_level="sequence" (GSPO, Zheng et al., arXiv 2507.18071, the GSPO objective and its
      GSPO-token form): s_i = exp(1/|y_i| sum_t (logp_t - old_logp_t)) over row i's mask tokens and
      s_{i,t} = sg[s_i] exp(logp_t - sg[logp_t]) replaces r_t: its value is s_i and token t gets
      the gradient of its own log-prob scaled by s_i. With "sequence-mean-token-mean"
      aggregation and A_{i,t} = A_i this is GSPO; with one token per row it is token-level PPO.

    Token log-ratios are clamped to [-MAX_LOG_RATIO, MAX_LOG_RATIO] before exp (no effect below
    e^20). Entries outside `mask` (even inf / nan) change neither the loss nor any gradient.
    Gradients flow through `logp` only (old_logp and advantages are detached).

    Returns:
        loss (N, T), 0 outside the mask; metrics, detached scalars, means over the mask tokens:
        - clip_fraction: fraction of tokens where the clipped term is strictly smaller than the
          unclipped one, so the min takes it and the token's gradient is 0 because of clipping:
          (A > 0 and r > 1 + eps_h) or (A < 0 and r < 1 - eps_l). Ties count as not clipped.
        - dual_clip_fraction (only when dual_clip is set): fraction of tokens with A < 0 whose
          objective is replaced by c A (gradient 0 because of the dual clip).
        - ratio_mean, ratio_max, ratio_min: of the ratio the loss uses (r_t, or s_i per token).
        - approx_kl: mean over tokens of k3(old || new) = (r_t - 1) - log r_t with the token
          ratio r_t at either ratio level (Schulman's estimator, ops.kl_estimate).
    """
    _check(clip_low, clip_high, dual_clip, ratio_level)
    eps_h = clip_low if clip_high is None else clip_high
    m = mask.bool()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    logp = torch.where(m, logp, zero)
    log_ratio = torch.where(m, logp - old_logp.detach(), zero).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    adv = torch.where(m, advantages.detach().to(logp.dtype), zero)
    if ratio_level == "token":
        ratio = torch.exp(log_ratio)
    else:
        seq_log_ratio = masked_mean(log_ratio.detach(), m, dim=1)  # (N,)
        ratio = torch.exp(seq_log_ratio[:, None] + logp - logp.detach())
    unclipped = ratio * adv
    clipped_obj = ratio.clamp(1.0 - clip_low, 1.0 + eps_h) * adv
    is_clipped = clipped_obj < unclipped
    obj = torch.where(is_clipped, clipped_obj, unclipped)
    metrics: Metrics = {}
    if dual_clip is not None:
        floor = dual_clip * adv
        is_dual = (adv < 0) & (obj < floor)
        obj = torch.where(is_dual, floor, obj)
        metrics["dual_clip_fraction"] = masked_mean(is_dual.to(logp.dtype), m)
    loss = torch.where(m, -obj, zero)
    r = ratio.detach()
    metrics.update(
        clip_fraction=masked_mean(is_clipped.to(logp.dtype), m),
        ratio_mean=masked_mean(r, m),
        ratio_max=_masked_extreme(r, m, largest=True),
        ratio_min=_masked_extreme(r, m, largest=False),
        approx_kl=masked_mean(kl_estimate(torch.zeros_like(log_ratio), log_ratio.detach(), "k3"), m),
    )
    return loss, {k: v.detach() for k, v in metrics.items()}


def engine_mismatch(old_logp: Tensor, engine_logp: Tensor, mask: Tensor) -> Metrics:
    """How far the rollout engine's log-probs are from the trainer's on the same tokens, (N, T)
    inputs, detached scalars over the mask tokens (0 when the mask is empty):

    - logprob_abs_diff_mean: mean_t |old_logp_t - engine_logp_t|
    - logprob_abs_diff_max: max_t |old_logp_t - engine_logp_t|
    """
    m = mask.bool()
    zero = torch.zeros((), dtype=old_logp.dtype, device=old_logp.device)
    diff = torch.where(m, (old_logp.detach() - engine_logp.detach().to(old_logp.dtype)).abs(), zero)
    return {"logprob_abs_diff_mean": masked_mean(diff, m), "logprob_abs_diff_max": _masked_extreme(diff, m, largest=True)}


def truncated_is_weights(old_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float) -> tuple[Tensor, Metrics]:
    """Truncated importance-sampling (TIS) weights for the engine/trainer mismatch, (N, T):

        w_t = min(exp(old_logp_t - engine_logp_t), C),   C = cap

    The completions were sampled by the rollout engine (vLLM, ...), whose distribution pi_engine
    differs numerically from the trainer's pi_old even with the same weights (kernels, precision).
    PPO's ratio pi_theta / pi_old is taken against the trainer's old_logp; the extra factor
    pi_old / pi_engine corrects the sampling distribution, and truncating it at C bounds its
    variance (at the price of some bias). The caller multiplies the per-token policy loss by the
    weight, which is data (no gradient flows through it):

        loss_t <- sg[w_t] * loss_t

    where loss_t is the clipped surrogate of `policy_loss` (after dual clip), before aggregation;
    the KL and entropy terms are not weighted. This is where verl (`tis_imp_ratio_cap`,
    compute_policy_loss: pg_losses * tis_imp_ratio) and OpenRLHF (`enable_vllm_is_correction`,
    `vllm_is_truncated_threshold`) apply it. Source: Yao, Liu, Zhang, Chen, Gao, Jiao, Shang, Xu,
    "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training", blog post, Aug 2025,
    https://fengyao.notion.site/off-policy-rl (token-level TIS).

    Limits: cap = inf is plain token-level importance sampling; identical log-probs give w = 1
    (the loss is unchanged). Log-ratios are clamped to [-MAX_LOG_RATIO, MAX_LOG_RATIO] before exp.
    Outside `mask` the weight is 0 and entries there (even inf / nan) are ignored.

    Returns:
        weights (N, T), detached; metrics (detached scalars, over the mask tokens):
        is_weight_mean (mean w_t), is_truncated_fraction (fraction of tokens whose ratio is above
        the cap), and the two `engine_mismatch` metrics.
    """
    if not cap > 0:
        raise ValueError(f"truncated_is_weights: cap must be > 0 (typical 2.0), got {cap}")
    m = mask.bool()
    zero = torch.zeros((), dtype=old_logp.dtype, device=old_logp.device)
    log_ratio = torch.where(m, old_logp.detach() - engine_logp.detach().to(old_logp.dtype), zero)
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    weights = torch.where(m, ratio.clamp(max=cap), zero)
    metrics = engine_mismatch(old_logp, engine_logp, mask)
    metrics.update(is_weight_mean=masked_mean(weights, m),
                   is_truncated_fraction=masked_mean((ratio > cap).to(old_logp.dtype), m))
    return weights, metrics


def aggregate(per_token: Tensor, mask: Tensor, mode: str, norm_length: int | None = None) -> tuple[Tensor, Tensor]:
    """(loss_sum, units) of one micro-batch, so that sum over micro-batches of loss_sum divided by
    the sum of units is exactly the mode's value on the whole batch. With L_{i,t} = per_token,
    |o_i| = row i's mask tokens, n = rows of the micro-batch:

    - "token-mean" (DAPO, arXiv 2503.14476, token-level policy gradient loss): sum_i sum_t L_{i,t} / sum_i |o_i|;
      units = mask tokens.
    - "sequence-mean-token-mean" (GRPO, arXiv 2402.03300, eq. 3; GSPO): sum_i (1/|o_i|) sum_t L_{i,t};
      units = rows with >= 1 token (an empty row has no mean and is left out).
    - "sequence-mean-token-sum" (Dr. GRPO's objective as written, arXiv 2503.20783): sum_i sum_t L_{i,t};
      units = n (every row).
    - "sequence-mean-token-sum-norm" (Dr. GRPO's code; TRL loss_type="dr_grpo"):
      sum_i sum_t L_{i,t} / norm_length, norm_length a constant (the maximum completion length);
      units = n.

    Entries outside `mask` (even inf / nan) never contribute. Both outputs are 0-d tensors (no
    host sync); units has per_token's dtype.
    """
    m = mask.bool()
    if mode == "token-mean":
        return masked_sum(per_token, m), m.sum().to(per_token.dtype)
    n_rows = torch.tensor(float(m.shape[0]), dtype=per_token.dtype, device=per_token.device)
    row_sum = masked_sum(per_token, m, dim=1)  # (N,)
    if mode == "sequence-mean-token-mean":
        count = m.sum(dim=1)
        return (row_sum / count.clamp(min=1)).sum(), (count > 0).sum().to(per_token.dtype)
    if mode == "sequence-mean-token-sum":
        return row_sum.sum(), n_rows
    if mode == "sequence-mean-token-sum-norm":
        if norm_length is None or not norm_length > 0:
            raise ValueError("aggregate: mode 'sequence-mean-token-sum-norm' needs norm_length > 0 "
                             f"(the maximum completion length), got {norm_length}")
        return row_sum.sum() / norm_length, n_rows
    raise ValueError(f"aggregate: unknown mode {mode!r}; choose from {list(AGGREGATIONS)}")


__all__ = ["AGGREGATIONS", "RATIO_LEVELS", "policy_loss", "aggregate", "engine_mismatch", "truncated_is_weights"]
