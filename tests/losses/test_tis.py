"""Truncated importance sampling against the rollout engine (TIS): closed forms, masking, the
gradient, limit cases (cap = inf is plain IS; identical log-probs give weight 1 and the unchanged
loss), and a tiny GRPO run whose engine log-probs are perturbed: the metrics are logged, the stored
weights are the formula's, and they change the update (and do not when there is no mismatch)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhflab.losses.policy import engine_mismatch, policy_loss, truncated_is_weights

NAN, INF = float("nan"), float("inf")
TOL = dict(atol=1e-12, rtol=0.0)


def d(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ----------------------------------------------------------------------------- closed forms
def test_closed_form():
    """old - engine = [0, 1, -1, 3, -0.5] -> ratios [1, e, 1/e, e^3, e^-0.5]; cap 2:
    w = [1, 2, 0.36788, 2, 0.60653]; truncated: e and e^3 -> 2/5;
    |diff| = [0, 1, 1, 3, 0.5] -> mean 1.1, max 3."""
    old, engine = d(0.0, -1.0, -2.0, 0.0, -1.0), d(0.0, -2.0, -1.0, -3.0, -0.5)
    mask = torch.ones(5, dtype=torch.bool)
    w, m = truncated_is_weights(old, engine, mask, cap=2.0)
    expected = d(1.0, 2.0, math.exp(-1), 2.0, math.exp(-0.5))
    assert torch.allclose(w, expected, **TOL)
    assert m["is_weight_mean"].item() == pytest.approx(float(expected.mean()), abs=1e-12)
    assert m["is_truncated_fraction"].item() == pytest.approx(2 / 5, abs=1e-12)
    assert m["logprob_abs_diff_mean"].item() == pytest.approx(1.1, abs=1e-12)
    assert m["logprob_abs_diff_max"].item() == pytest.approx(3.0, abs=1e-12)


def test_a_ratio_equal_to_the_cap_is_not_counted_as_truncated():
    w, m = truncated_is_weights(d(math.log(2.0)), d(0.0), torch.ones(1, dtype=torch.bool), cap=2.0)
    assert w.item() == pytest.approx(2.0, abs=1e-12) and m["is_truncated_fraction"].item() == 0.0


def test_masking_ignores_padding_even_nan_and_inf():
    """Rows of lengths 3 and 1; padding holds nan / inf. Weights are 0 there and the metrics equal
    those of the unpadded tokens alone."""
    mask = torch.tensor([[True, True, True], [True, False, False]])
    old = torch.tensor([[0.0, -1.0, -2.0], [-0.5, NAN, INF]], dtype=torch.float64)
    engine = torch.tensor([[-1.0, -1.0, -0.5], [-0.5, -INF, NAN]], dtype=torch.float64)
    w, m = truncated_is_weights(old, engine, mask, cap=1.5)
    assert torch.equal(w[~mask], torch.zeros(2, dtype=torch.float64)) and torch.isfinite(w).all()
    w_flat, m_flat = truncated_is_weights(old[mask], engine[mask], torch.ones(4, dtype=torch.bool), cap=1.5)
    assert torch.allclose(w[mask], w_flat, **TOL)
    for k in m:
        assert m[k].item() == pytest.approx(m_flat[k].item(), abs=1e-12), k
    empty = torch.zeros_like(mask)
    _, m0 = truncated_is_weights(old, engine, empty, cap=1.5)
    assert all(v.item() == 0.0 for v in m0.values())


def test_cap_inf_is_plain_importance_sampling():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 3
    engine = old + 0.5 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    w, m = truncated_is_weights(old, engine, mask, cap=INF)
    assert torch.allclose(w, torch.exp(old - engine), atol=0.0, rtol=1e-15)
    assert m["is_truncated_fraction"].item() == 0.0


def test_identical_logprobs_give_weight_one_and_the_unchanged_loss():
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 2
    logp = (old + 0.3 * torch.randn(3, 5, generator=g, dtype=torch.float64)).requires_grad_()
    adv, mask = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.rand(3, 5, generator=g) < 0.8
    w, m = truncated_is_weights(old, old.clone(), mask, cap=2.0)
    assert torch.equal(w, mask.to(torch.float64)) and m["logprob_abs_diff_max"].item() == 0.0
    loss, _ = policy_loss(logp, old, adv, mask)
    (g_plain,) = torch.autograd.grad(loss.sum(), logp, retain_graph=True)
    (g_weighted,) = torch.autograd.grad((loss * w).sum(), logp)
    assert torch.equal(loss * w, loss) and torch.equal(g_weighted, g_plain)


def test_gradient_is_the_weighted_surrogate_gradient_and_the_weight_has_none():
    """Unclipped tokens (r within 1 +- 0.2): loss_t = -w_t r_t A_t, so d/dlogp_t = -w_t r_t A_t.
    The weight is data: no gradient reaches old_logp or engine_logp through it."""
    logp = d(-1.0, -2.0, -0.5).requires_grad_()
    old = d(-1.1, -1.9, -0.5).requires_grad_()
    engine = d(-2.0, -1.0, -0.4).requires_grad_()
    adv, mask = d(1.0, -2.0, 0.5), torch.ones(3, dtype=torch.bool)
    w, _ = truncated_is_weights(old, engine, mask, cap=2.0)
    assert not w.requires_grad
    loss, m = policy_loss(logp, old, adv, mask)
    assert m["clip_fraction"].item() == 0.0
    (grad,) = torch.autograd.grad((loss * w).sum(), logp)
    r = torch.exp(logp - old).detach()
    assert torch.allclose(grad, -w * r * adv, **TOL)
    assert torch.allclose(w, d(2.0, math.exp(-0.9), math.exp(-0.1)), **TOL)


def test_engine_mismatch_and_bad_caps():
    m = engine_mismatch(d(0.0, -1.0), d(-0.25, -2.0), torch.tensor([True, True]))
    assert (m["logprob_abs_diff_mean"].item(), m["logprob_abs_diff_max"].item()) == (0.625, 1.0)
    for cap in (0.0, -1.0, NAN):
        with pytest.raises(ValueError, match="cap must be > 0"):
            truncated_is_weights(d(0.0), d(0.0), torch.ones(1, dtype=torch.bool), cap=cap)


# ----------------------------------------------------------------------------- a tiny GRPO run
class NoisyEngine:
    """The HF engine with Gaussian noise (std `sigma`, seeded by the call) on its reported
    log-probs: a stand-in for an engine whose numbers differ from the trainer's."""

    probe_tol = 10.0  # the mismatch is deliberate

    def __init__(self, inner, sigma: float):
        self.inner, self.model, self.sigma = inner, inner.model, sigma

    def sync_weights(self) -> None:
        self.inner.sync_weights()

    def generate(self, prompts, params, seed, offset=0):
        out = self.inner.generate(prompts, params, seed, offset)
        g = torch.Generator().manual_seed(seed * 1009 + offset)
        for c in out:
            c.logprobs = [lp + self.sigma * float(torch.randn((), generator=g)) for lp in c.logprobs]
        return out


