"""KTO, NPO, D2O and DRO: closed forms, gradients, masking, batched vs looped, limit cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlhflab.losses.unpaired import (
    KTO_WEIGHT_RATIO_RANGE,
    d2o,
    dro,
    kto,
    kto_reference_point,
    kto_weight_ratio,
    npo,
)
from rlhflab.ops import masked_sum

f64 = torch.float64


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def tokens_with_junk(seq: torch.Tensor, T: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs (..., T) whose masked sum is `seq`, with nan / inf / 1e30 where masked."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(*seq.shape, T, generator=g) > 0.4
    mask[..., 0] = False  # position 0 is never a target
    mask[..., 1] = True  # at least one real token
    w = torch.rand(*seq.shape, T, generator=g, dtype=f64) * mask
    tok = seq.detach().unsqueeze(-1) * w / w.sum(-1, keepdim=True)
    junk = torch.tensor([float("nan"), float("inf"), 1e30, -float("inf")], dtype=f64)
    fill = junk[torch.arange(tok.numel()) % 4].reshape(tok.shape)
    return torch.where(mask, tok, fill).requires_grad_(), mask


def assert_detached(metrics: dict[str, torch.Tensor]) -> None:
    assert all(not v.requires_grad for v in metrics.values())


def central_diff(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """d sum(f(x)) / dx by central differences, one coordinate at a time (float64)."""
    out = torch.zeros_like(x)
    for i in range(x.numel()):
        d = torch.zeros_like(x).view(-1)
        d[i] = eps
        d = d.view_as(x)
        out.view(-1)[i] = (f(x + d).sum() - f(x - d).sum()) / (2 * eps)
    return out


# ----------------------------------------------------------------------------------------- KTO


def test_kto_closed_form():
    """beta=1, z0=0.5, lambda_D=2, lambda_U=1.5, r=[2, 0, 1, -1], desirable [T, T, F, F]:
    2(1 - s(1.5)) = 2 s(-1.5) = 0.3648510; 2(1 - s(-0.5)) = 2 s(0.5) = 1.2449187;
    1.5(1 - s(0.5 - 1)) = 1.5 s(0.5) = 0.9336890; 1.5(1 - s(0.5 + 1)) = 1.5 s(-1.5) = 0.2736383."""
    ref = torch.tensor([-3.0, -1.0, -2.0, -5.0])
    r = torch.tensor([2.0, 0.0, 1.0, -1.0])
    des = torch.tensor([True, True, False, False])
    loss, m = kto(ref + r, ref, des, 0.5, beta=1.0, desirable_weight=2.0, undesirable_weight=1.5)
    want = torch.tensor([0.3648510, 1.2449187, 0.9336890, 0.2736383])
    assert torch.allclose(loss, want, atol=1e-6)
    assert torch.allclose(m["log_ratio"], r, atol=1e-6)
    assert torch.allclose(m["reward"], r, atol=1e-6)  # beta = 1
    assert torch.equal(m["desirable"], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert torch.equal(m["ref_point"], torch.full((4,), 0.5))
    # v = lambda_y - loss: the paper's value function
    assert torch.allclose(m["value"], torch.tensor([2.0, 2.0, 1.5, 1.5]) - want, atol=1e-6)
    assert_detached(m)
    # beta scales the reward and the sigmoid argument: beta=0.1, z0=0, r=2 desirable -> 1 - s(0.2)
    loss_b, m_b = kto(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([True]), 0.0)
    assert loss_b.item() == pytest.approx(1 - sig(0.2), abs=1e-7)
    assert m_b["reward"].item() == pytest.approx(0.2, abs=1e-7)


def test_kto_gradient():
    """d/dlogp lambda_D (1 - s(a)) = -lambda_D beta s(a)(1 - s(a)), a = beta (r - z0);
    d/dlogp lambda_U (1 - s(b)) = +lambda_U beta s(b)(1 - s(b)), b = beta (z0 - r). The paper's
    form lambda_y - v(x, y) has the same value and gradient. z0 gets no gradient."""
    torch.manual_seed(0)
    logp = (-5 * torch.rand(6, dtype=f64)).requires_grad_()
    ref = (-5 * torch.rand(6, dtype=f64)).requires_grad_()
    des = torch.tensor([True, False, True, False, False, True])
    z0 = torch.rand(6, dtype=f64)
    beta, ld, lu = 0.7, 1.3, 0.8
    assert torch.autograd.gradcheck(lambda a, b: kto(a, b, des, z0, beta, ld, lu)[0], (logp, ref))
    loss, _ = kto(logp, ref, des, z0, beta, ld, lu)
    loss.sum().backward()
    r = (logp - ref).detach()
    a, b = torch.sigmoid(beta * (r - z0)), torch.sigmoid(beta * (z0 - r))
    want = torch.where(des, -ld * beta * a * (1 - a), lu * beta * b * (1 - b))
    assert torch.allclose(logp.grad, want, atol=1e-12)
    assert torch.allclose(ref.grad, -want, atol=1e-12)
    # the paper's lambda_y - v(x, y): same value, same gradient
    lp2 = logp.detach().clone().requires_grad_()
    lam = torch.where(des, torch.tensor(ld, dtype=f64), torch.tensor(lu, dtype=f64))
    r2 = lp2 - ref.detach()
    paper = lam - lam * torch.sigmoid(beta * torch.where(des, r2 - z0, z0 - r2))
    paper.sum().backward()
    assert torch.allclose(paper.detach(), loss.detach(), atol=1e-12)
    assert torch.allclose(lp2.grad, logp.grad, atol=1e-12)
    # a reference point that carries a graph is still treated as a constant
    z0g = torch.tensor(0.3, dtype=f64, requires_grad=True)
    lp3 = logp.detach().clone().requires_grad_()
    kto(lp3, ref.detach(), des, z0g)[0].sum().backward()
    assert z0g.grad is None and lp3.grad is not None


def test_kto_reference_point():
    """Mismatched ratios [0.5, -1, 2.5] -> mean 2/3; [-1, -2] -> mean -1.5 clamped to 0."""
    lp = torch.tensor([-1.0, -4.0, 0.5], requires_grad=True)
    z0 = kto_reference_point(lp, torch.tensor([-1.5, -3.0, -2.0]))
    assert z0.shape == () and z0.item() == pytest.approx(2 / 3, abs=1e-6)
    assert not z0.requires_grad
    assert kto_reference_point(torch.tensor([-3.0, -4.0]), torch.tensor([-2.0, -2.0])).item() == 0.0
    # any shape (e.g. micro-batches stacked) gives the mean over all entries
    flat = torch.randn(12, dtype=f64)
    z = kto_reference_point(flat.view(3, 4), torch.zeros(3, 4, dtype=f64))
    assert z.item() == pytest.approx(max(0.0, flat.mean().item()), abs=1e-12)


def test_kto_weight_ratio():
    """lambda_D n_D / (lambda_U n_U): 1:3 data needs lambda_D in [3, 4] with lambda_U = 1."""
    lo, hi = KTO_WEIGHT_RATIO_RANGE
    assert (lo, hi) == (1.0, 4 / 3)
    assert kto_weight_ratio(100, 300) == pytest.approx(1 / 3)
    assert kto_weight_ratio(100, 300, 3.0, 1.0) == pytest.approx(1.0)
    assert kto_weight_ratio(100, 300, 4.0, 1.0) == pytest.approx(4 / 3)
    assert kto_weight_ratio(300, 100, 1.0, 2.5) == pytest.approx(1.2)
    assert kto_weight_ratio(5, 0) == math.inf
    assert kto_weight_ratio(0, 5) == 0.0
    for bad in [(0, 0, 1.0, 1.0), (-1, 3, 1.0, 1.0), (1, 3, 0.0, 1.0), (1, 3, 1.0, -1.0)]:
        with pytest.raises(ValueError):
            kto_weight_ratio(*bad)


def test_kto_masking():
    """Token log-probs with nan / inf / 1e30 at masked positions, reduced by masked_sum, give the
    clean loss and finite gradients that are 0 at masked positions."""
    torch.manual_seed(1)
    logp, ref = -4 * torch.rand(5, dtype=f64), -4 * torch.rand(5, dtype=f64)
    des = torch.tensor([True, False, True, True, False])
    clean, _ = kto(logp, ref, des, 0.2, beta=0.5)
    tok, mask = tokens_with_junk(logp)
    loss, _ = kto(masked_sum(tok, mask, dim=-1), ref, des, 0.2, beta=0.5)
    assert torch.allclose(loss, clean, atol=1e-12)
    loss.sum().backward()
    assert torch.isfinite(tok.grad).all() and torch.all(tok.grad[~mask] == 0)


def test_kto_batched_vs_looped():
    torch.manual_seed(2)
    logp, ref = -4 * torch.rand(7, dtype=f64), -4 * torch.rand(7, dtype=f64)
    des = torch.rand(7) > 0.5
    for z0 in (0.3, torch.rand(7, dtype=f64)):
        full, _ = kto(logp, ref, des, z0, 0.3, 1.5, 0.5)
        for i in range(7):
            zi = z0 if isinstance(z0, float) else z0[i : i + 1]
            one, _ = kto(logp[i : i + 1], ref[i : i + 1], des[i : i + 1], zi, 0.3, 1.5, 0.5)
            assert torch.allclose(full[i : i + 1], one, atol=1e-14)


def test_kto_limits():
    """z0 = 0, equal weights, r = 0: 1 - s(0) = 0.5 either label. A very good desirable example
    (r -> inf) and a very bad undesirable one (r -> -inf) cost 0 with 0 gradient; the opposite
    extremes cost lambda_y. Undesirable at r equals desirable at 2 z0 - r (mirror about z0)."""
    zero = torch.zeros(2, dtype=f64)
    loss, _ = kto(zero, zero, torch.tensor([True, False]), 0.0)
    assert torch.allclose(loss, torch.full((2,), 0.5, dtype=f64), atol=1e-15)
    r = torch.tensor([1e4, -1e4, -1e4, 1e4], dtype=f64, requires_grad=True)
    des = torch.tensor([True, False, True, False])
    loss, _ = kto(r, torch.zeros(4, dtype=f64), des, 0.0, 1.0, 2.0, 3.0)
    assert torch.allclose(loss, torch.tensor([0.0, 0.0, 2.0, 3.0], dtype=f64), atol=1e-12)
    loss.sum().backward()
    assert torch.allclose(r.grad, torch.zeros(4, dtype=f64), atol=1e-12)
    rr, z0 = torch.randn(5, dtype=f64), 0.4
    und, _ = kto(rr, torch.zeros(5, dtype=f64), torch.zeros(5, dtype=torch.bool), z0, 0.9)
    mir, _ = kto(2 * z0 - rr, torch.zeros(5, dtype=f64), torch.ones(5, dtype=torch.bool), z0, 0.9)
    assert torch.allclose(und, mir, atol=1e-14)


# ----------------------------------------------------------------------------------------- NPO


def test_npo_closed_form():
    """beta=1: h=1 -> 2 log(1 + e) = 2.6265234; h=-1 -> 2 log(1 + 1/e) = 0.6265234;
    h=0 -> 2 log 2. beta=0.5, h=2: 4 log(1 + e) = 5.2530468. beta=0.1, h=0: 20 log 2."""
    ref = torch.tensor([-2.0, -3.0, -1.0])
    loss, m = npo(ref + torch.tensor([1.0, -1.0, 0.0]), ref, beta=1.0)
    assert torch.allclose(loss, torch.tensor([2.6265234, 0.6265234, 2 * math.log(2)]), atol=1e-6)
    assert torch.allclose(m["log_ratio"], torch.tensor([1.0, -1.0, 0.0]), atol=1e-6)
    assert torch.allclose(m["weight"], torch.tensor([2 * sig(1), 2 * sig(-1), 1.0]), atol=1e-6)
    assert_detached(m)
    half, _ = npo(torch.tensor([2.0]), torch.tensor([0.0]), beta=0.5)
    assert half.item() == pytest.approx(5.2530468, abs=1e-6)
    default, _ = npo(torch.tensor([-7.0]), torch.tensor([-7.0]))
    assert default.item() == pytest.approx(20 * math.log(2), abs=1e-5)


def test_npo_gradient():
    """d/dlogp (2/beta) log(1 + e^(beta h)) = 2 s(beta h) = 2 pi^b / (pi^b + pi_ref^b) (NPO weight)."""
    torch.manual_seed(3)
    logp = (-6 * torch.rand(6, dtype=f64)).requires_grad_()
    ref = (-6 * torch.rand(6, dtype=f64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: npo(a, b, beta=0.3)[0], (logp, ref))
    loss, m = npo(logp, ref, beta=0.3)
    loss.sum().backward()
    h = (logp - ref).detach()
    pi_b, ref_b = torch.exp(0.3 * logp.detach()), torch.exp(0.3 * ref.detach())
    want = 2 * pi_b / (pi_b + ref_b)
    assert torch.allclose(logp.grad, want, atol=1e-12)
    assert torch.allclose(logp.grad, 2 * torch.sigmoid(0.3 * h), atol=1e-12)
    assert torch.allclose(m["weight"], logp.grad, atol=1e-12)
    assert torch.allclose(ref.grad, -want, atol=1e-12)


def test_npo_masking():
    torch.manual_seed(4)
    logp, ref = -5 * torch.rand(4, dtype=f64), -5 * torch.rand(4, dtype=f64)
    clean, _ = npo(logp, ref, beta=0.2)
    tok, mask = tokens_with_junk(logp, seed=4)
    loss, _ = npo(masked_sum(tok, mask, dim=-1), ref, beta=0.2)
    assert torch.allclose(loss, clean, atol=1e-12)
    loss.sum().backward()
    assert torch.isfinite(tok.grad).all() and torch.all(tok.grad[~mask] == 0)


def test_npo_batched_vs_looped():
    torch.manual_seed(5)
    logp, ref = torch.randn(6, dtype=f64), torch.randn(6, dtype=f64)
    full, _ = npo(logp, ref)
    looped = torch.cat([npo(logp[i : i + 1], ref[i : i + 1])[0] for i in range(6)])
    assert torch.allclose(full, looped, atol=1e-14)


def test_npo_limits():
    """beta -> 0: (2/beta) softplus(beta h) - (2/beta) log 2 = h + beta h^2 / 4 + O(beta^3) -> h,
    the gradient-ascent loss on the log ratio, and the weight 2 s(beta h) -> 1. Bounded below by
    0: h -> -inf gives 0; h -> +inf grows like 2h (no overflow)."""
    h = torch.tensor([-3.0, -0.5, 0.0, 1.0, 4.0], dtype=f64)
    errors = []
    for beta in (1e-1, 1e-4, 1e-7):
        loss, m = npo(h, torch.zeros(5, dtype=f64), beta=beta)
        gap = loss - 2 / beta * math.log(2) - h
        assert torch.allclose(gap, beta * h**2 / 4, atol=10 * beta**2 + 1e-8)
        assert torch.allclose(m["weight"], torch.ones(5, dtype=f64), atol=beta * 3)
        errors.append(gap.abs().max().item())
    assert errors[-1] < 1e-5 and errors[0] > errors[1] > errors[2]
    far, _ = npo(torch.tensor([-1e4, 1e4], dtype=f64), torch.zeros(2, dtype=f64), beta=1.0)
    assert far[0].item() == pytest.approx(0.0, abs=1e-12)
    assert far[1].item() == pytest.approx(2e4, rel=1e-12)
    assert (npo(torch.randn(50, dtype=f64) * 10, torch.zeros(50, dtype=f64))[0] > 0).all()


# ----------------------------------------------------------------------------------------- D2O


def test_d2o_closed_form():
    """beta=1, alpha=0.5. Row 0: sample ratios [1, 3] (mean 2), negative ratio 2:
    z = 2 - 0.5*2 = 1, loss -log s(1) = 0.3132617. Row 1: same, second sample masked: mean 1,
    z = 0, loss log 2. Row 2: ratios [0, -2] mean -1, negative -4: z = -1 + 2 = 1 -> 0.3132617."""
    sref = torch.tensor([[-5.0, -6.0], [-5.0, -6.0], [-1.0, -2.0]])
    s = sref + torch.tensor([[1.0, 3.0], [1.0, 3.0], [0.0, -2.0]])
    nref = torch.tensor([-4.0, -4.0, -3.0])
    n = nref + torch.tensor([2.0, 2.0, -4.0])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    loss, m = d2o(n, nref, s, sref, mask, beta=1.0, alpha=0.5)
    assert torch.allclose(loss, torch.tensor([0.3132617, math.log(2), 0.3132617]), atol=1e-6)
    assert torch.allclose(m["margin"], torch.tensor([1.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(m["sample_log_ratio"], torch.tensor([2.0, 1.0, -1.0]), atol=1e-6)
    assert torch.allclose(m["neg_log_ratio"], torch.tensor([2.0, 2.0, -4.0]), atol=1e-6)
    assert torch.equal(m["num_samples"], torch.tensor([2.0, 1.0, 2.0]))
    assert torch.equal(m["accuracy"], torch.tensor([1.0, 0.0, 1.0]))
    assert_detached(m)
    # defaults beta = alpha = 0.1, no mask: z = 0.1*2 - 0.1*2 = 0 -> log 2
    assert d2o(n[:1], nref[:1], s[:1], sref[:1])[0].item() == pytest.approx(math.log(2), abs=1e-6)


def test_d2o_gradient():
    """With z = beta mean_valid(s_i) - alpha h_l: d/dneg_logp = alpha s(-z);
    d/dsample_logp_i = -(beta / K_b) s(-z) for valid i, 0 for masked i (the paper's eq. 4)."""
    torch.manual_seed(6)
    B, K = 4, 3
    n, nr = (-5 * torch.rand(B, dtype=f64)).requires_grad_(), (-5 * torch.rand(B, dtype=f64)).requires_grad_()
    s = (-5 * torch.rand(B, K, dtype=f64)).requires_grad_()
    sr = (-5 * torch.rand(B, K, dtype=f64)).requires_grad_()
    mask = torch.tensor([[True, True, True], [True, False, True], [False, False, True], [True, True, False]])
    fn = lambda a, b, c, d: d2o(a, b, c, d, mask, beta=0.4, alpha=0.7)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (n, nr, s, sr))
    loss, m = d2o(n, nr, s, sr, mask, beta=0.4, alpha=0.7)
    loss.sum().backward()
    w = torch.sigmoid(-m["margin"])  # (B,)
    kb = mask.sum(-1).double()
    assert torch.allclose(n.grad, 0.7 * w, atol=1e-12)
    assert torch.allclose(nr.grad, -0.7 * w, atol=1e-12)
    assert torch.allclose(s.grad, -(0.4 * w / kb).unsqueeze(-1) * mask, atol=1e-12)
    assert torch.allclose(sr.grad, (0.4 * w / kb).unsqueeze(-1) * mask, atol=1e-12)


