"""Rule-Based Rewards with fitted weights (Mu et al. 2024, "Rule Based Rewards for Language Model
Safety", OpenAI, arXiv 2411.01111).

A proposition is a statement about a completion ("refuses", "is judgmental", "gives the harmful
detail"), graded as a feature phi_k in [0, 1]: by a judge, phi_k = P(Yes) of the yes/no question
(`Judge.yes_no`), or by a text rule of `rules.py` (1 when it fires, else 0). A proposition with
`applies_to` is graded only on prompts of those categories (the row's `category` column) and is 0
elsewhere, so "refuses" can count for and against a completion depending on the prompt. The reward is

    R_rbr(x, y) = bias + sum_k w_k * phi_k(x, y)

and the total reward of training is the weighted sum of the scorers, e.g. a helpfulness reward
model plus this one: R_tot = R_rm + R_rbr.

Fitting (`fit_rbr_weights`, the paper's weight fitting). On a small weight-fitting set every
prompt has completions ranked best first; each pair (better b, worse w) of different ranks should
satisfy R_tot(b) > R_tot(w). With the base reward B (the other scorers' weighted sum, fixed),
d = phi(b) - phi(w) and g = B(b) - B(w), the weights minimize

    J(w) = sum_m a_m * loss(g_m + w . d_m) / sum_m a_m + l2 * ||w||^2
    hinge:    loss(z) = max(0, margin - z)
    logistic: loss(z) = log(1 + exp(margin - z))

with pair weights a_m (1 by default, 0 masks a pair). The bias cancels in every pair, so the fit
cannot set it; `centered_bias` sets bias = -mean_i w . phi_i over the fitting completions, which
makes R_rbr average 0 there and leaves the base reward's scale alone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rlhflab.atomic import write_text_atomic
from rlhflab.config_feedback import PropositionConfig, check_propositions
from rlhflab.config_rl import RuleConfig, ScorerConfig
from rlhflab.errors import ConfigError
from rlhflab.rewards.base import Sample, Scorer, Scores, require_column
from rlhflab.rewards.rules import rule_fn

CATEGORY_FIELD = "category"
"""The dataset column `PropositionConfig.applies_to` reads (e.g. harmful | benign)."""

# --------------------------------------------------------------------------- the scorer


def rule_config(p: PropositionConfig) -> RuleConfig:
    """The `RuleConfig` of a rule-graded proposition (its kind and rule keys)."""
    return RuleConfig(kind=p.kind, name=p.name, pattern=p.pattern, keywords=p.keywords, mode=p.mode,
                      min_chars=p.min_chars, max_chars=p.max_chars)


class RBRScorer(Scorer):
    """bias + sum_k w_k * phi_k; `parts[name_k]` = phi_k (each proposition's feature, unweighted)."""

    name = "rbr"

    def __init__(self, propositions: Sequence[PropositionConfig], weights: Mapping[str, float] | None = None,
                 bias: float = 0.0, judge: Any = None):
        """`weights`: {proposition name: w} for every proposition (None = each proposition's own
        `weight`); `judge`: an object with `yes_no(prompts, responses, questions) -> (N,) Tensor`
        (`rlhflab.rewards.judge.Judge`), needed when a proposition is of kind judge."""
        props = tuple(propositions)
        check_propositions("propositions", props)
        self.props = props
        self.names = [p.name for p in props]
        if weights is None:
            weights = {p.name: p.weight for p in props}
        check_weight_names(weights, self.names, "weights")
        self.weights = torch.tensor([float(weights[n]) for n in self.names], dtype=torch.float32)  # (P,)
        self.bias = float(bias)
        self.rules = {p.name: rule_fn(rule_config(p), p.name) for p in props if p.kind != "judge"}
        if judge is None and any(p.kind == "judge" for p in props):
            raise ConfigError("an rbr scorer with judge propositions needs a judge (the scorer's `judge:` section)")
        self.judge = judge

    def features(self, samples: list[Sample]) -> Tensor:
        """(N, P) float32: phi_k of each sample, 0 where a proposition does not apply to the prompt."""
        if any(p.applies_to for p in self.props):
            require_column(samples, CATEGORY_FIELD, self.name)
        F = torch.zeros(len(samples), len(self.props), dtype=torch.float32)
        asks: list[tuple[int, int]] = []  # (sample, proposition) graded by the judge
        for k, p in enumerate(self.props):
            for i, s in enumerate(samples):
                if p.applies_to and str(s.row[CATEGORY_FIELD]) not in p.applies_to:
                    continue
                if p.kind == "judge":
                    asks.append((i, k))
                else:
                    F[i, k] = self.rules[p.name](s.completion)
        if asks:
            p_yes = self.judge.yes_no([samples[i].prompt for i, _ in asks], [samples[i].completion for i, _ in asks],
                                      [self.props[k].question for _, k in asks])
            p_yes = torch.as_tensor(p_yes, dtype=torch.float32).reshape(-1)
            if p_yes.shape != (len(asks),):
                raise ValueError(f"the judge returned {tuple(p_yes.shape)} answers for {len(asks)} questions")
            rows, cols = zip(*asks)
            F[torch.tensor(rows), torch.tensor(cols)] = p_yes
        return F

    def score(self, samples: list[Sample]) -> Scores:
        F = self.features(samples)
        return Scores(self.bias + F @ self.weights, {n: F[:, k] for k, n in enumerate(self.names)})

    def close(self) -> None:
        self.judge = None


def check_weight_names(weights: Mapping[str, Any], names: Sequence[str], where: str) -> None:
    """`weights` names exactly the propositions `names` (ConfigError naming the missing / extra ones)."""
    missing = [n for n in names if n not in weights]
    extra = [n for n in weights if n not in names]
    if missing or extra:
        raise ConfigError(f"{where}: the weights do not match the propositions {list(names)}"
                          + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else "")
                          + " (re-fit with `rlhflab rbr fit` after changing the propositions)")


