"""Pairwise preference losses: closed forms, gradients, masking, batched vs looped, limits.

Shorthand in docstrings: sp(x) = softplus(x) = log(1 + e^x) = -ls(-x), s = sigmoid.
Reference numbers: sp(-2) = 0.1269280, sp(-1.5) = 0.2014133, sp(-1) = 0.3132617,
sp(-0.5) = 0.4740770, sp(0) = log 2 = 0.6931472, sp(0.5) = 0.9740770, sp(1) = 1.3132617,
s(1) = 0.7310586, s(-1) = 0.2689414, s(2) = 0.8807971.
"""

import math

import pytest
import torch

from rlhflab.losses.preference import (
    GROUPS,
    PAIRWISE,
    PairLogps,
    check_hparams,
    check_inputs,
    hparams_of,
    register,
)
from rlhflab.ops import masked_sum

LOG2 = math.log(2.0)
SP = {-2: 0.1269280110, -1.5: 0.2014132780, -1: 0.3132616875, -0.5: 0.4740769842, 0: LOG2,
      0.5: 0.9740769842, 1: 1.3132616875}
NAMES = sorted(PAIRWISE)
TOL = dict(atol=1e-7, rtol=0.0)


def t(*xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def pair(c, r, rc=None, rr=None, **kw) -> PairLogps:
    """PairLogps of float64 tensors from lists; kw use the PairLogps field names."""
    conv = lambda x: None if x is None else t(*x)  # noqa: E731
    return PairLogps(conv(c), conv(r), conv(rc), conv(rr), **{k: conv(v) for k, v in kw.items()})


# STD: h_c = [1, 0, -1], h_r = [-1, 0, 1]; with beta = 0.5, z = 0.5 (h_c - h_r) = [1, 0, -1].
def std(**kw) -> PairLogps:
    return pair([-1.0, -2.0, -3.0], [-3.0, -2.0, -1.0], [-2.0, -2.0, -2.0], [-2.0, -2.0, -2.0], **kw)


def full_batch(B: int = 5, seed: int = 0) -> PairLogps:
    """Every field filled, float64, away from kinks with probability ~1; avg log-probs < 0."""
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(B, generator=g, dtype=torch.float64)  # noqa: E731
    lc = torch.randint(1, 12, (B,), generator=g).double()
    lr = torch.randint(1, 12, (B,), generator=g).double()
    c, r = u(-3, -0.2) * lc, u(-3, -0.2) * lr
    return PairLogps(c, r, c + u(-2, 2), r + u(-2, 2), lc, lr, u(-2, 2), u(-2, 2), u(0, 3), u(0, 3),
                     u(0, 1), u(0, 1))


def with_policy(p: PairLogps, c: torch.Tensor, r: torch.Tensor) -> PairLogps:
    return PairLogps(c, r, *(getattr(p, f) for f in list(p.__dataclass_fields__)[2:]))


def slice_pair(p: PairLogps, i: int) -> PairLogps:
    return PairLogps(*(None if v is None else v[i : i + 1] for v in vars(p).values()))


# ----------------------------------------------------------------------------- registry
def test_registry_names_requires_and_defaults():
    assert set(PAIRWISE) == {"dpo", "cdpo", "robust_dpo", "ipo", "hinge", "slic", "orpo", "simpo",
                             "dpo_nll", "rpo", "dpop", "tdpo", "sppo", "nca", "gpo", "sft"}
    ref = frozenset({"reference"})
    want = {"dpo": ref, "cdpo": ref, "robust_dpo": ref, "ipo": ref, "hinge": ref, "dpop": ref,
            "sppo": ref, "nca": ref, "gpo": ref, "slic": frozenset({"lengths"}),
            "orpo": frozenset({"lengths"}), "simpo": frozenset({"lengths"}), "sft": frozenset({"lengths"}),
            "dpo_nll": frozenset({"reference", "lengths"}), "rpo": frozenset({"reference", "rewards"}),
            "tdpo": frozenset({"reference", "token_kl"})}
    assert {n: PAIRWISE[n].requires for n in PAIRWISE} == want
    assert PAIRWISE["sppo"].optional == frozenset({"winrates"})
    assert all(PAIRWISE[n].optional == frozenset() for n in PAIRWISE if n != "sppo")
    assert all(isinstance(PAIRWISE[n].requires, frozenset) for n in PAIRWISE)
    assert set(GROUPS) == {"reference", "lengths", "rewards", "token_kl", "winrates"}
    assert {n: hparams_of(n) for n in PAIRWISE} == {
        "dpo": {"beta": 0.1}, "cdpo": {"beta": 0.1, "label_smoothing": 0.0},
        "robust_dpo": {"beta": 0.1, "label_smoothing": 0.0}, "ipo": {"beta": 0.1}, "hinge": {"beta": 0.1},
        "slic": {"delta": 1.0, "nll_weight": 0.0}, "orpo": {"lam": 0.1}, "simpo": {"beta": 2.0, "gamma": 0.5},
        "dpo_nll": {"beta": 0.1, "alpha": 1.0}, "rpo": {"beta": 0.1, "eta": 1.0, "distance": "kl"},
        "dpop": {"beta": 0.1, "lam": 50.0}, "tdpo": {"beta": 0.1, "alpha": 0.5, "version": 2},
        "sppo": {"beta": 0.1}, "nca": {"beta": 0.1}, "gpo": {"beta": 0.1, "f": "logistic"}, "sft": {},
    }


def test_reference_free_losses_run_without_reference():
    p = pair([-4.0], [-3.0], chosen_len=[4.0], rejected_len=[2.0])
    for name in ("slic", "orpo", "simpo", "sft"):
        loss, _ = PAIRWISE[name](p)
        assert loss.shape == (1,) and torch.isfinite(loss).all()


def test_missing_fields_raise_naming_loss_and_field():
    p = pair([-1.0], [-2.0])
    with pytest.raises(ValueError, match=r"dpo: needs PairLogps\.ref_chosen"):
        PAIRWISE["dpo"](p)
    with pytest.raises(ValueError, match=r"rpo: needs PairLogps\.chosen_reward"):
        PAIRWISE["rpo"](pair([-1.0], [-2.0], [-1.0], [-2.0]))
    with pytest.raises(ValueError, match=r"tdpo: needs PairLogps\.chosen_token_kl"):
        PAIRWISE["tdpo"](pair([-1.0], [-2.0], [-1.0], [-2.0]))
    with pytest.raises(ValueError, match=r"simpo: needs PairLogps\.chosen_len"):
        PAIRWISE["simpo"](p)
    with pytest.raises(ValueError, match=r"dpo_nll: needs PairLogps\.chosen_len"):
        PAIRWISE["dpo_nll"](pair([-1.0], [-2.0], [-1.0], [-2.0]))
    with pytest.raises(ValueError, match=r"dpo: needs PairLogps\.ref_rejected"):
        check_inputs("dpo", pair([-1.0], [-2.0], [-1.0]))


def test_bad_hyperparameters_raise():
    p = full_batch()
    with pytest.raises(ValueError, match=r"rpo: unknown distance='l2'; choose from \['kl', 'sq'\]"):
        PAIRWISE["rpo"](p, distance="l2")
    with pytest.raises(ValueError, match=r"gpo: unknown f='cubic'.*'logistic', 'hinge', 'square'"):
        PAIRWISE["gpo"](p, f="cubic")
    with pytest.raises(ValueError, match=r"tdpo: unknown version=3; choose from \[1, 2\]"):
        PAIRWISE["tdpo"](p, version=3)
    for e in (0.5, 0.7, -0.1):
        with pytest.raises(ValueError, match="robust_dpo: label_smoothing must be in"):
            PAIRWISE["robust_dpo"](p, label_smoothing=e)
    with pytest.raises(ValueError, match=r"dpo: unknown hyperparameter\(s\) \['tau'\]"):
        PAIRWISE["dpo"](p, tau=0.1)
    with pytest.raises(ValueError, match="ipo: beta must be > 0"):
        PAIRWISE["ipo"](p, beta=0.0)
    with pytest.raises(ValueError, match="sppo: give both"):
        PAIRWISE["sppo"](std(chosen_winrate=[1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="unknown pairwise loss 'kto'"):
        hparams_of("kto")
    with pytest.raises(ValueError, match="unknown PairLogps groups"):
        register("nope", requires=("refs",))
    assert "nope" not in PAIRWISE


def test_check_hparams_validates_before_any_model():
    for name in NAMES:
        check_hparams(name, hparams_of(name))
    check_hparams("gpo", {"f": "savage", "beta": 0.3})
    for name, hp, msg in [("gpo", {"f": "cubic"}, "gpo: unknown f"), ("rpo", {"distance": "js"}, "rpo"),
                          ("tdpo", {"version": "2"}, "tdpo: unknown version"),
                          ("robust_dpo", {"label_smoothing": 0.5}, "robust_dpo"),
                          ("simpo", {"lam": 1.0}, "simpo: unknown hyperparameter"),
                          ("dpo2", {}, "unknown pairwise loss")]:
        with pytest.raises(ValueError, match=msg):
            check_hparams(name, hp)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"dpo: PairLogps\.ref_chosen has shape \(2,\), expected \(3,\)"):
        PAIRWISE["dpo"](PairLogps(t(-1, -2, -3), t(-1, -2, -3), t(-1, -2), t(-1, -2, -3)))
    with pytest.raises(ValueError, match=r"PairLogps\.chosen must have shape \(B,\)"):
        PAIRWISE["dpo"](PairLogps(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3)))


# ----------------------------------------------------------------------------- closed forms
def test_dpo_closed_form():
    """STD, beta=0.5: z = [1, 0, -1] -> -ls(z) = sp(-z) = [0.3132617, log 2, 1.3132617].
    Rewards 0.5 h: chosen [0.5, 0, -0.5], rejected [-0.5, 0, 0.5]; accuracy [1, 0, 0]."""
    loss, m = PAIRWISE["dpo"](std(), beta=0.5)
    assert torch.allclose(loss, t(SP[-1], LOG2, SP[1]), **TOL)
    assert torch.allclose(m["chosen_reward"], t(0.5, 0.0, -0.5), **TOL)
    assert torch.allclose(m["rejected_reward"], t(-0.5, 0.0, 0.5), **TOL)
    assert torch.allclose(m["margin"], t(1.0, 0.0, -1.0), **TOL)
    assert torch.equal(m["accuracy"], t(1.0, 0.0, 0.0))


def test_cdpo_closed_form():
    """STD, beta=0.5, e=0.25: 0.75 sp(-z) + 0.25 sp(z):
    z=1: 0.75*0.3132617 + 0.25*1.3132617 = 0.5632617; z=0: log 2;
    z=-1: 0.75*1.3132617 + 0.25*0.3132617 = 1.0632617."""
    loss, _ = PAIRWISE["cdpo"](std(), beta=0.5, label_smoothing=0.25)
    assert torch.allclose(loss, t(0.5632617, LOG2, 1.0632617), atol=1e-7)


def test_robust_dpo_closed_form():
    """STD, beta=0.5, e=0.25: (0.75 sp(-z) - 0.25 sp(z)) / 0.5:
    z=1: (0.2349463 - 0.3283154) / 0.5 = -0.1867383 (can be negative); z=0: (0.5 log 2)/0.5 = log 2;
    z=-1: (0.9849463 - 0.0783154) / 0.5 = 1.8132617."""
    loss, _ = PAIRWISE["robust_dpo"](std(), beta=0.5, label_smoothing=0.25)
    assert torch.allclose(loss, t(-0.1867383, LOG2, 1.8132617), atol=1e-7)


def test_ipo_closed_form():
    """STD: h_c - h_r = [2, 0, -2]. tau=0.5: target 1/(2*0.5) = 1 -> [1, 1, 9];
    tau=0.25: target 2 -> [0, 4, 16]."""
    loss, m = PAIRWISE["ipo"](std(), beta=0.5)
    assert torch.allclose(loss, t(1.0, 1.0, 9.0), **TOL)
    assert torch.allclose(m["margin"], t(1.0, 0.0, -1.0), **TOL)  # tau * (h_c - h_r)
    assert torch.allclose(PAIRWISE["ipo"](std(), beta=0.25)[0], t(0.0, 4.0, 16.0), **TOL)


def test_hinge_closed_form():
    """STD: beta=0.5, z = [1, 0, -1] -> max(0, 1 - z) = [0, 1, 2];
    beta=0.25, z = [0.5, 0, -0.5] -> [0.5, 1, 1.5]."""
    assert torch.allclose(PAIRWISE["hinge"](std(), beta=0.5)[0], t(0.0, 1.0, 2.0), **TOL)
    assert torch.allclose(PAIRWISE["hinge"](std(), beta=0.25)[0], t(0.5, 1.0, 1.5), **TOL)


def test_slic_closed_form():
    """chosen=[-1, -3], rejected=[-3, -2.5], chosen_len=4, delta=1:
    hinge = max(0, 1 - [2, -0.5]) = [0, 1.5]; nll = -a_c = [0.25, 0.75];
    nll_weight=0.5: [0 + 0.125, 1.5 + 0.375] = [0.125, 1.875]. delta=3: [1, 3.5]."""
    p = pair([-1.0, -3.0], [-3.0, -2.5], chosen_len=[4.0, 4.0], rejected_len=[2.0, 2.0])
    loss, m = PAIRWISE["slic"](p, delta=1.0, nll_weight=0.5)
    assert torch.allclose(loss, t(0.125, 1.875), **TOL)
    assert torch.allclose(m["hinge"], t(0.0, 1.5), **TOL) and torch.allclose(m["nll"], t(0.25, 0.75), **TOL)
    assert torch.allclose(PAIRWISE["slic"](p, delta=3.0)[0], t(1.0, 3.5), **TOL)


def test_orpo_closed_form():
    """Row 0: chosen = 3 log 0.5, len 3 -> a_c = log 0.5, p = 0.5, odds 1, lo = 0;
    rejected = 2 log 0.25, len 2 -> a_r = log 0.25, odds = 0.25/0.75 = 1/3, lo = -log 3.
    log odds ratio = log 3; L_OR = -ls(log 3) = -log(3/4) = 0.2876821; nll = log 2;
    lam = 0.1: loss = 0.6931472 + 0.0287682 = 0.7219154.
    Row 1: a_c = a_r = -1 (chosen -2 over 2, rejected -3 over 3): ratio 0, L_OR = log 2,
    loss = 1 + 0.1 log 2 = 1.0693147."""
    p = pair([3 * math.log(0.5), -2.0], [2 * math.log(0.25), -3.0], chosen_len=[3.0, 2.0],
             rejected_len=[2.0, 3.0])
    loss, m = PAIRWISE["orpo"](p, lam=0.1)
    assert torch.allclose(loss, t(0.7219154, 1.0693147), atol=1e-7)
    assert torch.allclose(m["log_odds_ratio"], t(math.log(3.0), 0.0), atol=1e-12)
    assert torch.allclose(m["nll"], t(LOG2, 1.0), atol=1e-12)
    assert torch.allclose(m["or_loss"], t(0.2876821, LOG2), atol=1e-7)


def test_simpo_closed_form():
    """beta=2, gamma=0.5. Row 0: a_c = -4/4 = -1, a_r = -3/2 = -1.5: 2*0.5 - 0.5 = 0.5 ->
    sp(-0.5) = 0.4740770. Row 1: a_c = a_r = -1: -0.5 -> sp(0.5) = 0.9740770.
    Rewards beta * a: chosen [-2, -2], rejected [-3, -2]."""
    p = pair([-4.0, -2.0], [-3.0, -3.0], chosen_len=[4.0, 2.0], rejected_len=[2.0, 3.0])
    loss, m = PAIRWISE["simpo"](p, beta=2.0, gamma=0.5)
    assert torch.allclose(loss, t(SP[-0.5], SP[0.5]), **TOL)
    assert torch.allclose(m["chosen_reward"], t(-2.0, -2.0), **TOL)
    assert torch.allclose(m["rejected_reward"], t(-3.0, -2.0), **TOL)


def test_dpo_nll_closed_form():
    """STD, beta=0.5, chosen_len [2, 4, 1]: a_c = [-1/2, -2/4, -3/1] = [-0.5, -0.5, -3].
    alpha=1: [0.3132617 + 0.5, log 2 + 0.5, 1.3132617 + 3]; alpha=0.5 halves the nll part."""
    p = std(chosen_len=[2.0, 4.0, 1.0], rejected_len=[1.0, 1.0, 1.0])
    loss, m = PAIRWISE["dpo_nll"](p, beta=0.5, alpha=1.0)
    assert torch.allclose(loss, t(SP[-1] + 0.5, LOG2 + 0.5, SP[1] + 3.0), **TOL)
    assert torch.allclose(m["nll"], t(0.5, 0.5, 3.0), **TOL)
    half, _ = PAIRWISE["dpo_nll"](p, beta=0.5, alpha=0.5)
    assert torch.allclose(half, t(SP[-1] + 0.25, LOG2 + 0.25, SP[1] + 1.5), **TOL)


def test_rpo_closed_form():
    """STD, beta=0.5: a = z = [1, 0, -1]; rewards r_c = [1, 0, 2], r_r = [1, 0, 1], eta=1: b = [0, 0, 1].
    kl, D = s(b)(ls(b) - ls(a)) + s(-b)(ls(-b) - ls(-a)):
      row 0: 0.5 (-log 2 + 0.3132617) + 0.5 (-log 2 + 1.3132617) = -0.6931472 + 0.8132617 = 0.1201145;
      row 1: a = b -> 0;
      row 2: a = -1, b = 1: (s(1) - s(-1)) (ls(1) - ls(-1)) = 0.4621172 * 1 = 0.4621172.
    sq, (a - b)^2: [1, 0, 4]. eta=2 -> b = [0, 0, 2]: sq [1, 0, 9]."""
    p = std(chosen_reward=[1.0, 0.0, 2.0], rejected_reward=[1.0, 0.0, 1.0])
    loss, m = PAIRWISE["rpo"](p, beta=0.5, eta=1.0, distance="kl")
    assert torch.allclose(loss, t(0.1201145, 0.0, 0.4621172), atol=1e-7)
    assert torch.allclose(m["target"], t(0.0, 0.0, 1.0), **TOL)
    assert torch.allclose(PAIRWISE["rpo"](p, beta=0.5, distance="sq")[0], t(1.0, 0.0, 4.0), **TOL)
    assert torch.allclose(PAIRWISE["rpo"](p, beta=0.5, eta=2.0, distance="sq")[0], t(1.0, 0.0, 9.0), **TOL)


def test_rpo_kl_direction():
    """a = 1, b = 2 (beta=0.5, STD row 0, r_c - r_r = 2): KL(Bern(s(2)) || Bern(s(1)))
    = s(2)(ls(2) - ls(1)) + s(-2)(ls(-2) - ls(-1)) = 0.8807971*0.1863337 + 0.1192029*(-0.8136663)
    = 0.0671308, not the reverse KL(Bern(s(1)) || Bern(s(2))) = 0.0826077."""
    p = pair([-1.0], [-3.0], [-2.0], [-2.0], chosen_reward=[2.0], rejected_reward=[0.0])
    loss, _ = PAIRWISE["rpo"](p, beta=0.5)
    assert loss.item() == pytest.approx(0.0671308, abs=1e-7)
    s1, s2 = torch.sigmoid(t(1.0)), torch.sigmoid(t(2.0))
    reverse = s1 * torch.log(s1 / s2) + (1 - s1) * torch.log((1 - s1) / (1 - s2))
    assert reverse.item() == pytest.approx(0.0826077, abs=1e-7)


def test_dpop_closed_form():
    """beta=1, lam=2. Row 0 (STD row 0): chosen -1 > ref -2, penalty 0, logit 1*(1 - (-1)) = 2 ->
    sp(-2) = 0.1269280. Row 1: chosen -2.5, ref -2 -> h_c = -0.5; rejected -4.5, ref -2 -> h_r = -2.5;
    penalty = max(0, -2 + 2.5) = 0.5; logit = 2 - 2*0.5 = 1 -> sp(-1) = 0.3132617."""
    p = pair([-1.0, -2.5], [-3.0, -4.5], [-2.0, -2.0], [-2.0, -2.0])
    loss, m = PAIRWISE["dpop"](p, beta=1.0, lam=2.0)
    assert torch.allclose(loss, t(SP[-2], SP[-1]), **TOL)
    assert torch.allclose(m["penalty"], t(0.0, 0.5), **TOL)


def test_tdpo_closed_form():
    """Two copies of STD row 0 (beta=0.5, z = 1), alpha=0.5, d = beta (kl_r - kl_c).
    Row 0: kl_c=1, kl_r=3: v1: 1 - 0.5*2 = 0 -> log 2; v2: 1 - 0.5*0.5*2 = 0.5 -> sp(-0.5) = 0.4740770.
    Row 1: kl_c=2, kl_r=0: v1: 1 - 0.5*(-2) = 2 -> sp(-2) = 0.1269280;
    v2: 1 - 0.25*(-2) = 1.5 -> sp(-1.5) = 0.2014133."""
    p = pair([-1.0, -1.0], [-3.0, -3.0], [-2.0, -2.0], [-2.0, -2.0], chosen_token_kl=[1.0, 2.0],
             rejected_token_kl=[3.0, 0.0])
    l1, m = PAIRWISE["tdpo"](p, beta=0.5, alpha=0.5, version=1)
    l2, _ = PAIRWISE["tdpo"](p, beta=0.5, alpha=0.5, version=2)
    assert torch.allclose(l1, t(LOG2, SP[-2]), **TOL)
    assert torch.allclose(l2, t(SP[-0.5], SP[-1.5]), **TOL)
    assert torch.allclose(m["kl_margin"], t(2.0, -2.0), **TOL)


def test_sppo_closed_form():
    """STD, beta=0.5, hard labels: targets (1 - 0.5)/0.5 = 1 and (0 - 0.5)/0.5 = -1;
    h_c = [1, 0, -1], h_r = [-1, 0, 1]: [0 + 0, 1 + 1, 4 + 4] = [0, 2, 8].
    Win rates w_c = 0.75, w_r = 0.5: targets 0.5, 0: row 0: (1 - 0.5)^2 + (-1 - 0)^2 = 1.25."""
    loss, m = PAIRWISE["sppo"](std(), beta=0.5)
    assert torch.allclose(loss, t(0.0, 2.0, 8.0), **TOL)
    assert torch.allclose(m["chosen_target"], t(1.0, 1.0, 1.0), **TOL)
    assert torch.allclose(m["rejected_target"], t(-1.0, -1.0, -1.0), **TOL)
    p = std(chosen_winrate=[0.75, 0.75, 0.75], rejected_winrate=[0.5, 0.5, 0.5])
    assert PAIRWISE["sppo"](p, beta=0.5)[0][0].item() == pytest.approx(1.25, abs=1e-12)
    hard = std(chosen_winrate=[1.0, 1.0, 1.0], rejected_winrate=[0.0, 0.0, 0.0])
    assert torch.equal(PAIRWISE["sppo"](hard, beta=0.5)[0], loss)


def test_nca_closed_form():
    """STD, beta=0.5: x_c = beta h_c = [0.5, 0, -0.5], x_r = [-0.5, 0, 0.5];
    loss = sp(-x_c) + 0.5 sp(x_c) + 0.5 sp(x_r):
    row 0: 0.4740770 + 0.4870385 + 0.2370385 = 1.1981540; row 1: 2 log 2 = 1.3862944;
    row 2: 0.9740770 + 0.2370385 + 0.4870385 = 1.6981540."""
    loss, _ = PAIRWISE["nca"](std(), beta=0.5)
    assert torch.allclose(loss, t(1.1981540, 2 * LOG2, 1.6981540), atol=1e-7)


@pytest.mark.parametrize(
    "f,want",
    [
        ("logistic", (SP[-1], LOG2, SP[1])),  # log(1 + e^-z)
        ("hinge", (0.0, 1.0, 2.0)),  # max(0, 1 - z)
        ("square", (0.0, 1.0, 4.0)),  # (z - 1)^2
        ("exponential", (math.exp(-1), 1.0, math.e)),  # e^-z = 0.3678794, 1, 2.7182818
        ("truncated_square", (0.0, 1.0, 4.0)),  # max(0, 1 - z)^2
        ("savage", (0.0723295, 0.25, 0.5344466)),  # s(-z)^2 = 0.2689414^2, 0.5^2, 0.7310586^2
    ],
)
def test_gpo_closed_form(f, want):
    """STD, beta=0.5: z = [1, 0, -1]; values of f(z) in the parametrization comments."""
    loss, _ = PAIRWISE["gpo"](std(), beta=0.5, f=f)
    assert torch.allclose(loss, t(*want), atol=1e-7)


def test_sft_closed_form():
    """chosen [-6, -1] over [3, 4] tokens: -a_c = [2, 0.25]; the rejected side is ignored."""
    p = pair([-6.0, -1.0], [-100.0, 5.0], chosen_len=[3.0, 4.0], rejected_len=[1.0, 1.0])
    loss, m = PAIRWISE["sft"](p)
    assert torch.allclose(loss, t(2.0, 0.25), **TOL)
    assert torch.equal(m["nll"], loss.detach())


# ----------------------------------------------------------------------------- gradients
GPO_FS = ["logistic", "hinge", "square", "exponential", "truncated_square", "savage"]
CASES = [(n, {}) for n in NAMES] + [("gpo", {"f": f}) for f in GPO_FS[1:]] + [
    ("tdpo", {"version": 1}), ("rpo", {"distance": "sq"}), ("slic", {"nll_weight": 0.7}),
    ("cdpo", {"label_smoothing": 0.2}), ("robust_dpo", {"label_smoothing": 0.2}), ("dpop", {"lam": 3.0}),
]
CASE_IDS = [n + "".join(f"-{k}={v}" for k, v in hp.items()) for n, hp in CASES]


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_gradcheck_policy_logps(name, hp):
    p = full_batch(seed=1)
    c, r = p.chosen.clone().requires_grad_(), p.rejected.clone().requires_grad_()
    fn = lambda a, b: PAIRWISE[name](with_policy(p, a, b), **hp)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (c, r), eps=1e-6, atol=1e-7)