def test_d2o_masking():
    """Token level: (B, K, T) log-probs with junk at masked tokens, reduced by masked_sum, equal
    the clean loss. Sample level: masked samples holding nan / inf / 1e30 equal dropping them
    (a row with samples [a, junk] equals the row [a] with K = 1). No nan in any gradient."""
    torch.manual_seed(7)
    B, K = 3, 4
    n, nr = -5 * torch.rand(B, dtype=f64), -5 * torch.rand(B, dtype=f64)
    s, sr = -5 * torch.rand(B, K, dtype=f64), -5 * torch.rand(B, K, dtype=f64)
    smask = torch.tensor([[True, True, True, True], [True, False, True, False], [False, True, False, False]])
    clean, _ = d2o(n, nr, s, sr, smask, beta=0.5, alpha=0.3)
    tok, tmask = tokens_with_junk(s, seed=7)
    s_tok = masked_sum(tok, tmask, dim=-1)  # (B, K)
    junk = torch.tensor([float("nan"), float("inf"), 1e30, -float("inf")], dtype=f64)
    s_junk = torch.where(smask, s_tok, junk[torch.arange(B * K) % 4].view(B, K))
    sr_junk = torch.where(smask, sr, torch.full_like(sr, float("nan")))
    loss, _ = d2o(n, nr, s_junk, sr_junk, smask, beta=0.5, alpha=0.3)
    assert torch.allclose(loss, clean, atol=1e-12)
    loss.sum().backward()
    assert torch.isfinite(tok.grad).all() and torch.all(tok.grad[~tmask] == 0)
    assert torch.all(tok.grad[~smask] == 0)
    for b in range(B):  # each row equals the row restricted to its valid samples
        keep = smask[b]
        row = slice(b, b + 1)
        one, _ = d2o(n[row], nr[row], s[row][:, keep], sr[row][:, keep], beta=0.5, alpha=0.3)
        assert torch.allclose(loss[b : b + 1].detach(), one, atol=1e-12)


