"""Supervised fine-tuning loss: token negative log-likelihood. Imports only torch."""

from __future__ import annotations

import torch
from torch import Tensor


def sft_loss(logps: Tensor, loss_mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-example SUMMED negative log-likelihood of the trained tokens.

    loss[b] = -sum_t loss_mask[b, t] * logps[b, t]

    This is a SUM over tokens, not a mean: the training loop divides the sum of `loss` over all
    micro-batches of one optimizer step by the step's total number of loss tokens
    (sum of `metrics["tokens"]`), so every trained token weighs the same and gradient
    accumulation gives exactly the gradient of one big batch (the standard token-mean NLL,
    e.g. Radford et al. 2018; Ouyang et al., arXiv 2203.02155, Sec. 3.5 SFT).

    Example: logps = [[0, -1, -2], [0, -0.5, -9]], loss_mask = [[F, T, T], [F, T, F]] gives
    loss = [3.0, 0.5] and tokens = [2, 1]; the loop's step loss is (3 + 0.5) / 3.

    Args:
        logps: (B, T) log-probabilities of `input_ids[b, t]` (see `rlhflab.ops.token_logps`).
        loss_mask: (B, T) bool or {0, 1}; True where the token is trained. Masked positions
            may hold any finite or non-finite value; they never contribute.
    Returns:
        loss: (B,) summed NLL per example.
        metrics: {"nll_sum": (B,) same as loss, detached; "tokens": (B,) float counts}.
    """
    mask = loss_mask.bool()
    nll = torch.where(mask, -logps, torch.zeros_like(logps))  # (B, T)
    loss = nll.sum(dim=-1)  # (B,)
    tokens = mask.sum(dim=-1).to(logps.dtype)  # (B,)
    return loss, {"nll_sum": loss.detach(), "tokens": tokens.detach()}


__all__ = ["sft_loss"]