def _analytic(name, hp, p):
    """(dL/dchosen, dL/drejected) written by hand for each loss, from the equations."""
    s = torch.sigmoid
    b = hp.get("beta", hparams_of(name).get("beta"))
    if p.ref_chosen is not None:
        h_c, h_r = p.chosen - p.ref_chosen, p.rejected - p.ref_rejected
        z = b * (h_c - h_r) if b is not None else None
    lc, lr = p.chosen_len, p.rejected_len
    e = hp.get("label_smoothing", 0.0)
    if name == "dpo":
        g = -b * s(-z)
        return g, -g
    if name == "cdpo":  # d/dz [(1-e) sp(-z) + e sp(z)] = -(1-e) s(-z) + e s(z)
        g = b * (-(1 - e) * s(-z) + e * s(z))
        return g, -g
    if name == "robust_dpo":  # d/dz [((1-e) sp(-z) - e sp(z)) / (1-2e)]
        g = b * (-(1 - e) * s(-z) - e * s(z)) / (1 - 2 * e)
        return g, -g
    if name == "ipo":
        g = 2 * (h_c - h_r - 1 / (2 * b))
        return g, -g
    if name == "hinge":
        g = -b * (z < 1).double()
        return g, -g
    if name == "slic":
        act = (1.0 - (p.chosen - p.rejected) > 0).double()
        return -act - hp.get("nll_weight", 0.0) / lc, act
    if name == "orpo":  # lo'(a) = 1 / (1 - e^a)
        a_c, a_r, lam = p.chosen / lc, p.rejected / lr, 0.1
        x = (a_c - torch.log1p(-torch.exp(a_c))) - (a_r - torch.log1p(-torch.exp(a_r)))
        return (-1 - lam * s(-x) / (1 - torch.exp(a_c))) / lc, lam * s(-x) / (1 - torch.exp(a_r)) / lr
    if name == "simpo":
        x = 2.0 * (p.chosen / lc - p.rejected / lr) - 0.5
        return -2.0 * s(-x) / lc, 2.0 * s(-x) / lr
    if name == "dpo_nll":
        g = -b * s(-z)
        return g - 1.0 / lc, -g
    if name == "rpo":
        tgt = p.chosen_reward - p.rejected_reward
        g = b * (s(z) - s(tgt)) if hp.get("distance", "kl") == "kl" else 2 * b * (z - tgt)
        return g, -g
    if name == "dpop":
        lam = hp.get("lam", 50.0)
        pen = torch.relu(p.ref_chosen - p.chosen)
        x = b * (h_c - h_r - lam * pen)
        return -s(-x) * b * (1 + lam * (p.ref_chosen > p.chosen).double()), s(-x) * b
    if name == "tdpo":
        dk = p.rejected_token_kl - p.chosen_token_kl
        x = z - b * dk * (1.0 if hp.get("version", 2) == 1 else 0.5)
        return -b * s(-x), b * s(-x)
    if name == "sppo":
        return 2 * (h_c - (p.chosen_winrate - 0.5) / b), 2 * (h_r - (p.rejected_winrate - 0.5) / b)
    if name == "nca":
        x_c, x_r = b * h_c, b * h_r
        return b * (-s(-x_c) + 0.5 * s(x_c)), 0.5 * b * s(x_r)
    if name == "gpo":
        fprime = {"logistic": -s(-z), "hinge": -(z < 1).double(), "square": 2 * (z - 1),
                  "exponential": -torch.exp(-z), "truncated_square": -2 * torch.relu(1 - z),
                  "savage": -2 * s(-z) ** 2 * s(z)}[hp.get("f", "logistic")]
        return b * fprime, -b * fprime
    if name == "sft":
        return -1.0 / lc, torch.zeros_like(lr)
    raise AssertionError(name)


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_gradient_matches_analytic(name, hp):
    p = full_batch(seed=2)
    c, r = p.chosen.clone().requires_grad_(), p.rejected.clone().requires_grad_()
    loss, _ = PAIRWISE[name](with_policy(p, c, r), **hp)
    loss.sum().backward()
    gc, gr = _analytic(name, hp, p)
    assert torch.allclose(c.grad, gc, atol=1e-10, rtol=1e-10)
    assert torch.allclose(r.grad if r.grad is not None else torch.zeros_like(r), gr, atol=1e-10, rtol=1e-10)


