"""Reward-model ensembles: the statistics by hand (mean, unbiased std, offsets, mean - k std),
calibration quantiles, the ensemble JSON, config checks, the CLI helpers that split data and read
responses, and the scorer on tiny random scalar-head models saved to folders."""

import json

import numpy as np
import pytest
import torch

from rlhflab.config_rl import ScorerConfig, _check_scorers
from rlhflab.errors import ConfigError, DataError
from rlhflab.models.scalar import load_scalar_model
from rlhflab.rewards import build_scorer
from rlhflab.rewards.base import Sample
from rlhflab.rewards.ensemble import (
    EnsembleScorer,
    calibrate,
    calibrate_threshold,
    ensemble_stats,
    penalized_reward,
    read_ensemble_file,
    spread_summary,
    write_ensemble_file,
)
from rlhflab.rewards.reward_model import RewardModelScorer
from rlhflab.testing import CHATML, tiny_model_dir, tiny_tokenizer

# scores (M=3 members, N=2 samples)
#   sample 0: [1, 3, 5] -> mean 3, deviations -2, 0, 2 -> var = (4 + 0 + 4) / (3 - 1) = 4 -> std 2
#   sample 1: [2, 2, 8] -> mean 4, deviations -2, -2, 4 -> var = (4 + 4 + 16) / 2 = 12 -> std sqrt(12)
S = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])


# --------------------------------------------------------------------------- the math