@pytest.fixture
def grpo_run(tmp_path_factory, monkeypatch):
    """run(cap, sigma) -> (history, captured prepared batches with their completions)."""
    import rlhflab.rollout as rollout
    from rlhflab.algorithms.policy_gradient import PolicyGradient
    from rlhflab.config import config_from_dict
    from rlhflab.testing import tiny_model_dir
    from rlhflab.train.run import run

    root = tmp_path_factory.mktemp("tis")
    folder = tiny_model_dir(root)
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say a word {i}"}) + "\n" for i in range(8)))
    scorer = root / "scorer.py"
    scorer.write_text("def varied(samples):\n    return [sum(map(ord, s.completion)) % 13 / 13 for s in samples]\n")
    real_make, real_prepare = rollout.make_generator, PolicyGradient.prepare
    captured: list = []

    def prepare(self, model, batch, completions, scores, round_):
        out = real_prepare(self, model, batch, completions, scores, round_)
        captured.append((out, completions, self.s.engine_is_cap))
        return out

    monkeypatch.setattr(PolicyGradient, "prepare", prepare)

    def go(cap: float | None, sigma: float, name: str):
        monkeypatch.setattr(rollout, "make_generator", lambda *a, **k: NoisyEngine(real_make(*a, **k), sigma))
        captured.clear()
        tree = {"algorithm": "grpo", "model": str(folder), "output_dir": str(root / name), "seed": 0, "max_steps": 2,
                "batch_size": 4, "micro_batch_size": 8, "checkpoint_every": 0, "tensorboard": False,
                "optim": {"lr": 1e-2, "schedule": "constant"}, "data": {"train": str(data), "max_length": 48},
                "grpo": {"rewards": [{"type": "python", "function": f"{scorer}:varied"}], "kl_coef": 0.0, "log_kl": False,
                         "generation": {"num_generations": 4, "max_new_tokens": 8}, "engine_is_cap": cap}}
        return run(config_from_dict(tree)).history, list(captured)

    return go


def test_grpo_logs_and_applies_the_engine_correction(grpo_run):
    noisy, batches = grpo_run(1.2, 0.3, "noisy")
    plain, _ = grpo_run(None, 0.3, "plain")
    for h in noisy:
        # E|N(0, 0.3^2)| = 0.3 sqrt(2 / pi) = 0.239; P(noise < -log 1.2) = P(Z < -0.61) = 0.27
        assert 0.15 < h["engine/logprob_abs_diff_mean"] < 0.35
        assert h["engine/logprob_abs_diff_max"] == pytest.approx(h["engine_trainer_max_abs_diff"])
        assert 0.1 < h["engine/is_truncated_fraction"] < 0.45 and h["engine/is_weight_mean"] <= 1.2
    for batch, completions, cap in batches:  # the stored weights are the formula's, from the engine's numbers
        mask = batch.loss_mask
        engine = torch.zeros(mask.shape).masked_scatter(mask, torch.tensor([x for c in completions for x in c.logprobs]))
        expected = torch.where(mask, torch.exp(batch.tensors["old_logp"] - engine).clamp(max=cap), torch.zeros(()))
        assert torch.allclose(batch.tensors["is_weight"], expected, atol=1e-6, rtol=0)
    # same rollouts (same noise), so the first round differs only by the weights in the loss
    assert plain[0]["engine/logprob_abs_diff_mean"] == pytest.approx(noisy[0]["engine/logprob_abs_diff_mean"], abs=1e-6)
    assert "engine/is_weight_mean" not in plain[0]
    assert abs(noisy[0]["pg_loss"] - plain[0]["pg_loss"]) > 1e-3
    assert abs(noisy[0]["grad_norm"] - plain[0]["grad_norm"]) > 1e-4


def test_without_a_mismatch_the_correction_changes_nothing(grpo_run):
    on, _ = grpo_run(2.0, 0.0, "on")
    off, _ = grpo_run(None, 0.0, "off")
    assert on[0]["engine/is_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert on[0]["engine/is_truncated_fraction"] == 0.0
    for a, b in zip(on, off):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
