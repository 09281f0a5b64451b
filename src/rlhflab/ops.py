"""Tensor operations shared by losses, advantages and algorithms. Imports only torch.

Shapes: B = batch (sequences), T = time (tokens), V = vocabulary. A `mask` is a bool or {0, 1}
tensor broadcastable to the data; masked-out entries never contribute to any result here.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLKind = Literal["k1", "k2", "k3"]

# Rows of (T, V) float32 log-softmax materialized at once in token_logps (~256 MiB per chunk).
_LOGP_CHUNK_ELEMENTS = 64 * 1024 * 1024


def token_logps(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Log-probability of each token under the model's prediction from the previous position.

    out[b, t] = log softmax(logits[b, t-1])[input_ids[b, t]] for t >= 1, and out[b, 0] = 0
    (nothing predicts the first token). Computed in float32; the (B, T, V) log-softmax is built a
    few rows at a time so peak extra memory stays near one chunk.

    Args:
        logits: (B, T, V) any float dtype.
        input_ids: (B, T) long.
    Returns:
        (B, T) float32. Padded positions hold finite values; mask them with the loss mask.
    """
    B, T, V = logits.shape
    out = logits.new_zeros((B, T), dtype=torch.float32)
    if T < 2:
        return out
    rows = max(1, _LOGP_CHUNK_ELEMENTS // max(1, (T - 1) * V))
    targets = input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
    for s in range(0, B, rows):
        lg = logits[s : s + rows, :-1].float()  # (b, T-1, V)
        picked = torch.gather(lg, -1, targets[s : s + rows]).squeeze(-1)  # (b, T-1)
        out[s : s + rows, 1:] = picked - torch.logsumexp(lg, dim=-1)
    return out


def rows_per_chunk(vocab_size: int, bytes_per_element: int = 4) -> int:
    """Rows per chunk of (rows, V) work: _LOGP_CHUNK_ELEMENTS // (bytes_per_element * V), at least 1."""
    return max(1, _LOGP_CHUNK_ELEMENTS // (bytes_per_element * max(1, vocab_size)))


def logps_of_targets(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits[n])[targets[n]] for flattened rows: logits (N, V), targets (N,) -> (N,) float32.

    Low-precision logits are upcast a chunk of rows at a time, so the extra memory stays near one
    chunk; float32 logits are used in place.
    """
    N, V = logits.shape
    if logits.dtype == torch.float32 or N == 0:
        return logits.gather(-1, targets[:, None]).squeeze(-1).float() - torch.logsumexp(logits.float(), dim=-1)
    rows = max(1, _LOGP_CHUNK_ELEMENTS // max(1, V))
    out = []
    for s in range(0, N, rows):
        lg = logits[s : s + rows].float()
        out.append(lg.gather(-1, targets[s : s + rows, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1))
    return torch.cat(out)


class _RefPolicyKL(torch.autograd.Function):
    """Per-row KL(q || p) with p = softmax(logits) (gradient) and q = softmax(ref_head(ref_hidden))
    (constant), computed and differentiated a chunk of rows at a time: the reference's (N, V)
    logits are never held at once; backward recomputes them. d KL / d logits = p - q."""

    @staticmethod
    def forward(ctx, logits: Tensor, ref_hidden: Tensor, ref_head: torch.nn.Module, rows: int) -> Tensor:
        acc = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 for float64 input
        out = torch.empty(logits.shape[0], dtype=acc, device=logits.device)
        with torch.no_grad():
            for s in range(0, logits.shape[0], rows):
                lq = torch.log_softmax(ref_head(ref_hidden[s : s + rows]).to(acc), dim=-1)
                lp = torch.log_softmax(logits[s : s + rows].to(acc), dim=-1)
                out[s : s + rows] = (lq.exp() * (lq - lp)).sum(-1)
        ctx.save_for_backward(logits, ref_hidden)
        ctx.ref_head, ctx.rows = ref_head, rows
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, ref_hidden = ctx.saved_tensors
        grad = torch.empty_like(logits)
        rows = ctx.rows
        with torch.no_grad():
            for s in range(0, logits.shape[0], rows):
                acc = torch.promote_types(logits.dtype, torch.float32)
                q = torch.softmax(ctx.ref_head(ref_hidden[s : s + rows]).to(acc), dim=-1)
                p = torch.softmax(logits[s : s + rows].to(acc), dim=-1)
                grad[s : s + rows] = (grad_out[s : s + rows, None] * (p - q)).to(grad.dtype)
        return grad, None, None, None


def ref_policy_kl(logits: Tensor, ref_hidden: Tensor, ref_head: torch.nn.Module, chunk_rows: int | None = None) -> Tensor:
    """Per-token KL(reference || policy) (N,) in float32 (float64 for float64 logits),
    differentiable in the policy `logits` (N, V).

    KL[n] = sum_v q_v (log q_v - log p_v) with p = softmax(logits[n]) and
    q = softmax(ref_head(ref_hidden[n])). The reference distribution is rebuilt from its hidden
    states (N, H) a chunk at a time in forward and backward, so no second (N, V) tensor lives
    beside the policy's logits (TDPO's sequential KL, arXiv 2404.11999).
    """
    rows = chunk_rows or rows_per_chunk(logits.shape[-1])
    return _RefPolicyKL.apply(logits, ref_hidden.detach(), ref_head, rows)


def policy_ref_kl(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """Per-row KL(policy || reference) = sum_v p_v (log p_v - log q_v) for (N, V) logits -> (N,) float32."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    lq = torch.log_softmax(ref_logits.float(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def _as_weight(mask: Tensor, x: Tensor) -> Tensor:
    return mask.to(x.dtype).expand_as(x) if mask.shape != x.shape else mask.to(x.dtype)


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """sum(x * mask) over `dim` (all dims when None). Masked entries may be inf/nan: they are
    replaced by 0 before summing, so they never leak into the result or its gradient."""
    m = _as_weight(mask, x)
    x = torch.where(m > 0, x, torch.zeros_like(x))
    return (x * m).sum() if dim is None else (x * m).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """sum(x * mask) / sum(mask) over `dim`. An all-masked slice gives 0 (not nan)."""
    m = _as_weight(mask, x)
    total = m.sum() if dim is None else m.sum(dim=dim)
    return masked_sum(x, m, dim) / total.clamp(min=1e-8) * (total > 0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries of x (all dims): sum(mask * (x - mean)^2) / (n - 1) when
    `unbiased` (n = sum(mask) >= 2), else / n."""
    m = _as_weight(mask, x)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum()
        var = var * n / (n - 1).clamp(min=1.0)
    return var


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) with mean and (unbiased) variance over the masked entries.

    With shift_mean=False the mean is added back: x' = (x - mean) * rsqrt(var + eps) + mean (the
    scale is normalized, the location kept; used for rewards). Masked-out entries are returned
    as 0.
    """
    m = _as_weight(mask, x)
    mean, var = masked_mean(x, m), masked_var(x, m)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m > 0, out, torch.zeros_like(out))


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim: H = logsumexp(z) - sum(softmax(z) * z).

    (..., V) -> (...), computed in float32.
    """
    z = logits.float()
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k3") -> Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi (J. Schulman, "Approximating
    KL divergence", 2020). With r = logp - ref_logp = log pi(y) - log pi_ref(y):

    - k1 = r                        (unbiased, high variance, can be negative)
    - k2 = r^2 / 2                  (biased, low variance, >= 0)
    - k3 = exp(-r) - 1 + r          (unbiased, low variance, >= 0)

    Shapes: any, same for both inputs; the result has that shape.
    """
    r = logp - ref_logp
    if kind == "k1":
        return r
    if kind == "k2":
        return 0.5 * r * r
    if kind == "k3":
        return torch.expm1(-r) + r
    raise ValueError(f"unknown KL estimator {kind!r}; use 'k1', 'k2' or 'k3'")


__all__ = [
    "token_logps",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "whiten",
    "entropy_from_logits",
    "kl_estimate",
]
