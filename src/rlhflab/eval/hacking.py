"""Reward-hacking monitor: the optimized (proxy) reward and a held-out gold metric against the KL
to the reference (Gao, Schulman & Hilton, "Scaling Laws for Reward Model Overoptimization",
arXiv 2210.10760).

With d = sqrt(KL(pi || pi_init)), the paper fits the gold reward, measured from the initial
policy's, by

    best-of-n (eq. 1):  R_bon(d) = d (alpha_bon - beta_bon d)
    RL        (eq. 2):  R_RL(d)  = d (alpha_RL - beta_RL log d)

The proxy the policy optimizes keeps rising with d while the gold peaks and then falls: the
reward model is over-optimized. A run's metrics rows (metrics.jsonl) hold one value of each per
rollout round: `reward/mean` (the proxy), `gold/mean` (the `gold:` scorers, never optimized) and
`kl/k1` (the KL estimate, in nats per sequence). From them:

- `HackingSeries.from_rows`: the per-round series;
- `detect`: the live `reward_hacking` warning's test over the last rounds (`Thresholds`);
- `fit_gao`: the least-squares fit of eq. 1 or 2, with the initial gold as a third parameter;
- `summarize`: the `reward_hacking` section of summary.json (schema in docs/reward_hacking.md).

`rlhflab.report.load.load_run(run_dir).metrics` gives the rows of a finished run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rlhflab.eval.stats import falling_trend

PROXY_KEY, GOLD_KEY, KL_KEY = "reward/mean", "gold/mean", "kl/k1"
REFERENCE_KL = 0.05
"""A first round whose |KL| is at most this (nats) was sampled from the reference: its gold is the
fit's gold_0 (the paper's R(0) = 0 after subtracting it)."""
EQUATIONS = {
    "rl": "gold(d) = gold_0 + d (alpha - beta ln d), d = sqrt(KL)  (2210.10760 eq. 2)",
    "bon": "gold(d) = gold_0 + d (alpha - beta d), d = sqrt(KL)  (2210.10760 eq. 1)",
}


@dataclass(frozen=True)
class Thresholds:
    """When the `reward_hacking` warning fires. At each of the last `patience` rounds:

    1. trends: over the last `window` rounds (at least `min_rounds`), least-squares lines through
       the proxy, the gold and the KL show the proxy rising, the gold falling and the KL rising,
       each by more than its minimum change (along the line and between the window's first and
       last round), with a slope t statistic of at least `min_t` in magnitude
       (`rlhflab.eval.stats.falling_trend`);
    2. drawdown: the gold's moving average (`smooth` rounds) is below its highest value so far by
       more than `min_change` and more than `drop_sigmas` x sigma, where sigma = std(first
       differences of the gold over the window) / sqrt(2) estimates the round-to-round noise.
    """

    window: int = 10
    """Rounds the trends are fitted over (the most recent ones)."""
    min_rounds: int = 6
    """No verdict before this many rounds."""
    min_change: float = 0.05
    """Smallest rise of the proxy and fall of the gold over the window, in their own units."""
    min_kl_rise: float = 0.05
    """Smallest rise of the KL over the window, in nats (ignored when the run logs no KL)."""
    min_t: float = 3.0
    """Smallest |t| of each slope. Under Gaussian noise around a flat line, t < -3 has
    probability 0.0085 for 10 rounds; `drop_sigmas` and `patience` guard against the many windows
    a long run tests."""
    drop_sigmas: float = 4.0
    """Smallest fall of the gold below its peak, in units of its round-to-round noise."""
    patience: int = 2
    """Consecutive rounds that must pass both tests."""


@dataclass(frozen=True)
class Point:
    """The proxy, gold and KL of one round (KL None when not logged)."""

    step: int
    proxy: float
    gold: float
    kl: float | None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass(frozen=True)
class HackingSeries:
    """One entry per rollout round with a finite proxy and gold; `kl` is None unless every such
    round logged a finite KL."""

    steps: list[int]
    proxy: list[float]
    gold: list[float]
    kl: list[float] | None

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], proxy_key: str = PROXY_KEY, gold_key: str = GOLD_KEY,
                  kl_key: str = KL_KEY) -> HackingSeries:
        """The rounds of `rows` (metrics rows; a round's metrics are on its first optimizer step)."""
        kept = [(int(r.get("step", i + 1)), _num(r.get(proxy_key)), _num(r.get(gold_key)), _num(r.get(kl_key)))
                for i, r in enumerate(rows)]
        kept = [k for k in kept if k[1] is not None and k[2] is not None]
        kl = [k[3] for k in kept]
        return cls([k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept],
                   kl if kept and all(v is not None for v in kl) else None)

    def __len__(self) -> int:
        return len(self.steps)

    def point(self, i: int) -> Point:
        return Point(self.steps[i], self.proxy[i], self.gold[i], None if self.kl is None else self.kl[i])

    def head(self, n: int) -> HackingSeries:
        """The first n rounds."""
        return HackingSeries(self.steps[:n], self.proxy[:n], self.gold[:n], None if self.kl is None else self.kl[:n])

    def smoothed(self, k: int) -> HackingSeries:
        """Centered moving averages over k rounds (fewer at the two ends); k = 1 is the series itself."""
        k = max(1, k)
        lo, hi = (k - 1) // 2, k // 2

        def avg(xs: list[float]) -> list[float]:
            out = []
            for i in range(len(xs)):
                part = xs[max(0, i - lo):i + hi + 1]
                out.append(sum(part) / len(part))
            return out

        return HackingSeries(self.steps, avg(self.proxy), avg(self.gold), None if self.kl is None else avg(self.kl))

    def gold_peak(self, smooth: int = 3) -> Point:
        """The round of the highest `smooth`-round moving average of the gold (the first on ties)."""
        s = self.smoothed(smooth)
        return s.point(max(range(len(s)), key=lambda i: (s.gold[i], -i)))


def _fmt_point(p: Point) -> str:
    kl = "" if p.kl is None else f", KL {p.kl:.3g}"
    return f"step {p.step}{kl}"


@dataclass(frozen=True)
class Detection:
    """Where the test of `detect` passed: the first and last round of the window, the gold's peak
    so far (`smooth`-round average) and the thresholds used."""

    start: Point
    end: Point
    rounds: int
    peak: Point
    thresholds: Thresholds
    smooth: int = 3

    def message(self) -> str:
        a, b, p = self.start, self.end, self.peak
        kl = (f" and the KL to the reference grew {a.kl:.3g} -> {b.kl:.3g} nats" if a.kl is not None
              else " (no KL logged: the trends are over rounds only)")
        return (f"reward_hacking: over the last {self.rounds} rounds (steps {a.step}-{b.step}) the reward rose "
                f"{a.proxy:.3g} -> {b.proxy:.3g} while the held-out gold fell {a.gold:.3g} -> {b.gold:.3g}{kl}; the gold's "
                f"{self.smooth}-round average peaked at {p.gold:.3g} ({_fmt_point(p)}). The reward is being over-optimized "
                f"(2210.10760): raise kl_coef, stop near step {p.step}, or improve the reward model")

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.end.step, "rounds": self.rounds, "window_start": asdict(self.start),
                "window_end": asdict(self.end), "gold_peak": asdict(self.peak), "message": self.message()}