def build_rbr(c: ScorerConfig, device: str = "cpu", trust_remote_code: bool = False) -> RBRScorer:
    """The scorer of an `rbr` ScorerConfig: its weights file (or the propositions' own weights) and,
    for judge propositions, the judge model."""
    weights, bias = (None, 0.0) if c.rbr_weights is None else load_rbr_weights(c.rbr_weights, [p.name for p in c.propositions])
    judge = None
    if any(p.kind == "judge" for p in c.propositions):
        if c.judge is None:
            raise ConfigError("type rbr: judge propositions need a `judge:` section, e.g. judge: {model: smollm2-135m}")
        from rlhflab.rewards.judge import Judge

        judge = Judge(c.judge, device=device, trust_remote_code=trust_remote_code)
    return RBRScorer(c.propositions, weights, bias, judge)


# --------------------------------------------------------------------------- the weights file


def load_rbr_weights(path: str | os.PathLike, names: Sequence[str]) -> tuple[dict[str, float], float]:
    """({name: w}, bias) from a weights file of `save_rbr_weights`, checked against `names`."""
    from rlhflab.config import read_json

    p = Path(path)
    tree = read_json(p, "rbr_weights file", " (write it with `rlhflab rbr fit`)")
    if not isinstance(tree, dict) or not isinstance(tree.get("weights"), dict):
        raise ConfigError(f"{p}: expected an object with 'weights': {{proposition: number}} and 'bias'")
    weights, bias = tree["weights"], tree.get("bias", 0.0)
    check_weight_names(weights, names, str(p))
    for n, v in [*weights.items(), ("bias", bias)]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{p}: '{n}' must be a finite number, got {v!r}")
    return {n: float(weights[n]) for n in names}, float(bias)


