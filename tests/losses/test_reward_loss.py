import math

import pytest
import torch

from rlhflab.losses.reward import bradley_terry, safe_rlhf_cost_loss


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_bradley_terry_closed_form():
    """r_c=1, r_r=0: -log s(1) = log(1+e^-1) = 0.3132617; margin 1: -log s(0) = log 2."""
    c, r = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    loss, m = bradley_terry(c, r)
    assert torch.allclose(loss, torch.tensor([0.3132617, 1.3132617, math.log(2)]), atol=1e-6)
    assert torch.equal(m["accuracy"], torch.tensor([1.0, 0.0, 0.0]))  # a tie is not correct
    assert torch.equal(m["margin"], torch.tensor([1.0, -1.0, 0.0]))
    assert torch.equal(m["chosen_score"], c) and torch.equal(m["rejected_score"], r)
    loss_m, _ = bradley_terry(c, r, margin=torch.tensor([1.0, 1.0, 0.5]))
    assert torch.allclose(loss_m, torch.tensor([math.log(2), -logsig(-2.0), -logsig(-0.5)]), atol=1e-6)
    # centering: + coef * (r_c + r_r)^2 = 0.1 * [1, 1, 16]
    loss_c, _ = bradley_terry(c, r, center_coef=0.1)
    assert torch.allclose(loss_c - loss, torch.tensor([0.1, 0.1, 1.6]), atol=1e-6)
    assert all(not v.requires_grad for v in m.values())


def test_bradley_terry_gradient():
    c = torch.randn(4, dtype=torch.float64, requires_grad=True)
    r = torch.randn(4, dtype=torch.float64, requires_grad=True)
    mg = torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: bradley_terry(a, b, mg, 0.3)[0], (c, r))
    # analytic: d/dr_c = -sigmoid(-(r_c - r_r - m)) = sigmoid(r_c - r_r - m) - 1
    loss, _ = bradley_terry(c, r, mg)
    loss.sum().backward()
    want = torch.sigmoid(c - r - mg) - 1
    assert torch.allclose(c.grad, want.detach(), atol=1e-12)
    assert torch.allclose(r.grad, -want.detach(), atol=1e-12)


def test_bradley_terry_limits():
    c, r = torch.randn(5), torch.randn(5)
    assert torch.equal(bradley_terry(c, r, margin=0.0)[0], bradley_terry(c, r)[0])
    assert torch.equal(bradley_terry(c, r, margin=torch.zeros(5))[0], bradley_terry(c, r)[0])
    assert bradley_terry(torch.tensor([1e4]), torch.tensor([0.0]))[0].item() == pytest.approx(0.0, abs=1e-6)
    huge_wrong = bradley_terry(torch.tensor([0.0]), torch.tensor([1e4]))[0]
    assert huge_wrong.item() == pytest.approx(1e4, rel=1e-6)  # -log s(-x) ~ x, finite


def test_bradley_terry_per_example_independent_of_batch():
    c, r = torch.randn(6), torch.randn(6)
    full, _ = bradley_terry(c, r)
    assert torch.allclose(full[2:4], bradley_terry(c[2:4], r[2:4])[0], atol=1e-7)


def test_cost_loss_closed_form():
    """c_chosen=-1 (safe), c_rejected=1 (unsafe): -log s(2) - log s(1) - log s(1) = 0.7534513.
    Both labelled safe with costs (0, 0): 3 log 2. Chosen unsafe at c=1 with rejected unsafe at
    c=3: -log s(2) - log s(3) - log s(1)."""
    cc = torch.tensor([-1.0, 0.0, 1.0])
    cr = torch.tensor([1.0, 0.0, 3.0])
    cs = torch.tensor([True, True, False])
    rs = torch.tensor([False, True, False])
    loss, m = safe_rlhf_cost_loss(cc, cr, cs, rs)
    want = torch.tensor([0.7534513, 3 * math.log(2), -(logsig(2) + logsig(3) + logsig(1))])
    assert torch.allclose(loss, want, atol=1e-6)
    assert torch.equal(m["accuracy"], torch.tensor([1.0, 0.0, 1.0]))
    # sign: row 0 both right; row 1 costs 0 are not < 0 -> 0 right; row 2 both > 0 and unsafe
    assert torch.equal(m["sign_accuracy"], torch.tensor([1.0, 0.0, 1.0]))


def test_cost_loss_direction():
    # the loss is lower when the rejected (more harmful) response costs more
    cs, rs = torch.tensor([True]), torch.tensor([False])
    good, _ = safe_rlhf_cost_loss(torch.tensor([-2.0]), torch.tensor([2.0]), cs, rs)
    bad, _ = safe_rlhf_cost_loss(torch.tensor([2.0]), torch.tensor([-2.0]), cs, rs)
    assert good.item() < bad.item()
    # limit: far apart with correct signs -> 0
    far, _ = safe_rlhf_cost_loss(torch.tensor([-1e4]), torch.tensor([1e4]), cs, rs)
    assert far.item() == pytest.approx(0.0, abs=1e-6)


def test_cost_loss_gradient():
    cc = torch.randn(5, dtype=torch.float64, requires_grad=True)
    cr = torch.randn(5, dtype=torch.float64, requires_grad=True)
    cs, rs = torch.rand(5) > 0.5, torch.rand(5) > 0.5
    assert torch.autograd.gradcheck(lambda a, b: safe_rlhf_cost_loss(a, b, cs, rs)[0], (cc, cr))
    loss, _ = safe_rlhf_cost_loss(cc, cr, cs, rs)
    loss.sum().backward()
    s_c = 1 - 2 * cs.double()
    # d/dc_chosen [-log s(c_r - c_c) - log s(s_c c_c)] = s(-(c_r - c_c)) - s_c * s(-s_c c_c)
    want = torch.sigmoid(cc - cr) - s_c * torch.sigmoid(-s_c * cc)
    assert torch.allclose(cc.grad, want.detach(), atol=1e-12)


def test_cost_loss_matches_bt_plus_classification():
    # pairwise part equals Bradley-Terry with the harmful response as the "winner" of the cost
    cc, cr = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    cs, rs = torch.tensor([True, False, True, False]), torch.tensor([False, False, True, True])
    loss, _ = safe_rlhf_cost_loss(cc, cr, cs, rs)
    bt, _ = bradley_terry(cr, cc)
    s_c, s_r = 1 - 2 * cs.double(), 1 - 2 * rs.double()
    cls = -torch.nn.functional.logsigmoid(s_c * cc) - torch.nn.functional.logsigmoid(s_r * cr)
    assert torch.allclose(loss, bt + cls, atol=1e-12)