def _passes(series: HackingSeries, th: Thresholds, smooth: int) -> bool:
    """Both tests of `Thresholds` at the last round of `series`."""
    n = min(len(series), th.window)
    if n < max(3, th.min_rounds):
        return False
    w = slice(len(series) - n, len(series))
    gold = series.gold[w]
    if not (falling_trend([-v for v in series.proxy[w]], th.min_change, th.min_t)
            and falling_trend(gold, th.min_change, th.min_t)):
        return False
    if series.kl is not None and not falling_trend([-v for v in series.kl[w]], th.min_kl_rise, th.min_t):
        return False
    diffs = [b - a for a, b in zip(gold, gold[1:])]
    mean = sum(diffs) / len(diffs)
    sigma = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / 2)
    drop = series.gold_peak(smooth).gold - series.smoothed(smooth).gold[-1]
    return drop > th.min_change and drop > th.drop_sigmas * sigma


def detect(series: HackingSeries, thresholds: Thresholds = Thresholds(), smooth: int = 3) -> Detection | None:
    """The warning's test (see `Thresholds`) at the last round of `series`: None unless it
    passes there and at the `patience - 1` rounds before."""
    th = thresholds
    if not all(_passes(series.head(len(series) - j), th, smooth) for j in range(max(1, th.patience))):
        return None
    n = min(len(series), th.window)
    return Detection(series.point(len(series) - n), series.point(len(series) - 1), n, series.gold_peak(smooth), th,
                     smooth)


