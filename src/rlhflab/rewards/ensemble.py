"""Reward-model ensembles: the mean score, the members' spread, an uncertainty-penalized reward and
an out-of-distribution flag.

M scalar-head models (trained with different seeds or data subsets, `rlhflab ensemble train`)
score the same N samples; with s_{m,n} the score of member m on sample n:

    c_{m,n} = s_{m,n} - b_m                                      (b_m: member m's offset, 0 if none)
    mean_n = (1/M) sum_m c_{m,n}
    std_n  = sqrt( (1/(M-1)) sum_m (c_{m,n} - mean_n)^2 )      (unbiased sample std, M >= 2)
    reward_n = mean_n - k * std_n                                (k = uncertainty_coef)
    ood_n  = 1 if std_n > threshold else 0

Why offsets: a Bradley-Terry reward model is defined only up to an additive constant (the loss
sees score differences), so two members that rank every response alike can still differ by a
constant, and that constant would count as disagreement on every input. Calibration
(`calibrate`) sets b_m = member m's mean score over held-out in-distribution responses, so the
members agree on average there and the spread measures disagreement about differences only.

Members agree where their training data pinned the score down and disagree off-distribution, so
the spread is an uncertainty signal (Lakshminarayanan et al. 2017, "Deep Ensembles",
arXiv 1612.01474), and mean - k std is the uncertainty-weighted objective of Coste et al. 2023,
"Reward Model Ensembles Help Mitigate Overoptimization" (arXiv 2310.02743, which penalizes the
variance; here the std, so k is in reward units). Eisenstein et al. 2023 (arXiv 2312.09244) show
the limit: members that share a pretrained model share its errors, so an ensemble mitigates but
does not remove reward hacking. The threshold is a quantile of the spreads on held-out
in-distribution responses (`calibrate_threshold`), so about 1 - quantile of in-distribution
responses are flagged by construction.

The math (`ensemble_stats`, `penalized_reward`, `calibrate`, `calibrate_threshold`,
`spread_summary`) uses only torch; `EnsembleScorer` loads the members (one `RewardModelScorer`
each, so members may use different tokenizers and, unless one is given, chat templates).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhflab.atomic import write_text_atomic
from rlhflab.errors import ConfigError
from rlhflab.rewards.base import Sample, Scorer, Scores

ENSEMBLE_FORMAT = "rlhflab-ensemble/1"
"""The `format` field of an ensemble JSON."""

# --------------------------------------------------------------------------- the math


def ensemble_stats(scores: Tensor, offsets: Tensor | list[float] | None = None) -> tuple[Tensor, Tensor]:
    """Mean and spread over the members of an ensemble's score matrix.

    scores: (M, N), row m = member m's scores of the N samples, M >= 2 (one member has no
    spread); offsets: (M,) subtracted from each member's row first (None = no shift). Returns
    (mean, std), each (N,) in the input's float dtype (float32 at least), with std the unbiased
    sample standard deviation sqrt(sum_m (c_m - mean)^2 / (M - 1)).
    """
    s = torch.as_tensor(scores)
    if s.dim() != 2:
        raise ValueError(f"scores must be (M members, N samples), got shape {tuple(s.shape)}")
    if s.shape[0] < 2:
        raise ValueError(f"an ensemble needs at least 2 members to have a spread, got {s.shape[0]}")
    s = s.to(torch.promote_types(s.dtype, torch.float32))
    if offsets is not None:
        b = torch.as_tensor(offsets, dtype=s.dtype, device=s.device).reshape(-1)
        if b.numel() != s.shape[0]:
            raise ValueError(f"{b.numel()} offsets for {s.shape[0]} members")
        s = s - b[:, None]  # (M, N)
    return s.mean(dim=0), s.std(dim=0, correction=1)


def penalized_reward(mean: Tensor, std: Tensor, uncertainty_coef: float) -> Tensor:
    """mean - k * std (k = uncertainty_coef >= 0; k = 0 gives the plain mean)."""
    if not uncertainty_coef >= 0:
        raise ValueError(f"uncertainty_coef must be >= 0, got {uncertainty_coef}")
    return mean - uncertainty_coef * std


def calibrate_threshold(spreads: Tensor, quantile: float = 0.95) -> float:
    """The OOD threshold: the `quantile` of held-out in-distribution spreads.

    The quantile interpolates linearly between order statistics (torch.quantile's default, numpy's
    "linear", Hyndman & Fan type 7): with sorted values x_(0) <= ... <= x_(n-1), position
    h = quantile * (n - 1) gives x_(floor h) + (h - floor h) (x_(floor h + 1) - x_(floor h)).
    A spread strictly above the threshold is flagged, so at most about 1 - quantile of the
    held-out responses are.
    """
    s = torch.as_tensor(spreads, dtype=torch.float64).reshape(-1)
    if s.numel() == 0:
        raise ValueError("calibration needs at least one held-out spread")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("held-out spreads must be finite")
    return float(torch.quantile(s, quantile))


def spread_summary(spreads: Tensor) -> dict[str, float]:
    """n, mean, std (population), min, median, q90, q95, q99, max of a set of spreads."""
    s = torch.as_tensor(spreads, dtype=torch.float64).reshape(-1)
    if s.numel() == 0:
        raise ValueError("no spreads to summarize")
    q = torch.quantile(s, torch.tensor([0.5, 0.9, 0.95, 0.99], dtype=torch.float64)).tolist()
    return {"n": s.numel(), "mean": float(s.mean()), "std": float(s.std(correction=0)), "min": float(s.min()),
            "median": q[0], "q90": q[1], "q95": q[2], "q99": q[3], "max": float(s.max())}


def calibrate(scores: Tensor, quantile: float = 0.95) -> dict[str, Any]:
    """Calibration of an ensemble from its scores (M, N) of N held-out in-distribution responses:
    `offsets` (M,) = each member's mean score, `threshold` = the `quantile` of the spreads of the
    offset scores (`calibrate_threshold`), `quantile`, and `spread` = `spread_summary` of them."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    if s.dim() != 2 or s.shape[1] == 0:
        raise ValueError(f"scores must be (M members, N >= 1 responses), got shape {tuple(s.shape)}")
    offsets = s.mean(dim=1)  # (M,)
    _, std = ensemble_stats(s, offsets)
    return {"offsets": offsets.tolist(), "quantile": quantile, "threshold": calibrate_threshold(std, quantile),
            "spread": spread_summary(std)}