def test_mean_and_unbiased_std_by_hand():
    mean, std = ensemble_stats(S)
    torch.testing.assert_close(mean, torch.tensor([3.0, 4.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(std, torch.tensor([2.0, 12.0 ** 0.5]), atol=1e-6, rtol=0)


def test_two_members_std_is_gap_over_sqrt2():
    _, std = ensemble_stats(torch.tensor([[0.0, 1.0], [3.0, -1.0]]))
    torch.testing.assert_close(std, torch.tensor([3.0, 2.0]) / 2 ** 0.5, atol=1e-6, rtol=0)


def test_offsets_are_subtracted_per_member():
    # offsets [1, 1, 4]: sample 0 -> [0, 2, 1]: mean 1, var (1 + 1 + 0) / 2 = 1 -> std 1
    #                    sample 1 -> [1, 1, 4]: mean 2, var (1 + 1 + 4) / 2 = 3 -> std sqrt(3)
    mean, std = ensemble_stats(S, [1.0, 1.0, 4.0])
    torch.testing.assert_close(mean, torch.tensor([1.0, 2.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(std, torch.tensor([1.0, 3.0 ** 0.5]), atol=1e-6, rtol=0)
    # one common offset shifts the mean only
    mean2, std2 = ensemble_stats(S, [5.0, 5.0, 5.0])
    torch.testing.assert_close(mean2, torch.tensor([-2.0, -1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(std2, ensemble_stats(S)[1], atol=1e-6, rtol=0)


def test_penalized_reward_by_hand_and_k0_is_the_mean():
    mean, std = ensemble_stats(S)
    # k = 0.5: 3 - 0.5 * 2 = 2; 4 - 0.5 * sqrt(12) = 4 - sqrt(3)
    torch.testing.assert_close(penalized_reward(mean, std, 0.5), torch.tensor([2.0, 4.0 - 3.0 ** 0.5]), atol=1e-6, rtol=0)
    assert torch.equal(penalized_reward(mean, std, 0.0), mean)
    with pytest.raises(ValueError):
        penalized_reward(mean, std, -1.0)


def test_one_member_or_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match="at least 2 members"):
        ensemble_stats(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"\(M members, N samples\)"):
        ensemble_stats(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="offsets"):
        ensemble_stats(S, [1.0, 2.0])


def test_float64_input_keeps_its_precision():
    mean, std = ensemble_stats(S.double())
    assert mean.dtype == torch.float64 and std.dtype == torch.float64


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 1.0])
def test_threshold_is_the_linear_quantile(q):
    spreads = torch.arange(11, dtype=torch.float32)  # 0..10: position q * 10
    assert calibrate_threshold(spreads, q) == pytest.approx(10 * q, abs=1e-9)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(37, generator=g)
    assert calibrate_threshold(x, q) == pytest.approx(float(np.quantile(x.double().numpy(), q)), abs=1e-12)


def test_threshold_interpolates_between_order_statistics():
    # [4, 1, 3, 2] sorted [1, 2, 3, 4]; q 0.5 -> position 1.5 -> 2.5; q 0.95 -> 2.85 -> 3.85
    assert calibrate_threshold(torch.tensor([4.0, 1.0, 3.0, 2.0]), 0.5) == pytest.approx(2.5)
    assert calibrate_threshold(torch.tensor([4.0, 1.0, 3.0, 2.0]), 0.95) == pytest.approx(3.85)


@pytest.mark.parametrize("spreads,q", [([], 0.95), ([1.0], 0.0), ([1.0], 1.5), ([float("nan")], 0.9)])
def test_threshold_rejects_bad_input(spreads, q):
    with pytest.raises(ValueError):
        calibrate_threshold(torch.tensor(spreads), q)


def test_calibrate_centres_members_then_takes_the_quantile():
    # members [1, 2, 3] and [2, 3, 7]: offsets 2 and 4; centred [-1, 0, 1] and [-2, -1, 3]
    # spreads |gap| / sqrt(2): 1/sqrt2, 1/sqrt2, 2/sqrt2; median (q 0.5) = 1/sqrt2
    cal = calibrate(torch.tensor([[1.0, 2.0, 3.0], [2.0, 3.0, 7.0]]), quantile=0.5)
    assert cal["offsets"] == pytest.approx([2.0, 4.0])
    assert cal["threshold"] == pytest.approx(2 ** -0.5)
    assert cal["spread"]["n"] == 3 and cal["spread"]["max"] == pytest.approx(2 ** 0.5)
    assert cal["quantile"] == 0.5


def test_spread_summary():
    s = spread_summary(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert (s["n"], s["mean"], s["min"], s["max"], s["median"]) == (4, 2.5, 1.0, 4.0, 2.5)
    assert s["std"] == pytest.approx(1.25 ** 0.5)  # population std


# --------------------------------------------------------------------------- the scorer on tiny models


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three saved scalar models: the same tiny backbone, heads from seeds 0, 1, 2; the third with a
    tokenizer whose chat template adds BOS (so members render differently)."""
    base = tiny_model_dir(tmp_path_factory.mktemp("base"), tiny_tokenizer(), seed=1)
    out = []
    for i in range(3):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            model = load_scalar_model(base)
        folder = tmp_path_factory.mktemp(f"rm{i}") / "rm"
        model.save_pretrained(folder)
        tiny_tokenizer(CHATML, bos_in_template=(i == 2)).save_pretrained(folder)
        out.append(folder)
    return out


def samples():
    texts = ["yes", "a much longer completion here", "mid size one", "z" * 30, "ok"]
    return [Sample([{"role": "user", "content": f"q{i}"}], t) for i, t in enumerate(texts)]


def test_scorer_matches_its_members_and_the_formula(members):
    s = samples()
    each = torch.stack([RewardModelScorer(p, batch_size=2).score(s).values for p in members])  # (3, 5)
    assert RewardModelScorer(members[2]).encode(s[0])[0] == 0  # BOS from the third member's template
    assert RewardModelScorer(members[0]).encode(s[0])[0] != 0
    scorer = EnsembleScorer(members, batch_size=3, uncertainty_coef=0.7)
    torch.testing.assert_close(scorer.member_scores(s), each, atol=1e-5, rtol=0)
    got = scorer.score(s)
    mean, std = each.mean(0), each.std(0)
    torch.testing.assert_close(got.parts["mean"], mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.parts["std"], std, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.values, mean - 0.7 * std, atol=1e-5, rtol=0)
    assert set(got.parts) == {"mean", "std"}  # no threshold: no flag
    assert float(std.min()) > 0  # different heads disagree, so the test can see the std


def test_ood_flag_is_std_strictly_above_the_threshold(members):
    s = samples()
    std = EnsembleScorer(members).score(s).parts["std"]
    cut = float(std.sort().values[2])  # the third smallest spread: exactly at the threshold is not flagged
    flags = EnsembleScorer(members, ood_threshold=cut).score(s).parts["ood"]
    assert flags.tolist() == (std > cut).float().tolist() and flags.sum() == 2


def test_offsets_from_an_ensemble_file(members, tmp_path):
    s = samples()
    raw = EnsembleScorer(members).member_scores(s)
    path = tmp_path / "ens" / "ensemble.json"
    write_ensemble_file(path, {"members": [str(m) for m in members],
                               "calibration": {"offsets": [0.5, -1.0, 2.0], "threshold": 0.1}})
    scorer = EnsembleScorer.from_file(path, uncertainty_coef=1.0)
    got = scorer.score(s)
    mean, std = ensemble_stats(raw, [0.5, -1.0, 2.0])
    torch.testing.assert_close(got.values, mean - std, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.parts["ood"], (std > 0.1).float())
    assert EnsembleScorer.from_file(path, ood_threshold=100.0).ood_threshold == 100.0  # an explicit number wins


def test_build_scorer_with_an_ensemble_config(members):
    cfg = ScorerConfig(type="ensemble", paths=tuple(map(str, members)), uncertainty_coef=0.5, ood_threshold=0.0)
    _check_scorers("rewards", (cfg,), True)
    ws = build_scorer((cfg,))
    got = ws.score(samples())
    direct = EnsembleScorer(members, uncertainty_coef=0.5, ood_threshold=0.0).score(samples())
    torch.testing.assert_close(got.values, direct.values, atol=1e-6, rtol=0)
    assert {"ensemble", "ensemble/mean", "ensemble/std", "ensemble/ood"} <= set(got.parts)
    ws.close()


def test_one_member_scorer_is_an_error(members):
    with pytest.raises(ConfigError, match="at least 2 member"):
        EnsembleScorer(members[:1])


# --------------------------------------------------------------------------- config and file checks


def check(**kw):
    _check_scorers("rewards", (ScorerConfig(**kw),), True)


def test_config_checks(members, tmp_path):
    paths = tuple(map(str, members))
    with pytest.raises(ConfigError, match="needs `paths`.*or.*`calibration`"):
        check(type="ensemble")
    with pytest.raises(ConfigError, match="exactly one of them"):
        check(type="ensemble", paths=paths, calibration="x.json")
    with pytest.raises(ConfigError, match=r"rewards\[0\].paths: an ensemble needs at least 2"):
        check(type="ensemble", paths=paths[:1])
    with pytest.raises(ConfigError, match="member model folder not found: nope"):
        check(type="ensemble", paths=(paths[0], "nope"))
    with pytest.raises(ConfigError, match="uncertainty_coef >= 0"):
        check(type="ensemble", paths=paths, uncertainty_coef=-0.1)
    with pytest.raises(ConfigError, match="ood_threshold >= 0"):
        check(type="ensemble", paths=paths, ood_threshold=-1.0)
    with pytest.raises(ConfigError, match=r"rewards\[0\].calibration: ensemble file not found"):
        check(type="ensemble", calibration=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="apply to type ensemble only"):
        check(type="reward_model", path=paths[0], uncertainty_coef=1.0)
    check(type="ensemble", paths=paths, uncertainty_coef=1.0)


def test_ensemble_file_checks(members, tmp_path):
    p = tmp_path / "e.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="ensemble file .*: not valid JSON"):
        read_ensemble_file(p)
    p.write_text(json.dumps({"members": "a"}))
    with pytest.raises(ConfigError, match="`members`, a list"):
        read_ensemble_file(p)
    rel = [str(m.relative_to(tmp_path.parent)) for m in members]  # relative to the file's folder
    (tmp_path.parent / "e.json").write_text(json.dumps({"members": rel}))
    assert read_ensemble_file(tmp_path.parent / "e.json").members == members
    for cal, msg in (({"threshold": -1}, "threshold"), ({"threshold": True}, "threshold"),
                     ({"offsets": [1.0]}, "one finite number per member")):
        p.write_text(json.dumps({"members": [str(m) for m in members], "calibration": cal}))
        with pytest.raises(ConfigError, match=msg):
            read_ensemble_file(p)


# --------------------------------------------------------------------------- CLI helpers (no models)


def test_member_rows_bootstrap_and_split():
    from rlhflab.ensemble_cli import heldout_split, member_rows

    rows = [{"i": i} for i in range(10)]
    assert member_rows(rows, 3, "seed", 0) is None
    boot = member_rows(rows, 3, "bootstrap", 5)
    assert [len(b) for b in boot] == [10, 10, 10]
    assert boot == member_rows(rows, 3, "bootstrap", 5)  # seeded
    assert boot[0] != boot[1] and all(r in rows for b in boot for r in b)
    assert any(len({r["i"] for r in b}) < 10 for b in boot)  # with replacement: repeats
    split = member_rows(rows, 3, "split", 0)
    assert sorted(len(s) for s in split) == [3, 3, 4]
    assert sorted(r["i"] for s in split for r in s) == list(range(10))  # disjoint and complete
    train, held = heldout_split(rows, 0.2, 0)
    assert len(held) == 2 and sorted(r["i"] for r in train + held) == list(range(10))
    with pytest.raises(ConfigError):
        heldout_split(rows[:1], 0.5, 0)


def test_read_responses(tmp_path):
    from rlhflab.ensemble_cli import read_responses

    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi", "chosen": "good", "rejected": "bad"}) + "\n")
    r = read_responses(str(pairs))
    assert [s.completion for s in r.samples] == ["good", "bad"] and r.where == [(1, "chosen"), (1, "rejected")]
    assert r.samples[0].prompt == [{"role": "user", "content": "hi"}]
    pc = tmp_path / "c.jsonl"
    pc.write_text(json.dumps({"prompt": "hi", "completion": "there"}) + "\n")
    assert [s.completion for s in read_responses(str(pc)).samples] == ["there"]
    prompts = tmp_path / "q.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(DataError, match="prompts only"):
        read_responses(str(prompts))
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "completion": "x"}) + "\n" + json.dumps({"prompt": "hi", "completion": 3}) + "\n")
    with pytest.raises(DataError, match="row 2.*completion"):
        read_responses(str(bad))