def save_rbr_weights(path: str | os.PathLike, weights: Mapping[str, float], bias: float,
                     fit: Mapping[str, Any] | None = None) -> Path:
    """Write {"weights": {...}, "bias": b, "fit": {...}} atomically (temporary file, then rename)."""
    p = Path(path)
    write_text_atomic(p, json.dumps({"weights": dict(weights), "bias": bias, "fit": dict(fit or {})}, indent=2) + "\n")
    return p


# --------------------------------------------------------------------------- fitting


@dataclass
class RBRFit:
    """What `fit_rbr_weights` returns."""

    weights: Tensor
    """(P,) float64: the fitted w."""
    objective: float
    """J(w) at the returned weights (loss + l2 term)."""
    accuracy_before: float
    """Ranking accuracy of the base alone (w = 0)."""
    accuracy_after: float
    """Ranking accuracy of base + w . phi."""


def ranking_accuracy(r_better: Tensor, r_worse: Tensor, pair_weight: Tensor | None = None) -> float:
    """Fraction of pairs with R(better) > R(worse), strictly (a tie counts as wrong); weighted by
    `pair_weight` when given. (M,) each."""
    right = (r_better > r_worse).double()
    if pair_weight is None:
        return float(right.mean())
    a = pair_weight.double()
    return float((a * right).sum() / a.sum())


def rbr_pair_loss(z: Tensor, loss: Literal["hinge", "logistic"], margin: float) -> Tensor:
    """Per-pair loss of the total-reward gap z = R(better) - R(worse), (M,) -> (M,):
    hinge max(0, margin - z); logistic log(1 + exp(margin - z))."""
    if loss == "hinge":
        return torch.relu(margin - z)
    if loss == "logistic":
        return torch.nn.functional.softplus(margin - z)
    raise ValueError(f"loss must be hinge or logistic, got {loss!r}")


def fit_rbr_weights(features_better: Tensor, features_worse: Tensor, base_better: Tensor | None = None,
                    base_worse: Tensor | None = None, *, loss: Literal["hinge", "logistic"] = "hinge",
                    margin: float = 1.0, l2: float = 1e-3, pair_weight: Tensor | None = None,
                    max_iter: int = 1000, tol: float = 1e-9) -> RBRFit:
    """Fit w so that base + w . phi ranks every better completion above its worse one: the
    minimizer of J(w) of the module docstring (Mu et al. 2024, weight fitting).

    features_better, features_worse: (M, P) phi of the better and worse completion of each pair;
    base_better, base_worse: (M,) the base reward of each (None = 0: the RBR alone); pair_weight:
    (M,) >= 0, 0 masks a pair (None = all 1).

    J is convex and, with l2 > 0, strongly convex, so it has one minimizer, found in float64 by an
    exact solver rather than a fixed number of SGD steps: hinge by dual coordinate descent (the
    linear-SVM solver of Hsieh et al. 2008, sweeping the pairs in order until no dual coordinate
    moves by more than `tol`, at most `max_iter` sweeps; needs l2 > 0); logistic by L-BFGS with a
    strong-Wolfe line search (at most `max_iter` iterations). Nothing is sampled or randomly
    initialized (w starts at 0), so the result is a deterministic function of the inputs. A
    proposition that never differs inside a pair gets no weight (exactly 0)."""
    fb, fw = torch.as_tensor(features_better).double(), torch.as_tensor(features_worse).double()
    if fb.ndim != 2 or fb.shape != fw.shape:
        raise ValueError(f"features_better and features_worse must both be (M, P), got {tuple(fb.shape)} and {tuple(fw.shape)}")
    M, P = fb.shape
    if M == 0:
        raise ValueError("no ranked pairs to fit: every prompt needs at least two completions of different ranks")
    gb = torch.zeros(M, dtype=torch.float64) if base_better is None else torch.as_tensor(base_better).double().reshape(-1)
    gw = torch.zeros(M, dtype=torch.float64) if base_worse is None else torch.as_tensor(base_worse).double().reshape(-1)
    a = torch.ones(M, dtype=torch.float64) if pair_weight is None else torch.as_tensor(pair_weight).double().reshape(-1)
    if gb.shape != (M,) or gw.shape != (M,) or a.shape != (M,):
        raise ValueError(f"base_better, base_worse and pair_weight must be ({M},)")
    if not all(bool(torch.isfinite(t).all()) for t in (fb, fw, gb, gw, a)):
        raise ValueError("features, base rewards and pair weights must be finite")
    if bool((a < 0).any()) or not a.sum() > 0:
        raise ValueError("pair_weight must be >= 0 with at least one positive pair")
    if l2 < 0 or (loss == "hinge" and not l2 > 0) or max_iter < 1:
        raise ValueError("l2 must be >= 0 (> 0 for the hinge loss) and max_iter >= 1")
    d, g, a = fb - fw, gb - gw, a / a.sum()  # (M, P), (M,), (M,) summing to 1
    if loss == "hinge":
        w = _hinge_dual_cd(d, margin - g, a, l2, max_iter, tol)
    elif loss == "logistic":
        w = _logistic_lbfgs(d, g, a, l2, margin, max_iter)
    else:
        raise ValueError(f"loss must be hinge or logistic, got {loss!r}")
    objective = float((a * rbr_pair_loss(g + d @ w, loss, margin)).sum() + l2 * (w * w).sum())
    return RBRFit(weights=w, objective=objective, accuracy_before=ranking_accuracy(gb, gw, a),
                  accuracy_after=ranking_accuracy(gb + fb @ w, gw + fw @ w, a))