def test_tdpo_gradients_through_token_kl():
    """TDPO1 differentiates both KLs; TDPO2 stops the gradient of kl_c (sg) but not of kl_r:
    dL/dkl_r = alpha beta s(-x), with x = z - alpha beta (kl_r - kl_c)."""
    p = full_batch(seed=3)
    kc, kr = p.chosen_token_kl.clone().requires_grad_(), p.rejected_token_kl.clone().requires_grad_()

    def run(version, a, b):
        q = PairLogps(*(list(vars(p).values())[:8]), a, b, p.chosen_winrate, p.rejected_winrate)
        return PAIRWISE["tdpo"](q, beta=0.3, alpha=0.5, version=version)[0]

    assert torch.autograd.gradcheck(lambda a, b: run(1, a, b), (kc, kr))
    assert torch.autograd.gradcheck(lambda b: run(2, p.chosen_token_kl, b), (kr,))
    loss = run(2, kc, kr)
    loss.sum().backward()
    assert kc.grad is None  # sg(kl_c): no gradient path to the chosen KL
    z = 0.3 * ((p.chosen - p.ref_chosen) - (p.rejected - p.ref_rejected))
    x = z - 0.15 * (p.rejected_token_kl - p.chosen_token_kl)
    assert torch.allclose(kr.grad, 0.15 * torch.sigmoid(-x), atol=1e-12)