def test_d2o_batched_vs_looped():
    torch.manual_seed(8)
    B, K = 5, 3
    n, nr = torch.randn(B, dtype=f64), torch.randn(B, dtype=f64)
    s, sr = torch.randn(B, K, dtype=f64), torch.randn(B, K, dtype=f64)
    mask = torch.rand(B, K) > 0.3
    full, _ = d2o(n, nr, s, sr, mask)
    for i in range(B):
        one, _ = d2o(n[i : i + 1], nr[i : i + 1], s[i : i + 1], sr[i : i + 1], mask[i : i + 1])
        assert torch.allclose(full[i : i + 1], one, atol=1e-14)


def test_d2o_limits():
    """K = 1, alpha = beta: DPO, -log s(beta (r_w - r_l)) with the sample as y_w. K identical
    samples equal K = 1. theta = reference: z = 0, loss log 2. No valid samples: the negative term
    alone, -log s(-alpha h_l) = (alpha / 2) NPO(beta = alpha). A large margin costs 0."""
    torch.manual_seed(9)
    n, nr, s, sr = (torch.randn(4, dtype=f64) for _ in range(4))
    loss, _ = d2o(n, nr, s.unsqueeze(-1), sr.unsqueeze(-1), beta=0.3, alpha=0.3)
    dpo = -F.logsigmoid(0.3 * ((s - sr) - (n - nr)))
    assert torch.allclose(loss, dpo, atol=1e-14)
    rep, _ = d2o(n, nr, s.unsqueeze(-1).expand(4, 5), sr.unsqueeze(-1).expand(4, 5), beta=0.2, alpha=0.6)
    single, _ = d2o(n, nr, s.unsqueeze(-1), sr.unsqueeze(-1), beta=0.2, alpha=0.6)
    assert torch.allclose(rep, single, atol=1e-14)
    at_ref, _ = d2o(nr, nr, sr.unsqueeze(-1).expand(4, 3), sr.unsqueeze(-1).expand(4, 3))
    assert torch.allclose(at_ref, torch.full((4,), math.log(2), dtype=f64), atol=1e-14)
    none, m = d2o(n, nr, s.unsqueeze(-1), sr.unsqueeze(-1), torch.zeros(4, 1, dtype=torch.bool), alpha=0.25)
    assert torch.allclose(none, 0.25 / 2 * npo(n, nr, beta=0.25)[0], atol=1e-14)
    assert torch.equal(m["num_samples"], torch.zeros(4, dtype=f64))
    far, _ = d2o(torch.tensor([-1e4], dtype=f64), torch.zeros(1, dtype=f64), torch.zeros(1, 2, dtype=f64),
                 torch.zeros(1, 2, dtype=f64), beta=0.1, alpha=0.1)
    assert far.item() == pytest.approx(0.0, abs=1e-12)


