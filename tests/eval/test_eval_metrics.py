"""The evaluation core on hand-made cases with known answers: lengths, scores and accuracy, the exact
KL against a direct computation (0 for the model itself, the adapter-disabled LoRA reference),
win rates by a scorer with ties."""

from __future__ import annotations

import json

import pytest
import torch

from rlhflab.config_eval import EvalConfig, resolve_defaults
from rlhflab.config_rl import ScorerConfig
from rlhflab.eval.evaluate import (ADAPTER_DISABLED, EvalPrompts, evaluate_policy, kl_to_reference, length_metrics,
                                   score_metrics, tokenize_prompts, win_rate)
from rlhflab.rewards.base import Scores
from rlhflab.rollout.base import Completion
from rlhflab.testing import tiny_causal_lm, tiny_tokenizer

SCORER = "def sevens(samples):\n    return [float(s.completion.count('7')) for s in samples]\n"


def completion(n_tokens: int, text: str, reason: str = "stop", prompt: int = 0) -> Completion:
    return Completion(prompt, list(range(3, 3 + n_tokens)), [0.0] * n_tokens, reason, text)


def test_length_metrics_closed_form():
    comps = [completion(1, "a"), completion(2, "bb"), completion(3, "ccc", "length"), completion(4, "dddd"),
             completion(10, "e" * 10, "length")]
    m = length_metrics(comps)
    # sorted token lengths 1 2 3 4 10: mean 4, median 3, p90 at position 0.9 * 4 = 3.6 -> 4 + 0.6 * (10 - 4) = 7.6
    assert m["length/mean"] == pytest.approx(4.0, abs=1e-12)
    assert m["length/median"] == pytest.approx(3.0, abs=1e-12)
    assert m["length/p90"] == pytest.approx(7.6, abs=1e-12)
    assert m["length/max"] == 10.0
    assert m["length/truncated"] == pytest.approx(2 / 5, abs=1e-12)
    assert m["length/chars_mean"] == pytest.approx((1 + 2 + 3 + 4 + 10) / 5, abs=1e-12)


def test_score_metrics_accuracy_and_pass_at_n():
    rewards = (ScorerConfig(type="math"), ScorerConfig(type="python", function="f.py:g", weight=2.0))
    math_v = torch.tensor([1.0, 0.0, 1.0, 1.0])
    py_v = torch.tensor([0.5, 1.0, 0.0, 2.0])
    scores = Scores(math_v + 2 * py_v, {"math": math_v, "python": py_v})
    m = score_metrics(scores, rewards, n=2)
    assert m["reward"] == pytest.approx(float((math_v + 2 * py_v).mean()), abs=1e-6)
    assert m["math"] == pytest.approx(0.75) and m["python"] == pytest.approx(0.875)
    assert m["accuracy"] == pytest.approx(0.75)  # 3 of the 4 completions verified
    assert m["pass@2"] == pytest.approx(1.0)  # prompt 0: [1, 0], prompt 1: [1, 1]
    assert "accuracy/math" not in m  # one verifier: `accuracy` is its own
    two = (ScorerConfig(type="math"), ScorerConfig(type="code"))
    code_v = torch.tensor([1.0, 1.0, 0.0, 1.0])
    m2 = score_metrics(Scores(math_v + code_v, {"math": math_v, "code": code_v}), two, n=1)
    assert m2["accuracy"] == pytest.approx(0.5)  # both accept completions 0 and 3
    assert m2["accuracy/math"] == pytest.approx(0.75) and m2["accuracy/code"] == pytest.approx(0.75)
    assert "pass@1" not in m2