# ----------------------------------------------------------------------------- masking
def _tokens(lengths, T, g, scale):
    """(B, T) float64 values in (-scale, 0) at the first `lengths[b]` positions, a mask, and the
    same tensor with junk (nan, +-inf, 1e30) in the masked positions."""
    B = len(lengths)
    mask = torch.arange(T).expand(B, T) < torch.tensor(lengths).unsqueeze(1)
    vals = -scale * torch.rand(B, T, generator=g, dtype=torch.float64)
    clean = torch.where(mask, vals, torch.zeros_like(vals))
    junk_vals = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=torch.float64)
    junk = junk_vals[torch.randint(0, 4, (B, T), generator=g)]
    return clean, torch.where(mask, vals, junk), mask


@pytest.mark.parametrize("name", NAMES)
def test_masked_padding_never_leaks(name):
    """Token-level log-probs with nan/inf/1e30 in padded positions, reduced with masked_sum and
    lengths = mask.sum, give exactly the loss of the clean sums; no nan reaches the gradient."""
    g = torch.Generator().manual_seed(7)
    T, len_c, len_r = 6, [3, 6, 1], [5, 2, 4]
    pc_clean, pc_junk, mc = _tokens(len_c, T, g, 2.0)
    pr_clean, pr_junk, mr = _tokens(len_r, T, g, 2.0)
    rc_clean, rc_junk, _ = _tokens(len_c, T, g, 2.0)
    rr_clean, rr_junk, _ = _tokens(len_r, T, g, 2.0)
    kc_clean, kc_junk, _ = _tokens(len_c, T, g, 1.0)
    kr_clean, kr_junk, _ = _tokens(len_r, T, g, 1.0)
    seq = dict(chosen_reward=t(1.0, -0.5, 2.0), rejected_reward=t(0.0, 0.5, 1.0),
               chosen_winrate=t(0.8, 0.6, 0.9), rejected_winrate=t(0.1, 0.3, 0.5))  # per sequence

    for x in (pc_junk, pr_junk, kr_junk):
        x.requires_grad_()
    junk = PairLogps(masked_sum(pc_junk, mc, -1), masked_sum(pr_junk, mr, -1), masked_sum(rc_junk, mc, -1),
                     masked_sum(rr_junk, mr, -1), mc.sum(-1).double(), mr.sum(-1).double(),
                     chosen_token_kl=masked_sum(kc_junk, mc, -1),
                     rejected_token_kl=masked_sum(kr_junk, mr, -1), **seq)
    clean = PairLogps(pc_clean.sum(-1), pr_clean.sum(-1), rc_clean.sum(-1), rr_clean.sum(-1),
                      t(*len_c), t(*len_r), chosen_token_kl=kc_clean.sum(-1),
                      rejected_token_kl=kr_clean.sum(-1), **seq)
    loss_junk, m_junk = PAIRWISE[name](junk)
    loss_clean, m_clean = PAIRWISE[name](clean)
    assert torch.allclose(loss_junk, loss_clean, atol=1e-12, rtol=0)
    for k in m_clean:
        assert torch.allclose(m_junk[k], m_clean[k], atol=1e-12, rtol=0), k
    loss_junk.sum().backward()
    for x, mask in ((pc_junk, mc), (pr_junk, mr), (kr_junk, mr)):
        if x.grad is None:  # e.g. sft does not use the rejected response
            continue
        assert torch.isfinite(x.grad).all()
        assert torch.equal(x.grad[~mask], torch.zeros_like(x.grad[~mask]))
    assert pc_junk.grad is not None and pc_junk.grad[mc].abs().sum() > 0


