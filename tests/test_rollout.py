"""The HF rollout engine: agreement with HF generate, the trainer's log-probs, determinism, stops."""

from __future__ import annotations

import pytest
import torch

from rlhflab.rollout import HFGenerator, SamplingParams
from rlhflab.rollout.probe import EngineMismatchError, check_logprobs
from rlhflab.config_rl import GenerationConfig
from rlhflab.testing import tiny_causal_lm, tiny_tokenizer

STOP = 2  # <|im_end|> of the tiny tokenizer


@pytest.fixture(scope="module")
def engine():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(vocab_size=len(tok), hidden=32, layers=2, seed=3)
    return HFGenerator(model, tok, {STOP}, batch_size=6), model, tok


def _prompts(tok, n=3):
    return [tok.apply_chat_template([{"role": "user", "content": "hi" * (k + 1)}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for k in range(n)]


def test_greedy_matches_hf_generate(engine):
    gen, model, tok = engine
    prompts = _prompts(tok)
    outs = gen.generate(prompts, SamplingParams(n=1, max_new_tokens=12, temperature=0.0), seed=0)
    for p, o in zip(prompts, outs):
        ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, pad_token_id=STOP, eos_token_id=STOP)
        expected = ref[0, len(p):].tolist()
        if STOP in expected:
            expected = expected[: expected.index(STOP) + 1]
        assert o.token_ids == expected


def test_logprobs_equal_trainer_and_probe_passes(engine):
    gen, model, tok = engine
    cfg = GenerationConfig(num_generations=4, max_new_tokens=10, temperature=0.7)
    diff = check_logprobs(model, gen, _prompts(tok)[1], cfg, pad_id=STOP, seed=5)
    assert diff < 1e-4


def test_probe_catches_a_stale_engine(engine):
    _, model, tok = engine
    other = tiny_causal_lm(vocab_size=len(tok), hidden=32, layers=2, seed=99)
    stale = HFGenerator(other, tok, {STOP}, batch_size=6)
    with pytest.raises(EngineMismatchError, match="not sampling from the model being trained"):
        check_logprobs(model, stale, _prompts(tok)[0], GenerationConfig(max_new_tokens=8), pad_id=STOP)


def test_deterministic_under_seed_and_n_samples_per_prompt(engine):
    gen, _, tok = engine
    params = SamplingParams(n=4, max_new_tokens=10, temperature=1.0)
    a = gen.generate(_prompts(tok), params, seed=1)
    b = gen.generate(_prompts(tok), params, seed=1)
    c = gen.generate(_prompts(tok), params, seed=2)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    assert [x.prompt_index for x in a] == [0] * 4 + [1] * 4 + [2] * 4
    assert all(len(x.token_ids) == len(x.logprobs) for x in a)


def test_shared_prefill_equals_one_row_per_sample(engine):
    """Prefilling a prompt once and copying its cache gives the same log-probs as prefilling each copy."""
    gen, _, tok = engine
    prompts = _prompts(tok)
    shared = gen.generate(prompts, SamplingParams(n=2, max_new_tokens=8, temperature=0.0), seed=0)
    separate = gen.generate([p for p in prompts for _ in range(2)], SamplingParams(n=1, max_new_tokens=8, temperature=0.0), seed=0)
    for a, b in zip(shared, separate):
        assert a.token_ids == b.token_ids
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


def test_top_k_one_is_greedy_and_lengths_and_finish_reasons(engine):
    gen, _, tok = engine
    prompts = _prompts(tok)
    greedy = gen.generate(prompts, SamplingParams(n=1, max_new_tokens=6, temperature=0.0), seed=0)
    topk = gen.generate(prompts, SamplingParams(n=1, max_new_tokens=6, temperature=1.0, top_k=1), seed=7)
    assert [g.token_ids for g in greedy] == [t.token_ids for t in topk]
    for o in greedy:
        assert len(o.token_ids) <= 6
        assert o.finish_reason == ("stop" if o.token_ids and o.token_ids[-1] == STOP else "length")


def test_stop_string_cuts_the_completion(engine):
    gen, _, tok = engine
    outs = gen.generate(_prompts(tok), SamplingParams(n=3, max_new_tokens=20, temperature=1.0), seed=3)
    text = next(o.text for o in outs if len(o.text) >= 3)
    stop = text[1:3]  # a string that this seed is known to produce
    cut = gen.generate(_prompts(tok), SamplingParams(n=3, max_new_tokens=20, temperature=1.0, stop=(stop,)), seed=3)
    hit = [o for o in cut if stop in o.text]
    assert hit and all(o.text.endswith(stop) and o.finish_reason == "stop" for o in hit)


def test_top_p_keeps_the_crossing_token():
    from rlhflab.rollout.hf import _filter_logits

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_filter_logits(logits, 0, 0.6))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(_filter_logits(logits, 0, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(_filter_logits(logits, 2, 1.0)).tolist() == [[True, True, False, False]]


def test_inverse_cdf_sampler_matches_the_distribution():
    from rlhflab.rollout.hf import _sample, counter_uniform, row_keys

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2]]).expand(20000, 4).contiguous()
    keys = torch.tensor(row_keys(0, list(range(20000)), 1))
    draws = _sample(probs, counter_uniform(keys, 0))
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert freq[1] == 0
    assert torch.allclose(freq, probs[0], atol=0.015)
    # a later decoding step draws independently of the first
    again = _sample(probs, counter_uniform(keys, 1))
    assert 0.3 < float((again == draws).float().mean()) < 0.45  # sum p^2 = 0.38


def test_counter_uniform_is_uniform_and_independent_of_layout():
    from rlhflab.rollout.hf import counter_uniform, row_keys

    keys = torch.tensor(row_keys(7, list(range(500)), 4))
    u = torch.stack([counter_uniform(keys, t) for t in range(20)])
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert float((hist - 0.1).abs().max()) < 0.01
    # prompts 250..499 alone (a second rank's slice) get the very same numbers
    tail = torch.tensor(row_keys(7, list(range(250, 500)), 4))
    assert torch.equal(counter_uniform(tail, 3), counter_uniform(keys, 3)[1000:])
    assert not torch.equal(counter_uniform(keys, 3), counter_uniform(torch.tensor(row_keys(8, list(range(500)), 4)), 3))


def test_generation_is_the_same_split_over_calls_with_offsets(engine):
    """Two 'ranks' each generating half of the prompts (offset = the half's start) sample exactly
    what one call over all prompts samples, whatever the chunk size."""
    from rlhflab.rollout import HFGenerator, SamplingParams

    _, model, tok = engine
    prompts = _prompts(tok, 5)
    params = SamplingParams(n=3, max_new_tokens=6, temperature=1.0)
    whole = HFGenerator(model, tok, {STOP}, batch_size=64).generate(prompts, params, seed=11)
    small = HFGenerator(model, tok, {STOP}, batch_size=3)
    first = small.generate(prompts[:2], params, seed=11, offset=0)
    second = small.generate(prompts[2:], params, seed=11, offset=2)
    assert [c.token_ids for c in whole] == [c.token_ids for c in first + second]
    for a, b in zip(whole, first + second):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-5 if a.logprobs else True