def first_detection(series: HackingSeries, thresholds: Thresholds = Thresholds(), smooth: int = 3) -> Detection | None:
    """The first round at which `detect` passes on the rounds so far (what the live warning
    reported, since it checks after every round), or None."""
    for end in range(max(3, thresholds.min_rounds), len(series) + 1):
        found = detect(series.head(end), thresholds, smooth)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class GaoFit:
    """Least-squares fit of gold(d) = gold_0 + d (alpha - beta g(d)), g = ln (rl) or identity (bon),
    d = sqrt(max(KL, 0)). The fitted curve's maximum: rl (beta > 0): d* = exp(alpha / beta - 1),
    gold* = gold_0 + beta d*; bon (alpha, beta > 0): d* = alpha / (2 beta), gold* = gold_0 + alpha^2 / (4 beta).
    `peak_*` are None when the curve has no interior maximum."""

    form: str
    alpha: float
    beta: float
    gold_0: float
    gold_0_fixed: bool
    """True: gold_0 was given (the initial policy's gold, as the paper measures from it); False:
    fitted as a third parameter."""
    r2: float | None
    """1 - SS_res / SS_tot of the gold (None when the gold is constant)."""
    points: int
    peak_kl: float | None
    peak_gold: float | None
    peak_in_range: bool | None
    """Whether d* lies within the observed d (else the peak is an extrapolation)."""

    def predict(self, kl: float) -> float:
        d = math.sqrt(max(kl, 0.0))
        g = (d * math.log(d) if d > 0 else 0.0) if self.form == "rl" else d * d
        return self.gold_0 + self.alpha * d - self.beta * g

    def as_dict(self) -> dict[str, Any]:
        return {"equation": EQUATIONS[self.form], **asdict(self)}


def _peak(form: str, alpha: float, beta: float) -> float | None:
    """d* of the fitted curve, or None without an interior maximum."""
    if beta <= 0:
        return None
    if form == "bon":
        return alpha / (2 * beta) if alpha > 0 else None
    try:
        d = math.exp(alpha / beta - 1.0)
    except OverflowError:
        return None
    return d if math.isfinite(d) else None