# ----------------------------------------------------------------------------- batched vs looped
@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_batched_equals_looped(name, hp):
    p = full_batch(B=6, seed=4)
    loss, metrics = PAIRWISE[name](p, **hp)
    parts = [PAIRWISE[name](slice_pair(p, i), **hp) for i in range(6)]
    assert torch.allclose(loss, torch.cat([lp for lp, _ in parts]), atol=1e-12, rtol=0)
    for k, v in metrics.items():
        assert v.shape == (6,) and not v.requires_grad, k
        assert torch.allclose(v, torch.cat([m[k] for _, m in parts]), atol=1e-12, rtol=0), k


@pytest.mark.parametrize("name", NAMES)
def test_metrics_detached_and_per_example(name):
    p = full_batch(B=4, seed=5)
    c = p.chosen.clone().requires_grad_()
    loss, metrics = PAIRWISE[name](with_policy(p, c, p.rejected))
    assert loss.shape == (4,) and loss.requires_grad
    assert metrics and all(v.shape == (4,) and not v.requires_grad for v in metrics.values())


# ----------------------------------------------------------------------------- limits
def _z_pairs(z: torch.Tensor, beta: float) -> PairLogps:
    """h_c = z / (2 beta), h_r = -z / (2 beta): beta (h_c - h_r) = z."""
    zero = torch.zeros_like(z)
    return PairLogps(z / (2 * beta), -z / (2 * beta), zero, zero)


