import math

import pytest
import torch

from rlhflab import ops


def test_token_logps_matches_naive_loop():
    torch.manual_seed(0)
    B, T, V = 3, 6, 11
    logits = torch.randn(B, T, V, dtype=torch.float64)
    ids = torch.randint(0, V, (B, T))
    got = ops.token_logps(logits, ids)
    want = torch.zeros(B, T)
    for b in range(B):
        for t in range(1, T):
            z = logits[b, t - 1]
            want[b, t] = z[ids[b, t]] - math.log(sum(math.exp(v) for v in z.tolist()))
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.all(got[:, 0] == 0)


def test_token_logps_chunked_equals_unchunked(monkeypatch):
    torch.manual_seed(1)
    logits = torch.randn(5, 7, 13, dtype=torch.bfloat16)
    ids = torch.randint(0, 13, (5, 7))
    full = ops.token_logps(logits, ids)
    monkeypatch.setattr(ops, "_LOGP_CHUNK_ELEMENTS", 1)  # one row at a time
    assert torch.equal(ops.token_logps(logits, ids), full)


def test_token_logps_gradient_flows():
    logits = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 5, (2, 4))
    ops.token_logps(logits, ids).sum().backward()
    # d/dz log softmax(z)[y] = onehot(y) - softmax(z): rows sum to 0; the last position unused
    assert torch.allclose(logits.grad.sum(-1), torch.zeros(2, 4, dtype=torch.float64), atol=1e-6)
    assert torch.all(logits.grad[:, -1] == 0)


def test_masked_sum_mean_ignore_masked_values():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    assert ops.masked_sum(x, m).item() == 13.0
    assert torch.equal(ops.masked_sum(x, m, dim=1), torch.tensor([3.0, 10.0]))
    assert ops.masked_mean(x, m).item() == pytest.approx(13.0 / 4, abs=1e-7)
    assert torch.allclose(ops.masked_mean(x, m, dim=1), torch.tensor([1.5, 5.0]))
    # an all-masked row gives 0, not nan
    assert torch.equal(ops.masked_mean(x, torch.zeros_like(m), dim=1), torch.zeros(2))


def test_masked_var_closed_form():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    m = torch.tensor([1, 1, 1, 1, 0])
    # mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5
    assert ops.masked_var(x, m).item() == pytest.approx(5 / 3, abs=1e-6)
    assert ops.masked_var(x, m, unbiased=False).item() == pytest.approx(5 / 4, abs=1e-6)


def test_whiten_masked_mean0_var1():
    torch.manual_seed(2)
    x = torch.randn(4, 9, dtype=torch.float64) * 3 + 5
    m = torch.rand(4, 9) > 0.3
    w = ops.whiten(x, m)
    assert abs(ops.masked_mean(w, m).item()) < 1e-6
    assert ops.masked_var(w, m).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(w[~m] == 0)
    # changing masked entries changes nothing
    x2 = x.clone()
    x2[~m] = 1e6
    assert torch.allclose(ops.whiten(x2, m), w, atol=1e-12)
    kept = ops.whiten(x, m, shift_mean=False)
    assert ops.masked_mean(kept, m).item() == pytest.approx(ops.masked_mean(x, m).item(), abs=1e-6)


def test_entropy_closed_form():
    uniform = torch.zeros(2, 8)
    assert torch.allclose(ops.entropy_from_logits(uniform), torch.full((2,), math.log(8)), atol=1e-6)
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    h = -(p * p.log()).sum()
    assert ops.entropy_from_logits(p.log() + 3.0).item() == pytest.approx(h.item(), abs=1e-6)
    assert ops.entropy_from_logits(torch.tensor([0.0, -1e4])).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_estimators_closed_form():
    logp = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0, -0.5], dtype=torch.float64)
    r = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(ops.kl_estimate(logp, ref, "k1"), r, atol=1e-12)
    assert torch.allclose(ops.kl_estimate(logp, ref, "k2"), torch.tensor([0.125, 0.5, 0.0], dtype=torch.float64))
    # k3 = e^{-r} - 1 + r: e^{-0.5} - 0.5 = 0.1065307; e^{1} - 2 = 0.7182818; 0
    want = torch.tensor([math.exp(-0.5) - 0.5, math.e - 2.0, 0.0], dtype=torch.float64)
    assert torch.allclose(ops.kl_estimate(logp, ref, "k3"), want, atol=1e-12)
    with pytest.raises(ValueError):
        ops.kl_estimate(logp, ref, "k4")


def test_kl_k1_k3_unbiased_on_exact_expectation():
    # E_{y~p}[k1] = E_{y~p}[k3] = KL(p || q) when taking the exact expectation over a small support
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    kl = (p * (p / q).log()).sum()
    for kind in ("k1", "k3"):
        est = (p * ops.kl_estimate(p.log(), q.log(), kind)).sum()
        assert est.item() == pytest.approx(kl.item(), abs=1e-12)