def test_d2o_separate_references():
    """pi_r- enters only the sample term and pi_r+ only the negative term: lowering every sample's
    reference log-prob by c raises the logit by beta c, as does raising the negative's reference
    log-prob by beta c / alpha (not by c)."""
    torch.manual_seed(10)
    n, nr = torch.randn(3, dtype=f64), torch.randn(3, dtype=f64)
    s, sr = torch.randn(3, 4, dtype=f64), torch.randn(3, 4, dtype=f64)
    c, beta, alpha = 0.8, 0.2, 0.5
    a, ma = d2o(n, nr, s, sr - c, beta=beta, alpha=alpha)
    b, mb = d2o(n, nr + beta * c / alpha, s, sr, beta=beta, alpha=alpha)
    base, m0 = d2o(n, nr, s, sr, beta=beta, alpha=alpha)
    assert torch.allclose(a, b, atol=1e-14)
    assert torch.allclose(ma["margin"] - m0["margin"], torch.full((3,), beta * c, dtype=f64), atol=1e-14)
    assert torch.equal(ma["neg_log_ratio"], m0["neg_log_ratio"])
    assert not torch.allclose(a, base)


# ----------------------------------------------------------------------------------------- DRO


def paper_dro(logp, ref, r, v, tau):
    """L_DRO = 1/2 (r - V - tau log pi/pi_ref)^2, arXiv 2405.19107, written out independently."""
    return 0.5 * (r - v - tau * (logp - ref)) ** 2