def test_win_rate_by_first_scorer_counts_ties_as_half():
    from rlhflab.eval.evaluate import PolicyEval

    rewards = (ScorerConfig(type="python", function="f.py:g"), ScorerConfig(type="math"))

    def ev(first: list[float], second: list[float]) -> PolicyEval:
        a, b = torch.tensor(first), torch.tensor(second)
        comps = [completion(1, "x", prompt=i) for i in range(len(first))]
        return PolicyEval(comps, Scores(a + b, {"python": a, "math": b}), {})

    a = ev([1.0, 0.0, 0.5, 1.0, 3.0], [0, 0, 0, 0, 0])
    b = ev([0.0, 0.0, 1.0, 1.0, 2.0], [1, 1, 1, 1, 1])  # B would win on math: only the first scorer decides
    wr, verdicts = win_rate(a, b, [], rewards)
    # outcomes 1, 1/2, 0, 1/2, 1 -> 3/5
    assert wr["win_rate"] == pytest.approx(0.6, abs=1e-12)
    assert (wr["wins"], wr["losses"], wr["ties"]) == (2, 1, 2)
    assert [v.winner for v in verdicts] == ["a", "tie", "b", "tie", "a"]
    assert 0.0 <= wr["ci_low"] <= 0.6 <= wr["ci_high"] <= 1.0 and wr["ci_low"] < wr["ci_high"]
    assert wr["by"] == "scorer python"
    assert win_rate(a, b, [], rewards)[0] == wr  # seeded bootstrap: the same interval again


