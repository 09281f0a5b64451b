"""Acceptance: ppo, safe_ppo and online_dpo move a tiny model in the right direction on a task with
a known gold reward (fast versions of examples/online_toys/run.py, loaded here by path).

The task (examples/gold_preference): `it was W1, W2 and W3.` with a good or bad word per slot,
gold = #good - #bad, -4 for a broken template; a tiny Llama SFT'd on 50/50 responses is the
reference (mean gold ~0). Every figure below is from the run's own per-rollout metrics: the first
rollout is sampled from the reference before any update, "last" averages the last 5 rollouts.
Seed 0, one thread; each test takes a few seconds on top of the shared reference (docs/online_results.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from rlhflab.rewards.python_fn import import_file

torch.set_num_threads(1)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "online_toys" / "run.py"


ot = import_file(EXAMPLE, "online_toys_example")
SAMPLES = 64
"""Held-out samples per model (8 prompts x 8)."""


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    torch.set_num_threads(1)
    return ot.prepare_task(tmp_path_factory.mktemp("online-toys"), seed=0, samples=SAMPLES)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch, tmp_path):
    torch.set_num_threads(1)
    monkeypatch.setenv("RLHFLAB_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- the scorers
def test_scorers_count_the_forbidden_word_and_add_its_bonus():
    sc = ot.sc
    assert sc.FORBIDDEN in ot.gp.GOOD
    assert sc.forbidden_count("it was superb, kind and superb.") == 2
    assert sc.forbidden_count("superbly superb") == 1  # whole words only
    assert sc.safe_reward_of("it was superb, kind and superb.") == 3 + 2 * sc.BONUS
    assert sc.safe_reward_of("it was superb, rude and awful.") == -1 + sc.BONUS
    assert sc.safe_reward_of("superb superb superb") == ot.gp.MALFORMED  # no bonus outside the template
    samples = [_sample(t) for t in ("it was great, kind and rude.", "x")]
    assert sc.gold(samples) == [1.0, float(ot.gp.MALFORMED)]
    assert sc.cost([_sample("it was superb, superb and rude.")]) == [2.0]


def _sample(text: str):
    from rlhflab.rewards.base import Sample

    return Sample([{"role": "user", "content": "rate the film"}], text)


# ----------------------------------------------------------------------------- the claims, fast
def test_ppo_raises_gold_with_bounded_kl_lower_for_larger_kl_coef(task):
    res = ot.ppo_claim(task, steps=64, kl_coefs=(0.2, 1.0), samples=SAMPLES)
    low, high = res["runs"]
    for r in res["runs"]:
        print(f"kl_coef {r['kl_coef']}: gold {r['gold_first']:+.2f} -> {r['gold_last']:+.2f}, kl/k1 last "
              f"{r['kl_last']:.2f} max {r['kl_max']:.2f}, held-out {r['heldout_gold_ref']:+.2f} -> {r['heldout_gold']:+.2f}")
        assert r["rollouts"] == 16
        assert abs(r["kl_curve"][0]) < 1e-4  # the first rollout is sampled from the reference itself
        assert all(math.isfinite(k) for k in r["kl_curve"]) and r["kl_max"] < ot.KL_BOUND, r["kl_curve"]
        assert r["gold_last"] >= r["gold_first"] + 1.0, r["gold_curve"]
        assert r["heldout_gold"] >= r["heldout_gold_ref"] + 0.75, r
    assert high["kl_last"] <= low["kl_last"] - 0.3, (low["kl_curve"], high["kl_curve"])


def test_safe_ppo_keeps_cost_under_threshold_where_ppo_violates_it(task):
    d = ot.SAFE["cost_threshold"]
    res = ot.safe_claim(task, steps=64, samples=SAMPLES)
    s, p = res["safe_ppo"], res["ppo"]
    print(f"safe_ppo: reward {s['reward_first']:+.2f} -> {s['reward_last']:+.2f}, cost {s['cost_first']:.2f} -> "
          f"{s['cost_last']:.2f}; ppo: cost {p['cost_first']:.2f} -> {p['cost_last']:.2f}; lagrange {s['lagrange']}")
    assert s["cost_first"] > d  # the constraint binds at the start (same first rollout for both runs)
    assert s["cost_first"] == p["cost_first"]
    assert s["cost_last"] <= d - 0.05, s["cost_curve"]
    assert s["reward_last"] >= s["reward_first"] + 1.0, s["reward_curve"]
    assert p["cost_last"] >= 4 * d, p["cost_curve"]  # plain ppo takes the forbidden bonus
    assert p["reward_last"] > s["reward_last"]  # ... and so earns more of the conflicting reward
    # the logged multiplier follows log lambda += lagrange_lr * lambda * (cost/mean - d) rollout by rollout,
    # with log lambda kept in [-20, 10]
    lam, lr = [ot.SAFE["lagrange_init"]] + s["lagrange"], ot.SAFE["lagrange_lr"]
    for prev, now, c in zip(lam, lam[1:], s["cost_curve"]):
        assert now == pytest.approx(math.exp(min(max(math.log(prev) + lr * prev * (c - d), -20.0), 10.0)), rel=1e-9)
    assert max(lam) > lam[0] + 0.3 and lam[-1] < max(lam), lam  # up while the cost is over d, down after
    assert s["heldout_cost"] <= d < p["heldout_cost"]


def test_online_dpo_with_a_noisy_gold_raises_gold(task):
    res = ot.online_dpo_claim(task, steps=24, samples=SAMPLES)
    print({k: v for k, v in res.items() if not k.endswith("curve")})
    assert res["rollouts"] == 24
    assert res["gold_last"] >= res["gold_first"] + 1.0, res["gold_curve"]
    assert res["heldout_gold"] >= res["heldout_gold_ref"] + 1.0, res
    assert res["heldout_well_formed"] >= 0.9, res
    assert res["pairs_mean"] > 8  # most prompts had a best and a worst sample that differ