def test_family_limits_equal_dpo():
    """cdpo(e=0) = robust_dpo(e=0) = gpo logistic = tdpo(zero KLs, both versions) = dpop(lam=0) =
    dpo_nll(alpha=0) = dpo, exactly in value (and to 1e-12 in gradient)."""
    p = full_batch(B=6, seed=6)
    zero_kl = PairLogps(*(list(vars(p).values())[:8]), torch.zeros(6, dtype=torch.float64),
                        torch.zeros(6, dtype=torch.float64))
    base, _ = PAIRWISE["dpo"](p, beta=0.3)
    same = [PAIRWISE["cdpo"](p, beta=0.3), PAIRWISE["robust_dpo"](p, beta=0.3),
            PAIRWISE["gpo"](p, beta=0.3, f="logistic"), PAIRWISE["tdpo"](zero_kl, beta=0.3, version=1),
            PAIRWISE["tdpo"](zero_kl, beta=0.3, version=2), PAIRWISE["dpop"](p, beta=0.3, lam=0.0),
            PAIRWISE["dpo_nll"](p, beta=0.3, alpha=0.0)]
    for loss, _ in same:
        assert torch.allclose(loss, base, atol=1e-15, rtol=0)


def test_gpo_square_is_scaled_ipo_and_gpo_hinge_is_hinge():
    """(2 tau rho - 1)^2 / (4 tau^2) = (rho - 1/(2 tau))^2 with rho = h_c - h_r."""
    p = full_batch(B=6, seed=8)
    for tau in (0.1, 0.25, 1.0):
        gsq, _ = PAIRWISE["gpo"](p, beta=2 * tau, f="square")
        assert torch.allclose(gsq / (4 * tau**2), PAIRWISE["ipo"](p, beta=tau)[0], atol=1e-10, rtol=1e-12)
        assert torch.equal(PAIRWISE["gpo"](p, beta=tau, f="hinge")[0], PAIRWISE["hinge"](p, beta=tau)[0])


