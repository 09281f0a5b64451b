"""The LM-head-on-scored-tokens path equals the full forward; the chunked sequential KL equals
the direct formula in value and gradient."""

from __future__ import annotations

import pytest
import torch

from rlhflab.models.forward import forward_logits
from rlhflab.models.logps import _split, completion_logits, reference_context, sequence_logps
from rlhflab.ops import masked_sum, policy_ref_kl, ref_policy_kl, token_logps
from rlhflab.testing import tiny_causal_lm
from rlhflab.types import LMBatch


def _batch(vocab: int = 64) -> LMBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    lengths = torch.tensor([9, 6, 4])
    attn = (torch.arange(9)[None] < lengths[:, None]).long()
    loss = attn.bool() & (torch.arange(9)[None] >= torch.tensor([3, 2, 1])[:, None])
    return LMBatch(ids, attn, loss)


def _full_path(model, batch):
    return masked_sum(token_logps(forward_logits(model, batch), batch.input_ids), batch.loss_mask, dim=1)


@pytest.mark.parametrize("lora", [False, True])
def test_split_head_path_equals_full_forward(lora):
    model = tiny_causal_lm(vocab_size=64, seed=1)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    assert _split(model) is not None
    batch = _batch()
    fast, tok = sequence_logps(model, batch)
    assert tok.logits.shape == (int(batch.loss_mask.sum()), 64)  # the head ran on scored tokens only
    torch.testing.assert_close(fast, _full_path(model, batch), atol=1e-5, rtol=1e-5)
    fast.sum().backward()
    g_fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    _full_path(model, batch).sum().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(g_fast[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    if lora:  # the adapter-disabled reference is the base model
        with reference_context(model, None) as ref:
            ref_fast, _ = sequence_logps(ref, batch)
        with model.disable_adapter(), torch.no_grad():
            torch.testing.assert_close(ref_fast, _full_path(model.get_base_model(), batch), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ref_fast, fast.detach(), atol=1e-3)


def test_fallback_when_the_head_is_not_plain_linear():
    model = tiny_causal_lm(vocab_size=64, seed=2)
    model.config.final_logit_softcapping = 30.0  # as Gemma 2 does: the split path must not be used
    assert _split(model) is None
    batch = _batch()
    tok = completion_logits(model, batch)
    assert tok.hidden is None
    logits = forward_logits(model, batch)[:, :-1][batch.loss_mask[:, 1:]]
    torch.testing.assert_close(tok.logits, logits)


def test_ref_policy_kl_value_and_gradient_match_the_direct_formula():
    torch.manual_seed(0)
    N, H, V = 7, 5, 11
    head = torch.nn.Linear(H, V, bias=False).double()
    hidden = torch.randn(N, H, dtype=torch.float64)
    logits = torch.randn(N, V, dtype=torch.float64, requires_grad=True)
    g = torch.randn(N, dtype=torch.float64)
    kl = ref_policy_kl(logits, hidden, head, chunk_rows=3)  # chunks of 3, 3, 1 rows
    lq = torch.log_softmax(head(hidden), -1).detach()
    direct = (lq.exp() * (lq - torch.log_softmax(logits, -1))).sum(-1)
    torch.testing.assert_close(kl.double(), direct, atol=1e-6, rtol=0)
    (kl.double() * g).sum().backward()
    grad_fast = logits.grad.clone()
    logits.grad = None
    (direct * g).sum().backward()
    torch.testing.assert_close(grad_fast, logits.grad, atol=1e-6, rtol=0)
    assert torch.autograd.gradcheck(lambda x: ref_policy_kl(x, hidden, head, chunk_rows=2).double(), (logits,),
                                    atol=1e-4, eps=1e-6)
    # identical distributions: zero KL both ways; KL >= 0
    same = head(hidden).detach()
    assert ref_policy_kl(same, hidden, head).abs().max() < 1e-6
    assert policy_ref_kl(same, same).abs().max() < 1e-6
    assert (policy_ref_kl(logits.detach(), same) >= -1e-7).all()


def test_shared_prefix_logps_equal_the_full_forward():
    """GRPO groups: each distinct prompt run once, completions on its cache = one row per sample."""
    import torch

    from rlhflab.models.logps import completion_token_logps, shared_prefix_token_logps
    from rlhflab.testing import tiny_causal_lm, tiny_tokenizer
    from rlhflab.types import LMBatch

    g = torch.Generator().manual_seed(0)
    tok = tiny_tokenizer()
    model = tiny_causal_lm(vocab_size=len(tok), hidden=32, layers=2, seed=1).train()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    rows, groups = [], []
    for gi, p in enumerate(prompts):
        for k in range(3):
            rows.append((p, torch.randint(3, 200, (2 + (k * gi) % 4,), generator=g).tolist()))
            groups.append(gi)
    order = [4, 0, 7, 1, 8, 2, 3, 5, 6]  # groups interleaved, lengths mixed
    rows, group = [rows[i] for i in order], torch.tensor([groups[i] for i in order])
    W = max(len(p) + len(c) for p, c in rows)
    ids = torch.zeros(len(rows), W, dtype=torch.long)
    att = torch.zeros_like(ids)
    mask = torch.zeros(len(rows), W, dtype=torch.bool)
    for b, (p, c) in enumerate(rows):
        ids[b, :len(p) + len(c)] = torch.tensor(p + c)
        att[b, :len(p) + len(c)] = 1
        mask[b, len(p):len(p) + len(c)] = True
    batch = LMBatch(ids, att, mask)
    full, ent_full = completion_token_logps(model, batch, 0.7, entropy=True)
    shared, ent_shared = shared_prefix_token_logps(model, batch, group, 0.7, entropy=True)
    assert torch.allclose(full, shared, atol=1e-5) and torch.allclose(ent_full, ent_shared, atol=1e-5)
    assert bool((shared[~mask] == 0).all())
    params = list(model.parameters())
    g_full = torch.autograd.grad(full.sum(), params, allow_unused=True)
    g_shared = torch.autograd.grad(shared.sum(), params, allow_unused=True)
    for a, b in zip(g_full, g_shared):
        if a is not None:
            assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("min_shared", [4, 1000])
def test_next_token_logits_with_a_shared_prefix_equal_the_plain_forward(min_shared):
    """A common prefix run once on the KV cache (min_shared=4) or not at all (1000) gives the
    plain forward's logits at each row's last token, rows of different lengths included."""
    from rlhflab.models.logps import next_token_logits
    from rlhflab.testing import tiny_causal_lm

    model = tiny_causal_lm(vocab_size=64, seed=5)
    prefix = [5, 9, 11, 3, 7, 8]
    seqs = [prefix + [1, 2, 3], prefix + [4], prefix + [9, 9, 9, 9, 9, 1]]
    got = next_token_logits(model, seqs, min_shared=min_shared)
    with torch.no_grad():
        want = torch.stack([model(torch.tensor([s])).logits[0, -1].float() for s in seqs])
        want3 = torch.stack([model(torch.tensor([s])).logits[0, -3:].float() for s in seqs])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(next_token_logits(model, seqs, min_shared=min_shared, last=3), want3, atol=1e-5, rtol=1e-5)
