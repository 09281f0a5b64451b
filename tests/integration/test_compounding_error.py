"""The compounding-error reproduction (examples/compounding_error, loaded here by path).

The task's judgment and statistics are checked against hand-computed values. The end-to-end
test runs a much reduced pipeline (BC 30 steps, reward model 12, PPO 8, 16 walks per lane, seed 0;
about 15 s on one thread) and asserts only its mechanics and determinism: at that size the
policies are far from trained, so the qualitative claim (BC's error grows faster with the horizon
than RLHF's) is NOT asserted here; the full run and its numbers are in docs/reproductions.md.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from rlhflab.rewards.python_fn import import_file

torch.set_num_threads(1)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compounding_error" / "run.py"
ce = import_file(EXAMPLE, "compounding_error_example")
T = ce.T


# ----------------------------------------------------------------------------- the task
def test_prompts_name_a_lane_and_a_start():
    assert T.prompt_for("m", "n") == "klmno n"
    assert T.parse_prompt("klmno n") == ("m", "n")
    for bad in ("klmno", "kmnop n", "klmno p", "klmno nn"):
        with pytest.raises(ValueError, match="not a lane prompt"):
            T.parse_prompt(bad)


def test_judgment_counts_off_lane_jumps_and_breaks():
    # lane klmno (centre m): k..o in, j and p out; a step of two letters is off target even in the lane
    assert T.step_errors("m", "m", "nop", 3) == [0, 0, 1]
    assert T.step_errors("m", "o", "ppoj", 4) == [1, 1, 0, 1]  # back to o is fine; j is out and a jump
    assert T.step_errors("m", "k", "mm", 2) == [1, 0]  # k -> m skips l
    # text that stops being letters, or stops, makes every remaining step off target
    assert T.step_errors("m", "m", "mn m", 6) == [0, 0, 1, 1, 1, 1]
    assert T.step_errors("m", "m", "mn", 5) == [0, 0, 1, 1, 1]
    assert T.off_target("m", "n", "op" + "o" * 30) == 1
    samples = [_sample("klmno n", "mmmm" + "n" * 28), _sample("klmno k", "")]
    assert T.gold(samples) == [0.0, -float(T.H_MAX)]


def _sample(prompt: str, completion: str):
    from rlhflab.rewards.base import Sample

    return Sample([{"role": "user", "content": prompt}], completion)


def test_expert_never_leaves_the_lane_but_perturbed_walks_do():
    rng = random.Random(0)
    demos = [(c, s, T.expert_walk(c, s, rng)) for c in T.CENTRES for s in T.lane_of(c) for _ in range(20)]
    assert all(len(w) == T.DEMO_STEPS and T.off_target(c, s, w, T.DEMO_STEPS) == 0 for c, s, w in demos)
    # the starts follow the stationary law 1:2:2:2:1 (8000 draws: the edge share is 1/8 +- 0.011 at 3 sd)
    starts = [T.random_start("m", rng) for _ in range(8000)]
    assert starts.count("k") / 8000 == pytest.approx(1 / 8, abs=0.011)
    assert T.perturbed_walk("m", "m", 0.5, []) == T.perturbed_walk("m", "m", 0.5, [])  # a seed is one walk
    assert T.off_target("m", "m", T.perturbed_walk("m", "m", 0.5, [])) == 0  # no free stretch: the expert
    free = [T.off_target("m", "m", T.perturbed_walk("m", "m", s / 100, [(0, T.H_MAX)])) for s in range(100)]
    assert sum(free) > 0


def test_comparisons_prefer_fewer_off_target_steps():
    walks = [("m", "m", "mmmm"), ("m", "m", "mnopq"), ("n", "n", "x")]
    rows = T.comparisons(200, walks, random.Random(0))
    assert len(rows) >= 200
    for r in rows:
        centre, start = T.parse_prompt(r["prompt"])
        assert T.off_target(centre, start, r["chosen"]) < T.off_target(centre, start, r["rejected"])


# ----------------------------------------------------------------------------- statistics
def test_statistics_on_hand_computed_errors():
    errors = [[0, 1, 1, 0], [0, 0, 0, 1]]
    assert T.error_curve(errors) == [0.0, 0.5, 1.0, 1.5]
    assert T.per_step_rate(errors) == [0.0, 0.5, 0.5, 0.5]
    tr = T.transitions(errors)
    # from on: (0->1), (1->0 no), (0->0), (0->0), (0->1): slips 2 of 4 on-steps; from off: 1->1, 1->0
    assert tr["slip"] == pytest.approx(2 / 4) and tr["stay_off"] == pytest.approx(1 / 2)
    assert tr["excursion"] == pytest.approx(1.5) and tr["excursions"] == 2  # runs of 2 and 1
    assert T.move_fraction(["aab", "bbb"]) == pytest.approx(1 / 4)
    hs = [4, 8, 16, 32]
    assert T.fit_exponent(hs, [0.3 * h ** 1.5 for h in hs]) == pytest.approx(1.5, abs=1e-12)
    assert T.fit_exponent(hs, [0.0, 0.0, 0.0, 1.0]) != T.fit_exponent(hs, [0.0, 0.0, 0.0, 1.0])  # nan


# ----------------------------------------------------------------------------- end to end, reduced
def test_reduced_pipeline_mechanics_and_determinism(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["--seeds", "0", "--bc-steps", "30", "--rm-steps", "12", "--rm-pairs", "400", "--ppo-steps", "8",
            "--samples", "16", "--probe", "8", "--no-bc-long", "--work", str(tmp_path / "work"), "--out", str(out)]
    res = ce.main(argv)
    seed = res["per_seed"][0]
    assert set(seed["policies"]) == {"BC", "RLHF"}
    for name, pol in seed["policies"].items():
        curve = pol["curve"]
        assert len(curve) == T.H_MAX and all(b >= a for a, b in zip(curve, curve[1:])), name
        assert curve[-1] == pytest.approx(sum(pol["per_step"]))
        assert 0 <= pol["slip"] <= 1 and 0 <= pol["probe"]["back_next_step"] <= 1
    assert len(seed["rollouts"]["gold"]) == 8 // (ce.PPO["epochs"] * ce.PPO["minibatches"])
    assert abs(seed["rollouts"]["kl"][0]) < 1e-4  # the first rollout is sampled from the BC model itself
    assert 0.0 <= seed["reward_model"]["eval_accuracy"] <= 1.0
    charts = json.loads((out / "curves.json").read_text())
    assert [len(c["series"]) for c in charts[:2]] == [2, 2]
    assert all(len(s["x"]) == len(s["y"]) for c in charts for s in c["series"])
    assert (out / "compounding_error.svg").read_text().startswith("<svg")
    assert "compounding_error" in (out / "config.yaml").read_text()  # what makes OUT a folder `rlhflab report` reads
    assert json.loads((out / "results.json").read_text())["claim"]["per_seed"][0]["seed"] == 0
    # same seed, same model -> the same walks and the same numbers
    bc = tmp_path / "work" / "seed-0" / "bc-30" / "final"
    again = ce.evaluate(bc, 300, 16)
    assert again["curve"] == seed["policies"]["BC"]["curve"]
    assert not math.isnan(again["moves"])
