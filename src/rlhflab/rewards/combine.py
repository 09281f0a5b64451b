"""The weighted sum of several scorers, each optionally normalized first.

    values = sum_i weight_i * norm_i(scores_i)

norm is one of
- none:  x;
- batch: (x - mean(x)) / (std(x) + 1e-6) over the batch (population std; a constant batch gives 0);
- group: the same within each set of samples with equal `Sample.group` (one prompt's samples).

`parts` holds each member's RAW scores under its name and each member's own parts under
"name/part", so the logs show what every scorer said before weighting and normalization.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from rlhflab.errors import ConfigError
from rlhflab.rewards.base import Sample, Scorer, Scores

Normalize = Literal["none", "batch", "group"]
EPS = 1e-6


def zscore(x: Tensor) -> Tensor:
    """(x - mean) / (population std + EPS); (N,) -> (N,)."""
    return (x - x.mean()) / (x.std(unbiased=False) + EPS)


def normalize(x: Tensor, mode: Normalize, groups: Tensor) -> Tensor:
    """`x` (N,) normalized by `mode`; `groups` (N,) long gives each sample's group."""
    if mode == "none":
        return x
    if mode == "batch":
        return zscore(x)
    if mode == "group":
        out = torch.empty_like(x)
        for g in groups.unique():
            sel = groups == g
            out[sel] = zscore(x[sel])
        return out
    raise ConfigError(f"normalize must be none, batch or group, got {mode!r}")


class WeightedSum(Scorer):
    """sum_i weight_i * normalize_i(member_i): members are (name, scorer, weight, normalize)."""

    name = "weighted_sum"

    def __init__(self, members: list[tuple[str, Scorer, float, Normalize]]):
        if not members:
            raise ConfigError("a weighted sum needs at least one scorer")
        names = [m[0] for m in members]
        if len(set(names)) != len(names):
            raise ConfigError(f"scorer names must be unique, got {names}")
        for name, _, _, mode in members:
            if mode not in ("none", "batch", "group"):
                raise ConfigError(f"scorer '{name}': normalize must be none, batch or group, got {mode!r}")
        self.members = list(members)

    def score(self, samples: list[Sample]) -> Scores:
        parts: dict[str, Tensor] = {}
        for name, scorer, _, _ in self.members:
            got = scorer.score(samples)
            if got.values.shape != (len(samples),):
                raise ValueError(f"scorer '{name}' returned {tuple(got.values.shape)} scores for {len(samples)} samples")
            parts[name] = got.values
            parts.update({f"{name}/{k}": v for k, v in got.parts.items()})
        return Scores(self._weighted(parts, torch.tensor([s.group for s in samples], dtype=torch.long)), parts)

    def _weighted(self, parts: dict[str, Tensor], groups: Tensor) -> Tensor:
        """sum_i weight_i * normalize_i(raw scores of member i), over the samples' `groups` (N,)."""
        values = torch.zeros(len(groups), dtype=torch.float32)
        for name, _, weight, mode in self.members:
            values = values + weight * normalize(parts[name], mode, groups)
        return values

    def recombine(self, scores: Scores, groups: Tensor) -> Scores:
        """`scores` gathered from several ranks' slices, `groups` (N,) each sample's group: the values
        again from the raw member scores in `parts`, so a batch-normalized member is normalized over
        the whole round (group normalization never spans ranks: a prompt's samples are scored on one
        rank)."""
        if not any(mode == "batch" for _, _, _, mode in self.members):
            return scores
        return Scores(self._weighted(scores.parts, groups), scores.parts)

    def close(self) -> None:
        for _, scorer, _, _ in self.members:
            scorer.close()