def test_win_rate_interval_resamples_prompts_when_there_are_several_samples():
    from rlhflab.eval.evaluate import PolicyEval
    from rlhflab.eval.winrate import bootstrap_ci

    rewards = (ScorerConfig(type="python", function="f.py:g"),)

    def ev(values: list[float]) -> PolicyEval:
        comps = [completion(1, "x", prompt=i // 2) for i in range(len(values))]  # 2 samples per prompt
        return PolicyEval(comps, Scores(torch.tensor(values), {"python": torch.tensor(values)}), {})

    wr, _ = win_rate(ev([1, 1, 0, 1, 0, 0, 1, 0]), ev([0, 0, 0, 0, 1, 1, 0, 1]), [], rewards, seed=4)
    # outcomes per prompt: (1, 1), (1/2, 1), (0, 0), (1, 0) -> prompt means 1, 3/4, 0, 1/2; overall 9/16
    assert wr["win_rate"] == pytest.approx(9 / 16, abs=1e-12)
    assert (wr["ci_low"], wr["ci_high"]) == bootstrap_ci([1.0, 0.75, 0.0, 0.5], seed=4)
    assert (wr["ci_low"], wr["ci_high"]) != bootstrap_ci([1, 1, 0.5, 1, 0, 0, 1, 0], seed=4)


# --------------------------------------------------------------------------- KL


def _prompts(tok, texts):
    from rlhflab.data import PromptExample

    ex = [PromptExample([{"role": "user", "content": t}], {}, i + 1) for i, t in enumerate(texts)]
    from rlhflab.config import DataConfig

    return tokenize_prompts(EvalPrompts("mem", ex, texts), tok, DataConfig(max_length=64))


def _direct_kl(policy, ref, prompt_ids, comp_ids) -> tuple[float, float]:
    """sum over completion positions of KL(pi || ref), and of log pi(y_t) - log ref(y_t), from a plain
    forward of the one unpadded sequence."""
    ids = torch.tensor([prompt_ids + comp_ids])
    with torch.no_grad():
        lp = torch.log_softmax(policy(input_ids=ids).logits.double(), -1)[0]
        lq = torch.log_softmax(ref(input_ids=ids).logits.double(), -1)[0]
    P = len(prompt_ids)
    rows = list(range(P - 1, P - 1 + len(comp_ids)))  # position t - 1 predicts token t
    kl = sum(float((lp[r].exp() * (lp[r] - lq[r])).sum()) for r in rows)
    k1 = sum(float(lp[r, y] - lq[r, y]) for r, y in zip(rows, comp_ids))
    return kl, k1


def _generate(model, tok, items, n_tokens=6):
    cfg = resolve_defaults(EvalConfig(max_new_tokens=n_tokens, temperature=1.0, n=2, seed=3))
    from rlhflab.eval.evaluate import generate_and_score

    return generate_and_score(model, tok, items, cfg, None)[0]


def test_kl_is_zero_against_the_model_itself_and_exact_against_another():
    tok = tiny_tokenizer()
    a, b = tiny_causal_lm(vocab_size=len(tok), seed=0), tiny_causal_lm(vocab_size=len(tok), seed=1)
    items = _prompts(tok, ["hello there", "a much longer prompt than the first"])
    comps = _generate(a, tok, items)
    kl, k1 = kl_to_reference(a, a, items, comps, pad_id=2, batch_size=3)
    assert kl.shape == (4,) and float(kl.abs().max()) == 0.0 and float(k1.abs().max()) == 0.0
    kl, k1 = kl_to_reference(a, b, items, comps, pad_id=2, batch_size=3)  # padded batches of 3 and 1
    for i, c in enumerate(comps):
        want_kl, want_k1 = _direct_kl(a, b, items[c.prompt_index].input_ids, c.token_ids)
        assert float(kl[i]) == pytest.approx(want_kl, abs=1e-5)
        assert float(k1[i]) == pytest.approx(want_k1, abs=1e-5)
    assert float(kl.min()) > 0


def test_kl_against_the_adapter_disabled_lora_policy():
    from peft import get_peft_model

    from rlhflab.config import LoraConfig
    from rlhflab.models.load import peft_lora_config

    tok = tiny_tokenizer()
    base = tiny_causal_lm(vocab_size=len(tok), seed=0)
    plain = tiny_causal_lm(vocab_size=len(tok), seed=0)  # the same weights, never wrapped
    policy = get_peft_model(base, peft_lora_config(LoraConfig(r=4, alpha=8), "CAUSAL_LM"))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    items = _prompts(tok, ["what is two plus two"])
    comps = _generate(policy, tok, items)
    kl, k1 = kl_to_reference(policy, ADAPTER_DISABLED, items, comps, pad_id=2)
    for i, c in enumerate(comps):
        want_kl, want_k1 = _direct_kl(policy, plain, items[0].input_ids, c.token_ids)
        assert float(kl[i]) == pytest.approx(want_kl, abs=1e-5) and float(k1[i]) == pytest.approx(want_k1, abs=1e-5)
    assert float(kl.min()) > 0


# --------------------------------------------------------------------------- one policy end to end


def constant_model(tok, token: str):
    """A tiny model whose next-token logits are a one-hot bias: it always says `token`."""
    model = tiny_causal_lm(vocab_size=len(tok), seed=0)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.convert_tokens_to_ids(token)] = 10.0
    model.lm_head = head
    return model


def test_evaluate_policy_known_answers(tmp_path):
    tok = tiny_tokenizer()
    model = constant_model(tok, "7")
    scorer_file = tmp_path / "sevens.py"
    scorer_file.write_text(SCORER)
    rewards = (ScorerConfig(type="math"), ScorerConfig(type="python", function=f"{scorer_file}:sevens", weight=0.5))
    answers = [777, 8, 777, 777, 77]
    from rlhflab.config import DataConfig
    from rlhflab.data import PromptExample
    from rlhflab.rewards import build_scorer

    ex = [PromptExample([{"role": "user", "content": f"q{i}"}], {"answer": a}, i + 1) for i, a in enumerate(answers)]
    items = tokenize_prompts(EvalPrompts("mem", ex, [f"q{i}" for i in range(5)]), tok, DataConfig(max_length=64))
    cfg = resolve_defaults(EvalConfig(rewards=rewards, max_new_tokens=3, batch_size=2))
    res = evaluate_policy(model, tok, items, cfg, build_scorer(rewards), reference=model)
    assert [c.text for c in res.completions] == ["777"] * 5
    m = res.metrics
    assert m["accuracy"] == pytest.approx(3 / 5) and m["math"] == pytest.approx(3 / 5)  # '777' is right 3 times
    assert m["python"] == pytest.approx(3.0)  # three 7s in every completion
    assert m["reward"] == pytest.approx(3 / 5 + 0.5 * 3.0, abs=1e-6)
    assert m["length/mean"] == 3.0 and m["length/truncated"] == 1.0 and m["length/chars_mean"] == 3.0
    assert m["kl"] == 0.0 and m["kl/k1"] == 0.0


def test_math_reads_the_last_number():
    """The known-answers test above relies on the verifier reading '777' as 777."""
    from rlhflab.rewards.math import extract_answer

    assert extract_answer("777") == 777


def test_stop_string_ends_the_completion():
    tok = tiny_tokenizer()
    model = constant_model(tok, "7")
    items = _prompts(tok, ["x", "y"])
    cfg = resolve_defaults(EvalConfig(max_new_tokens=4, stop=("7",)))
    res = evaluate_policy(model, tok, items, cfg, None)
    assert [c.text for c in res.completions] == ["7", "7"]
    assert res.metrics["length/mean"] == 1.0 and res.metrics["length/truncated"] == 0.0
    assert "reward" not in res.metrics and "kl" not in res.metrics
    assert json.dumps(res.metrics)  # plain floats