# --------------------------------------------------------------------------- the ensemble JSON


@dataclass
class EnsembleFile:
    """An ensemble JSON (written by `rlhflab ensemble train`, extended by `calibrate`).

    Relative paths inside the file are relative to the folder holding it.
    """

    path: Path
    """Where the JSON is."""
    members: list[Path]
    """The member model folders (resolved)."""
    data: dict[str, Any] = field(default_factory=dict)
    """The whole JSON object (members, vary, seeds, heldout, chat_template, calibration, ...)."""

    @property
    def calibration(self) -> dict[str, Any]:
        """The `calibration` section (empty before `rlhflab ensemble calibrate`)."""
        return self.data.get("calibration") or {}

    @property
    def threshold(self) -> float | None:
        """The calibrated OOD threshold, or None before calibration."""
        return self.calibration.get("threshold")

    @property
    def offsets(self) -> list[float] | None:
        """Each member's held-out mean score (subtracted before the statistics), or None."""
        return self.calibration.get("offsets")

    @property
    def chat_template(self) -> str | None:
        """The `data.chat_template` the members were trained with (None = each tokenizer's own)."""
        return self.data.get("chat_template")

    def resolve(self, p: str) -> Path:
        """`p` from the file, relative to the file's folder unless absolute."""
        return Path(p) if Path(p).is_absolute() else self.path.parent / p


def read_ensemble_file(path: str | os.PathLike) -> EnsembleFile:
    """Read and check an ensemble JSON: at least two members, each an existing folder; when
    calibrated, a finite threshold >= 0 and one finite offset per member. ConfigError otherwise."""
    from rlhflab.config import read_json

    p = Path(path)
    data = read_json(p, "ensemble file", " (write one with `rlhflab ensemble train`)")
    members = data.get("members") if isinstance(data, dict) else None
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise ConfigError(f"{p}: expected an object with `members`, a list of model folders")
    out = EnsembleFile(p, [], data)
    out.members = [out.resolve(m) for m in members]
    check_member_paths(out.members, str(p))
    t, b = out.threshold, out.offsets
    if t is not None and not _is_number(t, nonnegative=True):
        raise ConfigError(f"{p}: calibration.threshold must be a finite number >= 0, got {t!r}")
    if b is not None and not (isinstance(b, list) and len(b) == len(members) and all(map(_is_number, b))):
        raise ConfigError(f"{p}: calibration.offsets must hold one finite number per member ({len(members)})")
    return out