def test_dro_closed_form():
    """tau=1: r=1, V=0.25, h=0.5: delta = 0.25, value_loss = 1/2 * 0.0625 = 0.03125 = policy_loss
    (1/(2 tau)) delta^2, loss 0.0625. tau=2: r=0, V=1, h=-1: delta = 0 - 1 + 2 = 1, value_loss = 0.5,
    policy_loss = 1 / 4 = 0.25; without the 1/tau rescaling policy_loss = 0.5."""
    ref = torch.tensor([-3.0])
    loss, m = dro(ref + 0.5, ref, torch.tensor([1.0]), torch.tensor([0.25]), tau=1.0)
    assert loss.item() == pytest.approx(0.0625, abs=1e-7)
    assert m["value_loss"].item() == pytest.approx(0.03125, abs=1e-7)
    assert m["policy_loss"].item() == pytest.approx(0.03125, abs=1e-7)
    assert m["residual"].item() == pytest.approx(0.25, abs=1e-7)
    assert m["advantage"].item() == pytest.approx(0.75, abs=1e-7)
    assert m["log_ratio"].item() == pytest.approx(0.5, abs=1e-7)
    assert m["dro_loss"].item() == pytest.approx(0.03125, abs=1e-7)
    assert_detached(m)
    loss2, m2 = dro(ref - 1.0, ref, torch.tensor([0.0]), torch.tensor([1.0]), tau=2.0)
    assert (m2["value_loss"].item(), m2["policy_loss"].item()) == pytest.approx((0.5, 0.25), abs=1e-7)
    assert loss2.item() == pytest.approx(0.75, abs=1e-7)
    _, m3 = dro(ref - 1.0, ref, torch.tensor([0.0]), torch.tensor([1.0]), tau=2.0, rescale_policy_grad=False)
    assert m3["policy_loss"].item() == pytest.approx(0.5, abs=1e-7)


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_dro_gradients_match_paper(tau):
    """Paper: grad_V = V - r + tau h; grad_theta = -tau [(r - V) grad log pi - (tau/2) grad h^2]
    = -tau (r - V - tau h) grad log pi, used rescaled by 1/tau: -(r - V) + tau h per unit of
    grad log pi. Checked against the analytic forms and against central differences of L_DRO
    written out independently (gradcheck of the returned loss itself cannot apply: its
    stop-gradients make autograd differ from finite differences by design). The reward gets none."""
    torch.manual_seed(11)
    logp = (-5 * torch.rand(5, dtype=f64)).requires_grad_()
    ref = -5 * torch.rand(5, dtype=f64)
    r = torch.rand(5, dtype=f64).requires_grad_()
    v = torch.randn(5, dtype=f64).requires_grad_()
    for rescale in (True, False):
        for x in (logp, r, v):
            x.grad = None
        dro(logp, ref, r, v, tau=tau, rescale_policy_grad=rescale)[0].sum().backward()
        h, delta = (logp - ref).detach(), (r - v - tau * (logp - ref)).detach()
        c = tau if rescale else 1.0
        assert torch.allclose(v.grad, v.detach() - r.detach() + tau * h, atol=1e-12)
        assert torch.allclose(logp.grad, -(tau / c) * delta, atol=1e-12)
        if rescale:
            assert torch.allclose(logp.grad, -(r - v).detach() + tau * h, atol=1e-12)
        assert r.grad is None or torch.all(r.grad == 0)
        fd_v = central_diff(lambda x: paper_dro(logp.detach(), ref, r.detach(), x, tau), v.detach())
        fd_lp = central_diff(lambda x: paper_dro(x, ref, r.detach(), v.detach(), tau), logp.detach())
        assert torch.allclose(v.grad, fd_v, atol=1e-7)
        assert torch.allclose(logp.grad, fd_lp / c, atol=1e-7)
    # unrescaled, the two gradients are exactly autograd's gradient of L_DRO
    lp2, v2 = logp.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
    paper_dro(lp2, ref, r.detach(), v2, tau).sum().backward()
    lp3, v3 = logp.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
    dro(lp3, ref, r.detach(), v3, tau=tau, rescale_policy_grad=False)[0].sum().backward()
    assert torch.allclose(lp3.grad, lp2.grad, atol=1e-12) and torch.allclose(v3.grad, v2.grad, atol=1e-12)