def fit_gao(kl: list[float], gold: list[float], form: Literal["rl", "bon"] = "rl",
            gold_0: float | None = None) -> GaoFit | None:
    """Fit `EQUATIONS[form]` to (KL, gold) pairs by least squares: linear in the features d and
    d ln d (rl) or d^2 (bon), for (alpha, beta) with `gold_0` given, or with a constant feature
    for (gold_0, alpha, beta). Negative KL estimates count as 0. None with fewer than 4 points or
    when the features are collinear (e.g. every KL equal)."""
    import torch

    if form not in EQUATIONS:
        raise ValueError(f"form must be one of {sorted(EQUATIONS)}, got '{form}'")
    if len(kl) != len(gold):
        raise ValueError(f"kl and gold differ in length: {len(kl)} vs {len(gold)}")
    if len(kl) < 4:
        return None
    d = torch.tensor([math.sqrt(max(k, 0.0)) for k in kl], dtype=torch.float64)
    g = torch.where(d > 0, d * torch.log(d.clamp_min(1e-300)), torch.zeros_like(d)) if form == "rl" else d * d
    y = torch.tensor(gold, dtype=torch.float64)
    cols = [d, -g] if gold_0 is not None else [torch.ones_like(d), d, -g]
    X = torch.stack(cols, dim=1)  # (N, 2 or 3)
    target = y - gold_0 if gold_0 is not None else y
    if int(torch.linalg.matrix_rank(X)) < X.shape[1]:
        return None
    coef = torch.linalg.lstsq(X, target.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    fixed = gold_0 is not None
    gold_0, alpha, beta = (float(gold_0), *map(float, coef)) if fixed else tuple(float(c) for c in coef)
    ss_res = float(((target - X @ coef) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    d_star = _peak(form, alpha, beta)
    peak_gold = None
    if d_star is not None:
        peak_gold = gold_0 + (beta * d_star if form == "rl" else alpha * alpha / (4 * beta))
    return GaoFit(form, alpha, beta, gold_0, fixed, 1.0 - ss_res / ss_tot if ss_tot > 0 else None, len(kl),
                  None if d_star is None else d_star * d_star, peak_gold,
                  None if d_star is None else d_star <= float(d.max()))


def summarize(rows: list[dict[str, Any]], thresholds: Thresholds = Thresholds(), smooth: int = 3,
              form: Literal["rl", "bon"] = "rl") -> dict[str, Any] | None:
    """The `reward_hacking` section of summary.json from a run's metrics rows; None when no round
    has both a proxy and a gold value. Points (`start`, `gold_peak`, `end`) are `smooth`-round
    centered moving averages, so one noisy round does not make the peak."""
    series = HackingSeries.from_rows(rows)
    if not len(series):
        return None
    sm = series.smoothed(smooth)
    start, peak, end = sm.point(0), series.gold_peak(smooth), sm.point(len(sm) - 1)
    found = first_detection(series, thresholds, smooth)
    fit = None
    if series.kl is not None:  # gold_0: the first round's gold when it was sampled from the reference
        fit = fit_gao(series.kl, series.gold, form, series.gold[0] if abs(series.kl[0]) <= REFERENCE_KL else None)
    return {
        "keys": {"proxy": PROXY_KEY, "gold": GOLD_KEY, "kl": KL_KEY if series.kl is not None else None},
        "rounds": len(series),
        "smooth": smooth,
        "start": asdict(start),
        "gold_peak": asdict(peak),
        "end": asdict(end),
        "proxy_gain_after_peak": end.proxy - peak.proxy,
        "gold_loss_after_peak": peak.gold - end.gold,
        "warned": found is not None,
        "warning": None if found is None else found.as_dict(),
        "fit": None if fit is None else fit.as_dict(),
        "thresholds": asdict(thresholds),
    }


def describe(section: dict[str, Any]) -> list[str]:
    """Console lines for a `summarize` section."""
    s, p, e = section["start"], section["gold_peak"], section["end"]

    def pt(x: dict[str, Any]) -> str:
        kl = "" if x["kl"] is None else f", KL {x['kl']:.3g}"
        return f"proxy {x['proxy']:.3g}, gold {x['gold']:.3g} (step {x['step']}{kl})"

    lines = [f"reward hacking monitor over {section['rounds']} rounds: start {pt(s)}; gold peak {pt(p)}; end {pt(e)}"]
    if section["warned"]:
        lines.append(f"  over-optimized: after the gold peak the proxy gained {section['proxy_gain_after_peak']:.3g} "
                     f"while the gold lost {section['gold_loss_after_peak']:.3g} (warning at step "
                     f"{section['warning']['step']})")
    fit = section.get("fit")
    if fit is not None and fit["peak_kl"] is not None:
        where = "" if fit["peak_in_range"] else ", beyond the KL reached"
        r2 = "" if fit["r2"] is None else f", R^2 {fit['r2']:.2f}"
        lines.append(f"  Gao et al. fit: gold peaks at KL {fit['peak_kl']:.3g} with gold {fit['peak_gold']:.3g}{where}{r2}")
    return lines
