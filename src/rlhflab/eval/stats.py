"""Statistics over scores, pure torch (no scikit-learn).

`auroc(pos, neg)`: the area under the ROC curve of a score that should be higher for the
positive class, computed as the normalized Mann-Whitney U statistic.
"""

from __future__ import annotations

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