def test_dro_masking():
    torch.manual_seed(12)
    logp, ref = -5 * torch.rand(4, dtype=f64), -5 * torch.rand(4, dtype=f64)
    r, v = torch.rand(4, dtype=f64), torch.randn(4, dtype=f64)
    clean, _ = dro(logp, ref, r, v, tau=0.5)
    tok, mask = tokens_with_junk(logp, seed=12)
    loss, _ = dro(masked_sum(tok, mask, dim=-1), ref, r, v, tau=0.5)
    assert torch.allclose(loss, clean, atol=1e-12)
    loss.sum().backward()
    assert torch.isfinite(tok.grad).all() and torch.all(tok.grad[~mask] == 0)


def test_dro_batched_vs_looped():
    torch.manual_seed(13)
    logp, ref, r, v = (torch.randn(6, dtype=f64) for _ in range(4))
    full, _ = dro(logp, ref, r, v, tau=0.7)
    rows = [slice(i, i + 1) for i in range(6)]
    looped = torch.cat([dro(logp[j], ref[j], r[j], v[j], tau=0.7)[0] for j in rows])
    assert torch.allclose(full, looped, atol=1e-14)


def test_dro_limits():
    """At the optimum V = r - tau h both losses and both gradients are 0. At pi = pi_ref (h = 0)
    the value part is plain regression 1/2 (r - V)^2 and the (rescaled) policy gradient is
    -(r - V): REINFORCE with the value as baseline."""
    torch.manual_seed(14)
    logp = torch.randn(5, dtype=f64).requires_grad_()
    ref, r = torch.randn(5, dtype=f64), torch.rand(5, dtype=f64)
    tau = 0.8
    v = (r - tau * (logp - ref)).detach().requires_grad_()
    loss, m = dro(logp, ref, r, v, tau=tau)
    assert torch.allclose(loss, torch.zeros(5, dtype=f64), atol=1e-14)
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.zeros(5, dtype=f64), atol=1e-14)
    assert torch.allclose(v.grad, torch.zeros(5, dtype=f64), atol=1e-14)
    lp = ref.clone().requires_grad_()
    v2 = torch.randn(5, dtype=f64).requires_grad_()
    loss2, m2 = dro(lp, ref, r, v2, tau=tau)
    assert torch.allclose(m2["value_loss"], 0.5 * (r - v2.detach()) ** 2, atol=1e-14)
    loss2.sum().backward()
    assert torch.allclose(lp.grad, -(r - v2.detach()), atol=1e-14)