def test_dpop_equals_dpo_when_chosen_above_reference():
    """penalty = max(0, ref_chosen - chosen) = 0 when chosen >= ref_chosen, whatever lam."""
    p = full_batch(B=6, seed=9)
    up = PairLogps(p.ref_chosen + torch.rand(6, dtype=torch.float64), p.rejected, p.ref_chosen, p.ref_rejected)
    loss, m = PAIRWISE["dpop"](up, beta=0.2, lam=50.0)
    assert torch.equal(loss, PAIRWISE["dpo"](up, beta=0.2)[0])
    assert torch.equal(m["penalty"], torch.zeros(6, dtype=torch.float64))
    down = PairLogps(p.ref_chosen - 1.0, p.rejected, p.ref_chosen, p.ref_rejected)
    assert (PAIRWISE["dpop"](down, beta=0.2, lam=50.0)[0] > PAIRWISE["dpo"](down, beta=0.2)[0]).all()


def test_slic_without_nll_is_pure_hinge():
    p = full_batch(B=6, seed=10)
    loss, _ = PAIRWISE["slic"](p, delta=1.5)
    assert torch.equal(loss, torch.relu(1.5 - (p.chosen - p.rejected)))


def test_orpo_without_ratio_is_sft_nll():
    p = full_batch(B=6, seed=11)
    assert torch.equal(PAIRWISE["orpo"](p, lam=0.0)[0], PAIRWISE["sft"](p)[0])
    assert torch.equal(PAIRWISE["sft"](p)[0], -p.chosen / p.chosen_len)


def test_orpo_finite_near_probability_one():
    """a -> 0 means p -> 1 and log(1 - p) -> -inf; the loss and its gradient stay finite, also in
    float32, and a very negative average (-1e4) is fine too."""
    for dtype in (torch.float32, torch.float64):
        c = torch.tensor([0.0, -1e-12, -1e4, -3.0], dtype=dtype, requires_grad=True)
        r = torch.tensor([-1.0, 0.0, -2.0, -1e4], dtype=dtype)
        n = torch.ones(4, dtype=dtype)
        loss, m = PAIRWISE["orpo"](PairLogps(c, r, chosen_len=n, rejected_len=n), lam=1.0)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(c.grad).all()
        assert torch.isfinite(m["log_odds_ratio"]).all()


def test_dpo_large_z_limits():
    """-ls(z) -> 0 as z -> +inf; at z = -1e4 it is sp(1e4) = 1e4 (finite), also in float32;
    the gradient saturates at -beta (z -> -inf) and 0 (z -> +inf)."""
    for dtype in (torch.float32, torch.float64):
        z = torch.tensor([1e4, 50.0, -1e4], dtype=dtype)
        p = _z_pairs(z, 0.1)
        c = p.chosen.clone().requires_grad_()
        loss, _ = PAIRWISE["dpo"](PairLogps(c, p.rejected, p.ref_chosen, p.ref_rejected), beta=0.1)
        assert loss[0].item() == 0.0 and loss[1].item() == pytest.approx(math.exp(-50), rel=1e-4)
        assert loss[2].item() == pytest.approx(1e4, rel=1e-6)
        loss.sum().backward()
        assert torch.allclose(c.grad, torch.tensor([0.0, 0.0, -0.1], dtype=dtype), atol=1e-7)


EXTREME = {"dpo": {}, "cdpo": {"label_smoothing": 0.1}, "robust_dpo": {"label_smoothing": 0.1}, "hinge": {},
           "nca": {}, "dpop": {}, "tdpo": {"version": 1}, "rpo": {}, "ipo": {}, "sppo": {}}


