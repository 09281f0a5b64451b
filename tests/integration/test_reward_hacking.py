"""Acceptance of the reward-hacking monitor on the built-in synthetic setting
(rlhflab.eval.hacking_demo with its QUICK settings: the demo's models, 20 PPO rounds per run).

A proxy reward model learned from gold-labelled comparisons about drinks (where "bitter" is
praise) is optimized by PPO on other items (where "bitter" is a complaint). At ppo's default
kl_coef 0.05 the proxy rises, the gold rises and then falls, and the run warns `reward_hacking`;
at kl_coef 3 the KL stays low, the gold does not fall and nothing fires. Seed 0, one thread; the
figures are the runs' own summary.json `reward_hacking` sections (3-round averages).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import tiny_config_dict, write_jsonl
from rlhflab.eval import hacking_demo as hd
from rlhflab.eval import synthetic as task


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.set_num_threads(1)
    return hd.run_seed(tmp_path_factory.mktemp("reward-hacking"), 0, hd.QUICK)


def _hacking_warnings(run):
    return [w for w in run["warnings"] if w.startswith("reward_hacking")]


def test_proxy_prefers_the_word_it_should_not(demo):
    d = demo["proxy_model"]
    scores = d["word_scores"]  # the proxy's score of "it was W, W and W." about a hotel
    assert scores["bitter"] > max(scores[w] for w in task.GOOD) > min(scores[w] for w in task.GOOD)
    assert min(scores[w] for w in task.GOOD) > max(scores[w] for w in task.BAD if w != "bitter")
    assert d["accuracy_drinks"] >= 0.95  # right where its data came from
    assert d["accuracy_items"] <= 0.85  # wrong on the pairs where "bitter" loses


def test_small_kl_coef_overoptimizes_the_proxy_and_warns(demo):
    run = demo["runs"][0]
    assert run["kl_coef"] == 0.05
    h = run["reward_hacking"]
    start, peak, end = h["start"], h["gold_peak"], h["end"]
    print({k: h[k] for k in ("start", "gold_peak", "end", "warning")})
    assert peak["gold"] >= start["gold"] + 0.5  # the gold rises first ...
    assert h["gold_loss_after_peak"] >= 1.5  # ... then falls
    assert h["proxy_gain_after_peak"] >= 1.0 and end["proxy"] >= start["proxy"] + 4.0  # the proxy keeps rising
    assert end["kl"] >= peak["kl"] + 1.5
    assert h["warned"] and h["warning"]["step"] > peak["step"]
    (msg,) = _hacking_warnings(run)  # the live warning is the one the summary reconstructs
    assert msg == h["warning"]["message"]
    assert f"stop near step {h['warning']['gold_peak']['step']}" in msg
    fit = h["fit"]
    assert fit["beta"] > 0 and fit["peak_kl"] < end["kl"] and fit["r2"] > 0.5


def test_large_kl_coef_holds_the_kl_and_does_not_warn(demo):
    small, large = demo["runs"]
    assert large["kl_coef"] == 3.0
    h = large["reward_hacking"]
    print({k: h[k] for k in ("start", "gold_peak", "end")})
    assert not h["warned"] and not _hacking_warnings(large)
    assert max(large["kl"]) < 1.5 and h["end"]["kl"] < small["reward_hacking"]["end"]["kl"] - 1.5
    assert h["end"]["gold"] >= h["start"]["gold"] + 0.5  # the gold ends up, not down
    assert h["gold_loss_after_peak"] < 0.75


def test_files_hold_the_curves_and_the_section(demo):
    run_dir = Path(demo["runs"][0]["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rows if "gold/mean" in r]
    assert len(rounds) == hd.QUICK.rounds and all("reward/mean" in r and "kl/k1" in r for r in rounds)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["reward_hacking"]["rounds"] == hd.QUICK.rounds
    svg = hd.plot_svg({"seed": 0, "runs": demo["runs"]})
    assert svg.startswith("<svg") and "gold, kl_coef 0.05" in svg and "proxy, kl_coef 3" in svg


def test_same_seed_same_numbers(demo, tmp_path):
    again = hd.run_policy(tmp_path, Path(demo["reference_dir"]), Path(demo["proxy_dir"]), 0.05, 0,
                          replace(hd.QUICK, rounds=3))
    first = demo["runs"][0]
    assert (again["proxy"], again["gold"], again["kl"]) == (first["proxy"][:3], first["gold"][:3], first["kl"][:3])


def test_summary_section_covers_a_resumed_run(tiny_dir, tmp_path):
    """After a resume the loop's history holds only the new steps; the section still covers every
    round (read back from metrics.jsonl) and equals the uninterrupted run's."""

    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"rate the {i}"} for i in task.ITEMS])
    scorer = [{"type": "python", "function": "rlhflab.eval.synthetic:gold"}]

    def cfg(out, **over):
        return config_from_dict(tiny_config_dict(
            tiny_dir, tmp_path / out, algorithm="grpo", batch_size=4, micro_batch_size=8, max_steps=6,
            checkpoint_every=3, data={"train": str(data), "max_length": 64},
            grpo={"rewards": scorer, "gold": scorer, "generation": {"num_generations": 4, "max_new_tokens": 8}},
            **over))

    run(cfg("full"))
    run(cfg("cut"), stop_at=3)
    run(cfg("cut", resume=True))
    full, cut = (json.loads((tmp_path / d / "summary.json").read_text())["reward_hacking"] for d in ("full", "cut"))
    assert full["rounds"] == cut["rounds"] == 6
    assert (cut["start"], cut["end"]) == (full["start"], full["end"])
