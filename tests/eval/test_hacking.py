"""The reward-hacking monitor (rlhflab.eval.hacking) on synthetic series with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhflab.eval.hacking import (HackingSeries, Thresholds, detect, first_detection, fit_gao, summarize)
from rlhflab.eval.stats import falling_trend, linear_trend


def rows(proxy, gold, kl=None, every=1):
    """Metrics rows of a run with one rollout round every `every` optimizer steps (the round's
    values on its first step, the other steps without them)."""
    out = []
    for i, (p, g) in enumerate(zip(proxy, gold)):
        r = {"step": i * every + 1, "reward/mean": p, "gold/mean": g}
        if kl is not None:
            r["kl/k1"] = kl[i]
        out.append(r)
        out += [{"step": i * every + j + 1, "loss": 0.0} for j in range(1, every)]
    return out


def hacked(n=20, peak=9):
    """Proxy i, gold rising by 0.2 per round to round `peak` then falling by 0.3, KL 0.5 i."""
    proxy = [float(i) for i in range(n)]
    gold = [0.2 * i if i <= peak else 0.2 * peak - 0.3 * (i - peak) for i in range(n)]
    return proxy, gold, [0.5 * i for i in range(n)]


# ----------------------------------------------------------------------------- the trend
def test_linear_trend_closed_form():
    # y = 0, 1, 0, 1, 0, 1 at x = 0..5: x_bar 2.5, S_xx 17.5, S_xy 1.5, b = 3/35;
    # SS_res = S_yy - b S_xy = 1.5 - 9/70 = 48/35; se = sqrt(48/35 / 4 / 17.5); change = 5 b
    change, t = linear_trend([0, 1, 0, 1, 0, 1])
    b = 3 / 35
    assert change == pytest.approx(5 * b, abs=1e-12)
    assert t == pytest.approx(b / math.sqrt(48 / 35 / 4 / 17.5), abs=1e-12)
    assert np.polyfit(np.arange(6), [0, 1, 0, 1, 0, 1], 1)[0] == pytest.approx(b, abs=1e-12)
    assert linear_trend([2.0, 2.5, 3.0, 3.5]) == (pytest.approx(1.5, abs=1e-12), math.inf)  # a perfect line
    assert linear_trend([1.0, 1.0, 1.0]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least 3"):
        linear_trend([1.0, 2.0])


def test_falling_trend_needs_drop_endpoints_and_t():
    assert falling_trend([3.0, 2.0, 1.0], 0.5)
    assert not falling_trend([3.0, 2.0, 1.0], 2.5)  # drops 2, not more than 2.5
    assert not falling_trend([1.0, 3.0, 2.0, 1.0, 0.0, 1.5], 0.1)  # the line falls, the last is above the first
    noisy = [1.0, 0.2, 0.9, 0.1, 0.8, 0.0]  # S_xy = -2, b = -4/35: falls 0.57 along the line, t = -1.09
    assert falling_trend(noisy, 0.1) and not falling_trend(noisy, 0.1, min_t=3.0)
    assert not falling_trend([2.0, 1.0], 0.1)  # too short


# ----------------------------------------------------------------------------- the series
def test_series_from_rows_keeps_rounds_and_kl_only_when_complete():
    r = rows([1.0, 2.0, 3.0], [0.5, 0.4, 0.3], [0.0, 0.1, 0.2], every=4)
    s = HackingSeries.from_rows(r)
    assert s.steps == [1, 5, 9] and s.proxy == [1.0, 2.0, 3.0] and s.kl == [0.0, 0.1, 0.2]
    r[4]["kl/k1"] = "nan"  # non-finite values are written as strings in metrics.jsonl
    assert HackingSeries.from_rows(r).kl is None
    r[4]["gold/mean"] = "nan"
    assert HackingSeries.from_rows(r).steps == [1, 9]
    assert len(HackingSeries.from_rows([{"step": 1, "reward/mean": 1.0}])) == 0


def test_smoothing_and_gold_peak():
    s = HackingSeries([1, 2, 3, 4], [0.0, 3.0, 6.0, 9.0], [0.0, 3.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0])
    sm = s.smoothed(3)
    assert sm.gold == [1.5, 1.0, 1.0, 0.0] and sm.proxy == [1.5, 3.0, 6.0, 7.5]
    assert s.smoothed(1) == s
    assert s.gold_peak(1).step == 2 and s.gold_peak(3).step == 1  # the single spike loses to the average


# ----------------------------------------------------------------------------- the warning
def test_known_hacking_series_fires_and_names_the_numbers():
    proxy, gold, kl = hacked()
    s = HackingSeries.from_rows(rows(proxy, gold, kl, every=4))
    found = detect(s)
    assert found is not None and found.rounds == 10
    assert (found.start.step, found.end.step) == (41, 77)  # rounds 10..19
    assert found.peak.step == 37 and found.peak.gold == pytest.approx((1.6 + 1.8 + 1.5) / 3)  # round 9, averaged
    msg = found.message()
    assert msg.startswith("reward_hacking: over the last 10 rounds (steps 41-77) the reward rose 10 -> 19 while the "
                          "held-out gold fell 1.5 -> -1.2 and the KL to the reference grew 5 -> 9.5 nats")
    assert "3-round average peaked at 1.63 (step 37, KL 4.5)" in msg and "stop near step 37" in msg
    first = first_detection(s)  # rounds 7-16: the gold line through 1.4, 1.6, 1.8, 1.5, ..., -0.3 falls
    assert first is not None and first.end.step == 4 * 16 + 1 and first.rounds == 10


def test_flat_noisy_gold_does_not_fire():
    g = torch.Generator().manual_seed(0)
    n = 60
    noise = (torch.randn(n, generator=g, dtype=torch.float64) * 0.3).tolist()
    proxy = [0.1 * i for i in range(n)]
    kl = [0.05 * i for i in range(n)]
    assert first_detection(HackingSeries(list(range(n)), proxy, [1.0 + e for e in noise], kl)) is None
    # ... while the same noise on a falling gold does
    falling = [1.0 - 0.1 * i + e for i, e in enumerate(noise)]
    assert first_detection(HackingSeries(list(range(n)), proxy, falling, kl)) is not None


def test_false_alarms_are_rare_and_real_falls_are_caught():
    """100 seeded 60-round runs with the proxy and the KL rising linearly (the worst case: their
    trends always pass): around a flat gold with N(0, 0.3^2) noise the warning fires in 1 run;
    with the same noise on a gold that falls 0.3 per round after round 30, every run warns within
    10 rounds of the peak."""
    n = 60
    proxy, kl = [0.1 * i for i in range(n)], [0.05 * i for i in range(n)]
    alarms, delays = 0, []
    for seed in range(100):
        noise = (torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.3).tolist()
        alarms += first_detection(HackingSeries(list(range(n)), proxy, [1 + e for e in noise], kl)) is not None
        gold = [1 + 0.05 * min(i, 30) - 0.3 * max(0, i - 30) + e for i, e in enumerate(noise)]
        found = first_detection(HackingSeries(list(range(n)), proxy, gold, kl))
        delays.append(found.end.step - 30 if found else math.inf)
    assert alarms == 1
    assert max(delays) <= 10, sorted(delays)


def test_no_warning_when_kl_is_held_or_history_short():
    proxy, gold, _ = hacked()
    held = [1.0] * 20  # the KL does not grow: not over-optimization against the reference
    assert first_detection(HackingSeries(list(range(20)), proxy, gold, held)) is None
    line = HackingSeries(list(range(5)), [0.0, 1, 2, 3, 4], [0.0, -1, -2, -3, -4], [0.0, 1, 2, 3, 4])
    assert detect(line) is None  # 5 rounds < min_rounds 6
    assert detect(line, Thresholds(min_rounds=4)) is not None  # rounds 4 and 5 pass (patience 2)
    nokl = detect(HackingSeries(list(range(20)), proxy, gold, None))  # no KL logged: trends over rounds
    assert nokl is not None and "no KL logged" in nokl.message()


def test_online_algorithm_warns_once():
    from rlhflab.algorithms import get_algorithm
    from rlhflab.config import config_from_dict

    algo = get_algorithm(config_from_dict({"algorithm": "grpo", "data": {"train": "x.jsonl"},
                                           "grpo": {"rewards": [{"type": "math"}], "gold": [{"type": "math"}]}}))
    proxy, gold, kl = hacked()
    history = rows(proxy, gold, kl, every=2)  # round i on step 2i + 1, a step without round metrics after it

    def hacking(upto_round):
        return [w for w in algo.check_history(history[:2 * upto_round + 1]) if w.startswith("reward_hacking")]

    assert [r for r in range(20) if hacking(r)] == [16]  # checked once per round; fires once per run
    assert not [w for w in algo.check_history(history) if w.startswith("reward_hacking")]  # not on a step without a round
    fresh = get_algorithm(algo.cfg)
    (msg,) = [w for w in fresh.check_history(history[:2 * 19 + 1]) if w.startswith("reward_hacking")]
    assert "steps 21-39" in msg  # rounds 10-19


# ----------------------------------------------------------------------------- the fit
@pytest.mark.parametrize("fixed", [True, False])
@pytest.mark.parametrize("form", ["rl", "bon"])
def test_gao_fit_recovers_exact_parameters(form, fixed):
    g0, alpha, beta = 0.3, 2.0, 0.8
    kl = [0.0, 0.1, 0.4, 0.9, 1.6, 2.5, 4.0, 6.25, 9.0]
    d = [math.sqrt(k) for k in kl]
    f = (lambda x: x * math.log(x) if x > 0 else 0.0) if form == "rl" else (lambda x: x * x)
    gold = [g0 + alpha * x - beta * f(x) for x in d]
    fit = fit_gao(kl, gold, form, gold_0=g0 if fixed else None)
    assert fit.gold_0_fixed is fixed
    assert (fit.gold_0, fit.alpha, fit.beta) == (pytest.approx(g0, abs=1e-9), pytest.approx(alpha, abs=1e-9),
                                                 pytest.approx(beta, abs=1e-9))
    assert fit.r2 == pytest.approx(1.0, abs=1e-12) and fit.points == 9
    d_star = math.exp(alpha / beta - 1) if form == "rl" else alpha / (2 * beta)  # d* = e^{1.5} = 4.48; 1.25
    assert fit.peak_kl == pytest.approx(d_star**2, rel=1e-9)
    assert fit.peak_gold == pytest.approx(g0 + alpha * d_star - beta * f(d_star), rel=1e-9)
    assert fit.peak_in_range is (d_star <= 3.0)
    assert fit.predict(2.5) == pytest.approx(gold[5], abs=1e-9)


def test_gao_fit_degenerate_inputs():
    assert fit_gao([0.0, 1.0, 2.0], [0.0, 1.0, 0.0]) is None  # fewer than 4 points
    assert fit_gao([1.0] * 5, [0.0, 1.0, 0.0, 1.0, 0.5]) is None  # one KL value: collinear features
    assert fit_gao([1.0] * 5, [0.0, 1.0, 0.0, 1.0, 0.5], gold_0=0.0) is None
    up = fit_gao([0.0, 1.0, 4.0, 9.0], [0.0, 1.0, 2.0, 3.0])  # gold = d: beta 0, no interior peak
    assert up.alpha == pytest.approx(1.0, abs=1e-9) and up.beta == pytest.approx(0.0, abs=1e-9) and up.peak_kl is None
    with pytest.raises(ValueError, match="form"):
        fit_gao([0.0] * 4, [0.0] * 4, "linear")


# ----------------------------------------------------------------------------- the summary section
def test_summary_section_of_a_hacked_run():
    proxy, gold, kl = hacked()
    sec = summarize(rows(proxy, gold, kl, every=4), smooth=1)
    assert sec["rounds"] == 20 and sec["keys"] == {"proxy": "reward/mean", "gold": "gold/mean", "kl": "kl/k1"}
    assert sec["start"] == {"step": 1, "proxy": 0.0, "gold": 0.0, "kl": 0.0}
    assert sec["gold_peak"] == {"step": 37, "proxy": 9.0, "gold": pytest.approx(1.8), "kl": 4.5}
    assert sec["end"]["step"] == 77
    assert sec["proxy_gain_after_peak"] == pytest.approx(10.0)
    assert sec["gold_loss_after_peak"] == pytest.approx(0.3 * 10)
    assert sec["warned"] and sec["warning"]["step"] == 65 and sec["warning"]["message"].startswith("reward_hacking:")
    assert sec["fit"]["form"] == "rl" and sec["fit"]["peak_kl"] is not None
    assert sec["fit"]["gold_0_fixed"] and sec["fit"]["gold_0"] == 0.0  # the first round is the reference's
    assert sec["thresholds"] == {"window": 10, "min_rounds": 6, "min_change": 0.05, "min_kl_rise": 0.05, "min_t": 3.0,
                                 "drop_sigmas": 4.0, "patience": 2}
    honest = summarize(rows(proxy, [0.1 * p for p in proxy], kl))
    assert not honest["warned"] and honest["warning"] is None and honest["gold_loss_after_peak"] == pytest.approx(0.0)
    assert summarize([{"step": 1, "loss": 1.0}]) is None
