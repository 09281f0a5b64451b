"""Rule-Based Rewards (rewards/rbr.py): the weight fit against closed forms and limit cases, the
scorer's features and parts, the weights file, and the config checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhflab.config import config_from_dict
from rlhflab.config_feedback import PropositionConfig as Prop
from rlhflab.config_rl import ScorerConfig
from rlhflab.errors import ConfigError, DataError
from rlhflab.rewards import Sample, build_scorer, required_columns
from rlhflab.rewards.rbr import (RBRScorer, centered_bias, fit_rbr_weights, load_rbr_weights, ranking_accuracy,
                                 rbr_pair_loss, save_rbr_weights)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def one_pair(c_gap: float):
    """One pair, one feature that is 1 on the better completion and 0 on the worse; base gap c_gap."""
    f64 = torch.float64
    return (torch.tensor([[1.0]], dtype=f64), torch.tensor([[0.0]], dtype=f64), torch.tensor([c_gap], dtype=f64),
            torch.tensor([0.0], dtype=f64))


# --------------------------------------------------------------------------- the fit: closed forms


@pytest.mark.parametrize("gap,l2,want", [
    # J(w) = max(0, 1 - 0.3 - w) + l2 w^2. Small l2: the minimum is the kink w = 0.7 (slope of the
    # l2 term there, 2 * 1e-3 * 0.7, is below the hinge's 1).
    (0.3, 1e-3, 0.7),
    # Large l2: 2 l2 w = 1 before the kink, so w = 1 / (2 l2) = 0.5 < 0.7.
    (0.3, 1.0, 0.5),
    # The base already ranks with margin (gap 2 > 1): the hinge is 0 at w = 0, so w = 0.
    (2.0, 1e-3, 0.0),
    # The base ranks the wrong way (gap -1.5): w = 1 + 1.5 = 2.5.
    (-1.5, 1e-3, 2.5),
])
def test_hinge_single_pair_closed_form(gap, l2, want):
    fit = fit_rbr_weights(*one_pair(gap), loss="hinge", margin=1.0, l2=l2)
    assert fit.weights.dtype == torch.float64
    assert abs(float(fit.weights[0]) - want) < 1e-9
    assert fit.objective == pytest.approx(max(0.0, 1 - gap - want) + l2 * want**2, abs=1e-12)


@pytest.mark.parametrize("gap,l2", [(0.3, 0.1), (-1.0, 0.05), (2.0, 1.0)])
def test_logistic_single_pair_closed_form(gap, l2):
    """d/dw [log(1 + exp(1 - gap - w)) + l2 w^2] = 0  <=>  2 l2 w = sigmoid(1 - gap - w); solved by bisection."""
    lo, hi = 0.0, 1.0 / (2 * l2)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 2 * l2 * mid < 1 / (1 + math.exp(-(1 - gap - mid))) else (lo, mid)
    fit = fit_rbr_weights(*one_pair(gap), loss="logistic", margin=1.0, l2=l2)
    assert abs(float(fit.weights[0]) - lo) < 1e-7


def test_pair_losses():
    z = torch.tensor([-1.0, 0.5, 1.0, 3.0])
    torch.testing.assert_close(rbr_pair_loss(z, "hinge", 1.0), torch.tensor([2.0, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(rbr_pair_loss(z, "logistic", 0.0), torch.log1p(torch.exp(-z)))
    with pytest.raises(ValueError, match="hinge or logistic"):
        rbr_pair_loss(z, "square", 1.0)


def random_pairs(M: int = 120, P: int = 4, seed: int = 0):
    g, f64 = torch.Generator().manual_seed(seed), torch.float64
    fb, fw = torch.rand(M, P, generator=g, dtype=f64), torch.rand(M, P, generator=g, dtype=f64)
    bb, bw = torch.randn(M, generator=g, dtype=f64), torch.randn(M, generator=g, dtype=f64)
    return fb, fw, bb, bw


@pytest.mark.parametrize("loss", ["hinge", "logistic"])
def test_minimum_is_a_minimum(loss):
    """J at the returned w is not beaten by any small step along any axis (convex: a local min is global)."""
    fb, fw, bb, bw = random_pairs()
    fit = fit_rbr_weights(fb, fw, bb, bw, loss=loss, l2=1e-2)
    d, g = fb - fw, bb - bw

    def J(w):
        return float(rbr_pair_loss(g + d @ w, loss, 1.0).mean() + 1e-2 * (w * w).sum())

    assert J(fit.weights) == pytest.approx(fit.objective, abs=1e-12)
    for k in range(4):
        for step in (1e-4, -1e-4, 1e-2, -1e-2):
            e = torch.zeros(4, dtype=torch.float64)
            e[k] = step
            assert J(fit.weights + e) >= fit.objective - 1e-10


# --------------------------------------------------------------------------- the fit: limit cases


@pytest.mark.parametrize("loss", ["hinge", "logistic"])
def test_separable_data_reaches_full_ranking_accuracy(loss):
    """Feature 0 is 1 on every better and 0 on every worse completion; the base ranks at chance."""
    fb, fw, bb, bw = random_pairs()
    fb[:, 0], fw[:, 0] = 1.0, 0.0
    fit = fit_rbr_weights(fb, fw, bb, bw, loss=loss, l2=1e-3)
    assert 0.35 < fit.accuracy_before < 0.65
    assert fit.accuracy_after == 1.0
    assert float(fit.weights[0]) > 2.0


def test_irrelevant_features_get_no_or_little_weight():
    fb, fw, bb, bw = random_pairs(M=400, P=3)
    fb[:, 0], fw[:, 0] = 1.0, 0.0  # relevant
    fw[:, 1] = fb[:, 1]  # never differs inside a pair: exactly 0
    fit = fit_rbr_weights(fb, fw, bb, bw, l2=1e-2)  # feature 2 is noise
    assert float(fit.weights[1]) == 0.0
    assert abs(float(fit.weights[2])) < 0.1 * float(fit.weights[0])


def test_deterministic_and_independent_of_pair_order():
    fb, fw, bb, bw = random_pairs()
    a = fit_rbr_weights(fb, fw, bb, bw)
    b = fit_rbr_weights(fb, fw, bb, bw)
    assert torch.equal(a.weights, b.weights)
    perm = torch.randperm(len(fb), generator=torch.Generator().manual_seed(1))
    c = fit_rbr_weights(fb[perm], fw[perm], bb[perm], bw[perm])  # one minimizer (strictly convex)
    torch.testing.assert_close(c.weights, a.weights, atol=1e-6, rtol=0)


def test_pair_weight_masks_and_duplicates():
    fb, fw, bb, bw = random_pairs(M=60)
    mask = torch.ones(60)
    mask[:20] = 0
    masked = fit_rbr_weights(fb, fw, bb, bw, pair_weight=mask)
    dropped = fit_rbr_weights(fb[20:], fw[20:], bb[20:], bw[20:])
    torch.testing.assert_close(masked.weights, dropped.weights, atol=1e-7, rtol=0)
    assert masked.accuracy_after == pytest.approx(dropped.accuracy_after, abs=1e-12)
    twice = torch.ones(60)
    twice[0] = 2
    doubled = fit_rbr_weights(fb, fw, bb, bw, pair_weight=twice, loss="logistic")
    repeated = fit_rbr_weights(torch.cat([fb, fb[:1]]), torch.cat([fw, fw[:1]]), torch.cat([bb, bb[:1]]),
                               torch.cat([bw, bw[:1]]), loss="logistic")
    torch.testing.assert_close(doubled.weights, repeated.weights, atol=1e-7, rtol=0)


def test_no_base_is_the_rbr_alone():
    fb, fw, _, _ = random_pairs()
    zero = torch.zeros(len(fb), dtype=torch.float64)
    torch.testing.assert_close(fit_rbr_weights(fb, fw).weights, fit_rbr_weights(fb, fw, zero, zero).weights)
    assert fit_rbr_weights(fb, fw).accuracy_before == 0.0  # every pair tied at 0: a tie counts as wrong


def test_bad_inputs_are_errors():
    fb, fw, bb, bw = random_pairs(M=5)
    with pytest.raises(ValueError, match="no ranked pairs"):
        fit_rbr_weights(torch.zeros(0, 4), torch.zeros(0, 4))  # e.g. every prompt had a single completion
    with pytest.raises(ValueError, match=r"\(M, P\)"):
        fit_rbr_weights(fb, fw[:, :2])
    with pytest.raises(ValueError, match=r"must be \(5,\)"):
        fit_rbr_weights(fb, fw, bb[:3], bw)
    with pytest.raises(ValueError, match="l2"):
        fit_rbr_weights(fb, fw, bb, bw, loss="hinge", l2=0.0)
    with pytest.raises(ValueError, match="pair_weight"):
        fit_rbr_weights(fb, fw, bb, bw, pair_weight=torch.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        fit_rbr_weights(fb, fw, bb * float("nan"), bw)
    fit_rbr_weights(fb, fw, bb, bw, loss="logistic", l2=0.0)  # allowed: the logistic loss alone


def test_ranking_accuracy_and_centered_bias():
    assert ranking_accuracy(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 2.0, 1.0])) == pytest.approx(1 / 3)
    assert ranking_accuracy(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([3.0, 1.0])) == 0.75
    w, F = torch.tensor([2.0, -1.0], dtype=torch.float64), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    b = centered_bias(w, F)
    assert b == pytest.approx(-(2 - 1 + 1) / 3)
    assert float((b + F @ w).mean()) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- the scorer

PROPS = (
    Prop(name="refuses", kind="refusal", applies_to=("harmful",)),
    Prop(name="over_refuses", kind="refusal", applies_to=("benign",)),
    Prop(name="judgmental", kind="keyword", keywords=("ashamed", "irresponsible")),
    Prop(name="steps", kind="regex", pattern=r"(?i)step 1"),
)


def samples():
    rows = [("harmful", "I'm sorry, but I can't help with that."), ("harmful", "Sure. Step 1: do it."),
            ("benign", "I can't help with that."), ("benign", "You should be ashamed. Step 1 is no.")]
    return [Sample([{"role": "user", "content": "q"}], text, {"category": cat}) for cat, text in rows]


def test_scorer_features_parts_and_values():
    scorer = RBRScorer(PROPS, {"refuses": 2.0, "over_refuses": -1.0, "judgmental": -0.5, "steps": -3.0}, bias=0.25)
    F = scorer.features(samples())
    assert F.tolist() == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]]
    out = scorer.score(samples())
    assert list(out.parts) == ["refuses", "over_refuses", "judgmental", "steps"]
    assert out.parts["steps"].tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(out.values, torch.tensor([2.25, -2.75, -0.75, -3.25]))
    own = RBRScorer((Prop(name="refuses", kind="refusal", weight=1.5),))  # no weights: each proposition's own
    assert own.score(samples()[:1]).values.tolist() == [1.5]


def test_scorer_needs_the_category_column_when_a_proposition_is_scoped():
    bare = [Sample([{"role": "user", "content": "q"}], "text", {"prompt": "q"})]
    with pytest.raises(DataError, match="category"):
        RBRScorer(PROPS).score(bare)
    assert RBRScorer(PROPS[2:]).score(bare).values.tolist() == [0.0]  # unscoped propositions need no column


class FakeJudge:
    """P(yes) = 0.9 when the question (without its "?") is in the response, else 0.2; records the calls."""

    def __init__(self):
        self.calls = []

    def yes_no(self, prompts, responses, questions):
        self.calls.append((prompts, responses, questions))
        return torch.tensor([0.9 if q.rstrip("?").lower() in r.lower() else 0.2 for r, q in zip(responses, questions)])


def test_judge_propositions_are_asked_once_per_applicable_sample():
    judge = FakeJudge()
    props = (Prop(name="sure", question="Sure?", applies_to=("harmful",)), Prop(name="refuses", kind="refusal"),
             Prop(name="sorry", question="Sorry?"))
    F = RBRScorer(props, judge=judge).features(samples())
    assert len(judge.calls) == 1  # one batched call for every (sample, question)
    prompts, responses, questions = judge.calls[0]
    assert questions == ["Sure?", "Sure?", "Sorry?", "Sorry?", "Sorry?", "Sorry?"]
    assert prompts[0] == [{"role": "user", "content": "q"}]
    torch.testing.assert_close(F[:, 0], torch.tensor([0.2, 0.9, 0.0, 0.0]))  # 0 on benign prompts
    torch.testing.assert_close(F[:, 2], torch.tensor([0.9, 0.2, 0.2, 0.2]))
    with pytest.raises(ConfigError, match="needs a judge"):
        RBRScorer(props)


def test_weights_file_round_trip_and_mismatch(tmp_path):
    path = save_rbr_weights(tmp_path / "w.json", {"refuses": 1.0, "over_refuses": -2.0, "judgmental": 0.5, "steps": 0.0},
                            -0.5, {"loss": "hinge"})
    weights, bias = load_rbr_weights(path, [p.name for p in PROPS])
    assert weights == {"refuses": 1.0, "over_refuses": -2.0, "judgmental": 0.5, "steps": 0.0} and bias == -0.5
    ws = build_scorer((ScorerConfig(type="rbr", propositions=PROPS, rbr_weights=str(path)),))
    assert ws.score(samples()).values.tolist() == [0.5, -0.5, -2.5, 0.0]
    assert set(ws.score(samples()).parts) == {"rbr", "rbr/refuses", "rbr/over_refuses", "rbr/judgmental", "rbr/steps"}
    save_rbr_weights(tmp_path / "bad.json", {"refuses": 1, "over_refuses": 1, "judgmental": 1, "extra": 1}, 0.0)
    with pytest.raises(ConfigError, match=r"missing \['steps'\].*unknown \['extra'\]"):
        load_rbr_weights(tmp_path / "bad.json", [p.name for p in PROPS])
    (tmp_path / "nan.json").write_text(json.dumps({"weights": {"refuses": "x"}, "bias": 0}))
    with pytest.raises(ConfigError, match="finite number"):
        load_rbr_weights(tmp_path / "nan.json", ["refuses"])
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="rbr_weights file .*: not valid JSON"):
        load_rbr_weights(tmp_path / "junk.json", ["refuses"])


def test_required_columns_names_category_for_scoped_propositions():
    assert required_columns((ScorerConfig(type="rbr", propositions=PROPS),)) == {"category": "rbr"}
    assert required_columns((ScorerConfig(type="rbr", propositions=PROPS[2:]),)) == {}


# --------------------------------------------------------------------------- config checks


def grpo(rewards: list[dict]) -> dict:
    return {"algorithm": "grpo", "model": "m", "data": {"train": "p.jsonl"}, "grpo": {"rewards": rewards}}


@pytest.mark.parametrize("scorer,problem", [
    ({"type": "rbr"}, "non-empty `propositions`"),
    ({"type": "rbr", "propositions": [{"kind": "refusal"}]}, "needs a `name`"),
    ({"type": "rbr", "propositions": [{"name": "a", "kind": "refusal"}, {"name": "a", "kind": "refusal"}]}, "used twice"),
    ({"type": "rbr", "propositions": [{"name": "a"}]}, "kind judge needs `question`"),
    ({"type": "rbr", "propositions": [{"name": "a", "question": "Refuses?"}]}, "need a `judge:` section"),
    ({"type": "rbr", "propositions": [{"name": "a", "kind": "regex", "pattern": "("}]}, "invalid regular expression"),
    ({"type": "rbr", "propositions": [{"name": "a", "kind": "keyword"}]}, "needs `keywords`"),
    ({"type": "rbr", "propositions": [{"name": "a", "kind": "refusal"}], "rbr_weights": "nope.json"},
     "rbr_weights file not found"),
    ({"type": "rbr", "propositions": [{"name": "a", "kind": "refuse"}]}, "Did you mean 'refusal'"),
    ({"type": "rules", "rules": [{"kind": "refusal"}], "system_prompt": "be safe"}, "system_prompt applies to type reward_model"),
])
def test_config_errors(scorer, problem):
    with pytest.raises(ConfigError, match=problem):
        config_from_dict(grpo([scorer]))


def test_config_accepts_rbr_with_a_reward_model_and_a_condition(tmp_path):
    (tmp_path / "w.json").write_text(json.dumps({"weights": {"refuses": 1.0}, "bias": 0.0}))
    cfg = config_from_dict(grpo([
        {"type": "reward_model", "path": "rm", "system_prompt": "Preference: helpfulness."},
        {"type": "rbr", "propositions": [{"name": "refuses", "kind": "refusal", "applies_to": ["harmful"]}],
         "rbr_weights": str(tmp_path / "w.json")}]))
    rm, rbr = cfg.grpo.rewards
    assert rm.system_prompt == "Preference: helpfulness." and rbr.propositions[0].applies_to == ("harmful",)
