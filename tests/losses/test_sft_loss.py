import torch

from rlhflab.losses.sft import sft_loss
from rlhflab.ops import token_logps


def test_closed_form():
    """logps [[0,-1,-2],[0,-0.5,-9]], mask [[F,T,T],[F,T,F]] -> loss [3, 0.5], tokens [2, 1]."""
    logps = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, -9.0]])
    mask = torch.tensor([[False, True, True], [False, True, False]])
    loss, metrics = sft_loss(logps, mask)
    assert torch.allclose(loss, torch.tensor([3.0, 0.5]), atol=1e-6)
    assert torch.equal(metrics["tokens"], torch.tensor([2.0, 1.0]))
    assert torch.equal(metrics["nll_sum"], loss.detach())
    assert not metrics["nll_sum"].requires_grad


def test_gradient_matches_analytic():
    torch.manual_seed(0)
    logps = (-torch.rand(3, 5, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(3, 5) > 0.4
    loss, _ = sft_loss(logps, mask)
    loss.sum().backward()
    assert torch.allclose(logps.grad, -mask.double(), atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: sft_loss(x, mask)[0], (logps.detach().requires_grad_(),))


def test_padding_does_not_change_loss():
    torch.manual_seed(1)
    logits = torch.randn(1, 4, 7, dtype=torch.float64)
    ids = torch.randint(0, 7, (1, 4))
    mask = torch.tensor([[False, True, True, True]])
    loss, _ = sft_loss(token_logps(logits, ids), mask)
    pad_logits = torch.cat([logits, torch.randn(1, 3, 7, dtype=torch.float64) * 50], dim=1)
    pad_ids = torch.cat([ids, torch.full((1, 3), 2)], dim=1)
    pad_mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], dim=1)
    pad_loss, m = sft_loss(token_logps(pad_logits, pad_ids), pad_mask)
    assert torch.allclose(pad_loss, loss, atol=1e-6)
    assert m["tokens"].item() == 3
    # non-finite values at masked positions never leak
    bad = token_logps(pad_logits, pad_ids).clone()
    bad[0, -1] = float("-inf")
    assert torch.allclose(sft_loss(bad, pad_mask)[0], loss, atol=1e-6)


def test_limit_cases_and_accumulation():
    # perfect prediction -> 0; all masked -> 0 with 0 tokens
    assert sft_loss(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))[0].abs().max() == 0
    loss, m = sft_loss(-torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(loss, torch.zeros(2)) and torch.equal(m["tokens"], torch.zeros(2))
    # summing per-example sums over micro-batches / total tokens == token mean of the whole batch
    torch.manual_seed(2)
    logps, mask = -torch.rand(6, 5, dtype=torch.float64), torch.rand(6, 5) > 0.3
    whole = -(logps[mask]).mean()
    parts = [sft_loss(logps[i : i + 2], mask[i : i + 2]) for i in range(0, 6, 2)]
    acc = sum(p[0].sum() for p in parts) / sum(p[1]["tokens"].sum() for p in parts)
    assert torch.allclose(acc, whole, atol=1e-12)
