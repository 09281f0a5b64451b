"""Statistics over scores, pure torch (no scikit-learn).

`auroc(pos, neg)`: the area under the ROC curve of a score that should be higher for the
positive class, computed as the normalized Mann-Whitney U statistic.
`linear_trend(values)` / `falling_trend(values, min_drop, min_t)`: the least-squares trend of a
metric over a window of steps and its t statistic, shared by the training warnings (DPO's falling
chosen log-prob, the reward-hacking monitor of `rlhflab.eval.hacking`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def midranks(x: Tensor) -> Tensor:
    """(N,) float64 ranks 1..N of `x` in increasing order; tied values share the mean of the
    ranks they occupy (e.g. [5, 7, 7, 9] -> [1, 2.5, 2.5, 4])."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # (U,) last rank of each distinct value
    starts = ends - counts.double() + 1  # (U,) first rank
    return ((starts + ends) / 2)[inverse]


def auroc(pos: Tensor, neg: Tensor) -> float:
    """AUROC of a score meant to be higher on positives than on negatives.

        AUROC = P(s_pos > s_neg) + 1/2 P(s_pos = s_neg)
              = U / (n_pos n_neg),   U = sum_{i in pos} rank_i - n_pos (n_pos + 1) / 2

    where rank_i is the mid-rank of positive i among all n_pos + n_neg scores (ties share the
    mean of their ranks, which counts each tied positive-negative pair as 1/2). This is the
    Mann-Whitney U statistic (Mann & Whitney 1947; Hanley & McNeil 1982, "The meaning and use of
    the area under a ROC curve"). 1.0 = every positive above every negative, 0.0 = every one below,
    0.5 = no separation (e.g. identical scores).

    pos: (n_pos,), neg: (n_neg,), both non-empty and finite. O(n log n).
    """
    p = torch.as_tensor(pos, dtype=torch.float64).detach().cpu().reshape(-1)
    n = torch.as_tensor(neg, dtype=torch.float64).detach().cpu().reshape(-1)
    if p.numel() == 0 or n.numel() == 0:
        raise ValueError(f"auroc needs at least one positive and one negative score, got {p.numel()} and {n.numel()}")
    if not bool(torch.isfinite(p).all() and torch.isfinite(n).all()):
        raise ValueError("auroc needs finite scores")
    ranks = midranks(torch.cat([p, n]))  # (n_pos + n_neg,)
    n_pos, n_neg = p.numel(), n.numel()
    u = float(ranks[:n_pos].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def linear_trend(values: list[float]) -> tuple[float, float]:
    """The least-squares line y = a + b i through (i, values[i]), i = 0..n-1 (n >= 3):
    (change over the window b (n - 1), t statistic of the slope b / se(b)).

        b = sum_i (i - i_bar)(y_i - y_bar) / S_xx,   S_xx = sum_i (i - i_bar)^2
        se(b) = sqrt(sum_i r_i^2 / (n - 2) / S_xx),  r_i = y_i - a - b i

    t is +-inf for a perfect line with b != 0 and 0 for b = 0. Under independent Gaussian noise
    around a flat line, t follows Student's t with n - 2 degrees of freedom (P(t < -3) = 0.0085
    for n = 10).
    """
    n = len(values)
    if n < 3:
        raise ValueError(f"linear_trend needs at least 3 values, got {n}")
    x = torch.arange(n, dtype=torch.float64)
    y = torch.tensor(values, dtype=torch.float64)
    xc = x - x.mean()
    sxx = float((xc**2).sum())
    slope = float((xc * (y - y.mean())).sum()) / sxx
    resid = y - y.mean() - slope * xc
    se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx)
    if se <= 1e-12 * max(1.0, float(y.abs().max())):
        t = 0.0 if slope == 0 else math.copysign(math.inf, slope)
    else:
        t = slope / se
    return slope * (n - 1), t


def falling_trend(values: list[float], min_drop: float, min_t: float = 0.0) -> bool:
    """True when a least-squares line through `values` falls by more than `min_drop` over the
    window, the last value is below the first by more than `min_drop`, and (for `min_t` > 0) the
    slope's t statistic is below -`min_t` (`linear_trend`). Fewer than 3 values: False."""
    if len(values) < 3:
        return False
    change, t = linear_trend(values)
    return change < -min_drop and values[-1] < values[0] - min_drop and -t >= min_t