@pytest.mark.parametrize("name", sorted(EXTREME))
def test_finite_at_extreme_logits(name):
    """|z| = 1e4 gives finite losses and gradients in float32 (logsigmoid / softplus forms)."""
    z = torch.tensor([1e4, -1e4], dtype=torch.float32)
    p = _z_pairs(z, 0.1)
    c = p.chosen.clone().requires_grad_()
    two = torch.ones(2)
    q = PairLogps(c, p.rejected, p.ref_chosen, p.ref_rejected, two, two, two, -two, two, two)
    loss, _ = PAIRWISE[name](q, beta=0.1, **EXTREME[name])
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(c.grad).all()


@pytest.mark.parametrize("f", ["logistic", "hinge", "square", "truncated_square", "savage"])
def test_gpo_finite_at_extreme_logits(f):
    """All bounded-tail f are finite at |z| = 1e4 (the exponential loss e^-z is unbounded by
    definition and overflows for z below about -88 in float32)."""
    p = _z_pairs(torch.tensor([1e4, -1e4]), 0.1)
    loss, _ = PAIRWISE["gpo"](p, beta=0.1, f=f)
    assert torch.isfinite(loss).all()
    assert PAIRWISE["gpo"](_z_pairs(torch.tensor([1e4]), 0.1), beta=0.1, f="logistic")[0].item() == 0.0


def test_rpo_zero_when_logit_equals_target():
    """D(a || b) = 0 iff a = b, for both distances; and D >= 0 everywhere (a KL and a square)."""
    p = full_batch(B=6, seed=12)
    z = 0.3 * ((p.chosen - p.ref_chosen) - (p.rejected - p.ref_rejected))
    q = PairLogps(p.chosen, p.rejected, p.ref_chosen, p.ref_rejected, chosen_reward=z / 2.0,
                  rejected_reward=torch.zeros_like(z))
    for d in ("kl", "sq"):
        loss, _ = PAIRWISE["rpo"](q, beta=0.3, eta=2.0, distance=d)
        assert torch.allclose(loss, torch.zeros_like(loss), atol=1e-15)
        assert (PAIRWISE["rpo"](p, beta=0.3, distance=d)[0] >= 0).all()


def test_sppo_gradient_direction():
    """At h_c = h_r = 0 with hard labels: dL/dchosen = 2 (0 - 1/(2 beta)) = -1/beta < 0 (descent
    raises the chosen log-prob) and dL/drejected = +1/beta > 0 (descent lowers the rejected one).
    Win rate 1/2 gives target 0: no push at h = 0."""
    beta = 0.2
    zero = torch.zeros(2, dtype=torch.float64)
    c, r = zero.clone().requires_grad_(), zero.clone().requires_grad_()
    PAIRWISE["sppo"](PairLogps(c, r, zero, zero), beta=beta)[0].sum().backward()
    assert torch.allclose(c.grad, torch.full((2,), -1 / beta, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(r.grad, torch.full((2,), 1 / beta, dtype=torch.float64), atol=1e-12)
    c.grad = r.grad = None
    half = torch.full((2,), 0.5, dtype=torch.float64)
    q = PairLogps(c, r, zero, zero, chosen_winrate=half, rejected_winrate=half)
    PAIRWISE["sppo"](q, beta=beta)[0].sum().backward()
    assert torch.equal(c.grad, zero) and torch.equal(r.grad, zero)


def test_nca_limits():
    """loss = sp(-x_c) + 0.5 sp(x_c) + 0.5 sp(x_r). In x_c it is minimized where
    -s(-x) + 0.5 s(x) = 0, i.e. s(x) = 2/3, x = log 2 (the chosen reward is bounded, unlike DPO);
    in x_r it decreases to 0 as x_r -> -inf. Minimum: log(3/2) + 0.5 log 3 = 0.9547713.
    At x_c = +1e4 the loss is ~0.5e4 (finite), not 0."""
    beta = 0.5
    c = torch.tensor([2 * LOG2, 2e4], dtype=torch.float64, requires_grad=True)  # x_c = log 2, 1e4
    zero = torch.zeros(2, dtype=torch.float64)
    p = PairLogps(c, torch.tensor([-2e4, 0.0], dtype=torch.float64), zero, zero)
    loss, _ = PAIRWISE["nca"](p, beta=beta)
    assert loss[0].item() == pytest.approx(0.9547713, abs=1e-7)
    assert loss[1].item() == pytest.approx(0.5e4 + 0.5 * LOG2, rel=1e-9)
    loss.sum().backward()
    assert c.grad[0].item() == pytest.approx(0.0, abs=1e-12)
    assert c.grad[1].item() == pytest.approx(0.5 * beta, abs=1e-12)


def test_ipo_and_sppo_minimum_at_target():
    """IPO is zero at h_c - h_r = 1/(2 tau); SPPO (hard labels) at h_c = 1/(2 beta), h_r = -1/(2 beta)."""
    tau = 0.25
    p = PairLogps(t(2.0), t(0.0), t(0.0), t(0.0))
    assert PAIRWISE["ipo"](p, beta=tau)[0].item() == 0.0
    q = PairLogps(t(2.0), t(-2.0), t(0.0), t(0.0))
    assert PAIRWISE["sppo"](q, beta=tau)[0].item() == 0.0


def test_simpo_and_hinge_margins():
    """SimPO at beta (a_c - a_r) = gamma gives log 2 (the margin is the decision point);
    hinge is zero exactly when z >= 1."""
    p = pair([-2.0], [-2.5], chosen_len=[2.0], rejected_len=[2.0])  # a_c - a_r = 0.25
    assert PAIRWISE["simpo"](p, beta=2.0, gamma=0.5)[0].item() == pytest.approx(LOG2, abs=1e-12)
    loss, _ = PAIRWISE["hinge"](_z_pairs(t(1.0, 1.5, 0.999), 0.1), beta=0.1)
    assert loss.tolist() == pytest.approx([0.0, 0.0, 0.001], abs=1e-12)


def test_empty_completion_length_is_safe():
    """A zero length counts as one token: masked_sum of nothing is 0, so a = 0 (not 0/0 = nan)."""
    p = pair([0.0], [-2.0], [0.0], [-1.0], chosen_len=[0.0], rejected_len=[2.0])
    for name in ("sft", "simpo", "orpo", "dpo_nll", "slic"):
        assert torch.isfinite(PAIRWISE[name](p)[0]).all(), name