def _is_number(x: Any, nonnegative: bool = False) -> bool:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) < float("inf")
    return ok and (not nonnegative or x >= 0)


def write_ensemble_file(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write the JSON to a temporary file beside `path` and rename it into place."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def check_member_paths(paths: list[Path], where: str) -> None:
    """At least two members, each an existing folder (ConfigError naming `where`)."""
    if len(paths) < 2:
        raise ConfigError(f"{where}: an ensemble needs at least 2 member models, got {len(paths)}")
    for m in paths:
        if not m.is_dir():
            raise ConfigError(f"{where}: member model folder not found: {m}")


# --------------------------------------------------------------------------- the scorer


class EnsembleScorer(Scorer):
    """Scores of M reward models: values = mean - k * std of the (offset) member scores; parts
    `mean`, `std` and, when a threshold is known, `ood` (1.0 where std > threshold, else 0.0)."""

    name = "ensemble"

    def __init__(self, paths: list[str | os.PathLike], batch_size: int = 16, device: str = "cpu",
                 trust_remote_code: bool = False, uncertainty_coef: float = 0.0,
                 ood_threshold: float | None = None, offsets: list[float] | None = None,
                 chat_template: str | None = None):
        """`paths`: the member model folders (>= 2); `offsets`: one per member, subtracted from its
        scores (None = none); `chat_template`: as in RewardModelScorer, for every member (None =
        each member's own tokenizer template)."""
        from rlhflab.rewards.reward_model import RewardModelScorer

        check_member_paths([Path(p) for p in paths], "ensemble scorer")
        if not uncertainty_coef >= 0:
            raise ConfigError(f"ensemble: uncertainty_coef must be >= 0, got {uncertainty_coef}")
        if ood_threshold is not None and not ood_threshold >= 0:
            raise ConfigError(f"ensemble: ood_threshold must be >= 0, got {ood_threshold}")
        if offsets is not None and len(offsets) != len(paths):
            raise ConfigError(f"ensemble: {len(offsets)} offsets for {len(paths)} members")
        self.uncertainty_coef, self.ood_threshold, self.offsets = float(uncertainty_coef), ood_threshold, offsets
        self.members = [RewardModelScorer(p, batch_size, device, trust_remote_code, chat_template=chat_template)
                        for p in paths]

    @classmethod
    def from_file(cls, path: str | os.PathLike, batch_size: int = 16, device: str = "cpu",
                  trust_remote_code: bool = False, uncertainty_coef: float = 0.0,
                  ood_threshold: float | None = None) -> "EnsembleScorer":
        """The ensemble of a JSON file: its members, offsets and chat template; the threshold is
        `ood_threshold`, else the calibrated one (else no flag)."""
        file = read_ensemble_file(path)
        threshold = ood_threshold if ood_threshold is not None else file.threshold
        return cls(file.members, batch_size, device, trust_remote_code, uncertainty_coef, threshold, file.offsets,
                   file.chat_template)

    @classmethod
    def from_config(cls, c: Any, device: str = "cpu", trust_remote_code: bool = False) -> "EnsembleScorer":
        """From a ScorerConfig of type ensemble: `calibration` (a JSON file) or `paths`."""
        if c.calibration:
            return cls.from_file(c.calibration, c.batch_size, device, trust_remote_code, c.uncertainty_coef,
                                 c.ood_threshold)
        return cls(list(c.paths), c.batch_size, device, trust_remote_code, c.uncertainty_coef, c.ood_threshold)

    def member_scores(self, samples: list[Sample]) -> Tensor:
        """(M, N) float32: each member's raw scores of the samples (no offsets)."""
        return torch.stack([m.score(samples).values for m in self.members])

    def score(self, samples: list[Sample]) -> Scores:
        return self.combine(self.member_scores(samples))

    def combine(self, scores: Tensor) -> Scores:
        """The Scores of a raw member score matrix (M, N) (see the module docstring)."""
        mean, std = ensemble_stats(scores, self.offsets)
        parts = {"mean": mean, "std": std}
        if self.ood_threshold is not None:
            parts["ood"] = (std > self.ood_threshold).float()
        return Scores(penalized_reward(mean, std, self.uncertainty_coef), parts)

    def close(self) -> None:
        for m in self.members:
            m.close()