def _hinge_dual_cd(d: Tensor, c: Tensor, a: Tensor, l2: float, max_iter: int, tol: float) -> Tensor:
    """argmin_w l2 ||w||^2 + sum_m a_m max(0, c_m - w . d_m) by dual coordinate descent.

    Dual: max_alpha sum_m alpha_m c_m - ||sum_m alpha_m d_m||^2 / (4 l2), 0 <= alpha_m <= a_m,
    with w = sum_m alpha_m d_m / (2 l2). Each coordinate step maximizes the dual exactly in alpha_m:
    alpha_m <- clip(alpha_m + 2 l2 (c_m - w . d_m) / ||d_m||^2, 0, a_m)."""
    import numpy as np

    D, C, A = d.numpy(), c.numpy(), a.numpy()
    q = (D * D).sum(axis=1)  # (M,)
    alpha = np.zeros(len(C))
    w = np.zeros(D.shape[1])
    for _ in range(max_iter):
        moved = 0.0
        for m in np.flatnonzero((q > 0) & (A > 0)):
            new = min(max(alpha[m] + 2 * l2 * (C[m] - D[m] @ w) / q[m], 0.0), A[m])
            if new != alpha[m]:
                w += (new - alpha[m]) / (2 * l2) * D[m]
                moved = max(moved, abs(new - alpha[m]) / A[m])
                alpha[m] = new
        if moved <= tol:
            break
    return torch.from_numpy(w)


def _logistic_lbfgs(d: Tensor, g: Tensor, a: Tensor, l2: float, margin: float, max_iter: int) -> Tensor:
    """argmin_w sum_m a_m log(1 + exp(margin - g_m - w . d_m)) + l2 ||w||^2 by L-BFGS from w = 0."""
    w = torch.zeros(d.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-15,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        J = (a * rbr_pair_loss(g + d @ w, "logistic", margin)).sum() + l2 * (w * w).sum()
        J.backward()
        return J

    opt.step(closure)
    return w.detach()


def centered_bias(weights: Tensor, features: Tensor) -> float:
    """-mean_i w . phi_i over the fitting completions `features` (N, P): R_rbr then averages 0 there."""
    return -float((features.double() @ weights.double()).mean())
