import pytest

from rlhflab.data import PairExample, PromptExample, SFTExample, UnpairedExample, load_examples
from rlhflab.data.formats import formats_for_kind
from rlhflab.errors import DataError

U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731


def test_messages_format(jsonl):
    p = jsonl([{"messages": [{"role": "system", "content": "be nice"}, U("hi"), A("hello")]}])
    d = load_examples(p, "sft")
    assert d.format == "messages" and d.num_rows == 1
    assert d.examples == [SFTExample([{"role": "system", "content": "be nice"}, U("hi"), A("hello")], 1, 0)]


def test_prompt_completion_strings_and_lists(jsonl):
    p = jsonl([{"prompt": "q", "completion": "a"}, {"prompt": [U("q2")], "completion": [A("a2")]}])
    d = load_examples(p, "sft")
    assert d.format == "prompt_completion"
    assert d.examples[0] == SFTExample([U("q"), A("a")], 1, train_start=1)
    assert d.examples[1] == SFTExample([U("q2"), A("a2")], 2, train_start=1)


def test_pairwise_with_margin(jsonl):
    p = jsonl([{"prompt": "q", "chosen": "good", "rejected": [A("bad")], "margin": 2}])
    d = load_examples(p, "pairwise")
    assert d.format == "pairwise"
    assert d.examples == [PairExample([U("q")], [A("good")], [A("bad")], 1, margin=2.0)]


def test_safety(jsonl):
    p = jsonl([{"prompt": "q", "chosen": "c", "rejected": "r", "chosen_safe": True, "rejected_safe": False}])
    d = load_examples(p, "pairwise")
    assert d.format == "safety"
    assert (d.examples[0].chosen_safe, d.examples[0].rejected_safe) == (True, False)


def test_unpaired(jsonl):
    d = load_examples(jsonl([{"prompt": "q", "completion": "a", "label": False}]), "unpaired")
    assert d.format == "unpaired" and d.examples == [UnpairedExample([U("q")], [A("a")], False, 1)]


def test_prompt_only_keeps_extra_columns(jsonl):
    d = load_examples(jsonl([{"prompt": "2+2?", "answer": "4", "id": 7}]), "prompt")
    assert d.format == "prompt"
    assert d.examples == [PromptExample([U("2+2?")], {"answer": "4", "id": 7}, 1)]


def test_prompt_kind_accepts_pairwise_data(jsonl):
    d = load_examples(jsonl([{"prompt": "q", "chosen": "c", "rejected": "r"}]), "prompt")
    assert d.examples[0].prompt == [U("q")] and d.examples[0].extra == {"chosen": "c", "rejected": "r"}


HH_C = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken cross the road?"
HH_R = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke\n\nAssistant: No."


def test_hh_transcript_split(jsonl):
    d = load_examples(jsonl([{"chosen": HH_C, "rejected": HH_R}]), "pairwise")
    assert d.format == "transcript"
    ex = d.examples[0]
    assert ex.prompt == [U("Hi there"), A("Hello! How can I help?"), U("Tell me a joke")]
    assert ex.chosen == [A("Why did the chicken cross the road?")]
    assert ex.rejected == [A("No.")]


def test_hh_split_when_answers_share_a_prefix(jsonl):
    c = "\n\nHuman: Is it red?\n\nAssistant: I think yes"
    r = "\n\nHuman: Is it red?\n\nAssistant: I think no"
    ex = load_examples(jsonl([{"chosen": c, "rejected": r}]), "pairwise").examples[0]
    assert ex.prompt == [U("Is it red?")] and ex.chosen == [A("I think yes")] and ex.rejected == [A("I think no")]


def test_transcript_message_lists(jsonl):
    c = [U("a"), A("b"), U("c"), A("good")]
    r = [U("a"), A("b"), U("c"), A("bad")]
    ex = load_examples(jsonl([{"chosen": c, "rejected": r}]), "pairwise").examples[0]
    assert ex.prompt == c[:3] and ex.chosen == [A("good")] and ex.rejected == [A("bad")]


def test_transcript_without_assistant_marker(jsonl):
    p = jsonl([{"chosen": "just text", "rejected": "other text"}])
    with pytest.raises(DataError) as e:
        load_examples(p, "pairwise")
    assert "data.jsonl, row 1, field 'chosen'" in str(e.value) and "Assistant:" in str(e.value)


def test_explicit_format_overrides_detection(jsonl):
    p = jsonl([{"prompt": "q", "chosen": "c", "rejected": "r", "chosen_safe": True, "rejected_safe": True}])
    assert load_examples(p, "pairwise", format="pairwise").format == "pairwise"


def test_formats_for_kind():
    assert formats_for_kind("sft") == ("messages", "prompt_completion")
    assert set(formats_for_kind("pairwise")) == {"pairwise", "transcript", "safety"}
    assert "pairwise" in formats_for_kind("prompt")


# --------------------------------------------------------------------------- bad inputs


def test_missing_column_lists_formats(jsonl):
    p = jsonl([{"prompt": "q", "chosen": "c"}])
    with pytest.raises(DataError) as e:
        load_examples(p, "pairwise")
    msg = str(e.value)
    assert "data.jsonl, row 1, field 'rejected'" in msg and "missing column 'rejected'" in msg
    assert "pairwise: prompt, chosen, rejected" in msg and "transcript: chosen, rejected" in msg


def test_missing_column_in_later_row(jsonl):
    p = jsonl([{"prompt": "q", "completion": "a"}, {"prompt": "q"}])
    with pytest.raises(DataError) as e:
        load_examples(p, "sft")
    assert "row 2, field 'completion'" in str(e.value)


def test_missing_column_explicit_format(jsonl):
    with pytest.raises(DataError, match=r"row 1, field 'label': missing column 'label'"):
        load_examples(jsonl([{"prompt": "q", "completion": "a"}]), "unpaired", format="unpaired")


@pytest.mark.parametrize(
    "row,kind,bad,good",
    [
        ({"promt": "q", "chosen": "c", "rejected": "r"}, "pairwise", "promt", "prompt"),
        ({"prompt": "q", "chosen_response": "c", "rejected_response": "r"}, "pairwise", "chosen_response", "chosen"),
        ({"prompt": "q", "completon": "a"}, "sft", "completon", "completion"),
        ({"conversations": [U("a"), A("b")]}, "sft", "conversations", "messages"),
    ],
)
def test_misspelled_column_suggests(jsonl, row, kind, bad, good):
    with pytest.raises(DataError) as e:
        load_examples(jsonl([row]), kind)
    msg = str(e.value)
    assert f"data.jsonl, row 1, field '{bad}'" in msg and f"Did you mean '{good}'?" in msg
    assert "Accepted formats" in msg


def test_extra_columns_are_fine(jsonl):
    row = {"prompt": "q", "chosen": "c", "rejected": "r", "score_chosen": 9.0, "id": "x"}
    assert load_examples(jsonl([row]), "pairwise").format == "pairwise"


@pytest.mark.parametrize(
    "row,field",
    [
        ({"prompt": "", "completion": "a"}, "prompt"),
        ({"prompt": "q", "completion": "   \n"}, "completion"),
        ({"messages": [U("q"), A(" ")]}, "messages[1].content"),
    ],
)
def test_empty_text(jsonl, row, field):
    with pytest.raises(DataError) as e:
        first = {"messages": [U("ok"), A("ok")]} if "messages" in row else {"prompt": "ok", "completion": "ok"}
        load_examples(jsonl([first, row], name="e.jsonl"), "sft")
    assert f"e.jsonl, row 2, field '{field}'" in str(e.value) and "empty text" in str(e.value)


@pytest.mark.parametrize(
    "row,kind,field,expected",
    [
        ({"prompt": "q", "chosen": 3, "rejected": "r"}, "pairwise", "chosen", "expected a string or a list of messages, got int"),
        ({"prompt": "q", "completion": "a", "label": "yes"}, "unpaired", "label", "expected true or false, got str"),
        ({"messages": "hello"}, "sft", "messages", "no assistant turn"),
        ({"messages": {"role": "user"}}, "sft", "messages", "expected a string or a list of messages, got dict"),
        ({"messages": [{"role": "user"}]}, "sft", "messages[0]", 'expected a message {"role": ..., "content": ...}'),
        ({"messages": [{"role": "usr", "content": "x"}, A("y")]}, "sft", "messages[0].role", "unknown role 'usr'"),
        ({"messages": [U("q"), {"role": "assistant", "content": 5}]}, "sft", "messages[1].content", "expected a string, got int"),
        ({"messages": [U("q"), U("again")]}, "sft", "messages", "no assistant turn: nothing to train on"),
        ({"prompt": "q", "chosen": "c", "rejected": "r", "margin": "big"}, "pairwise", "margin", "expected a finite number"),
        ({"prompt": "q", "chosen": "c", "rejected": "r", "chosen_safe": 1, "rejected_safe": True}, "pairwise", "chosen_safe", "expected true or false"),
    ],
)
def test_wrong_types(jsonl, row, kind, field, expected):
    with pytest.raises(DataError) as e:
        load_examples(jsonl([row], name="t.jsonl"), kind)
    assert f"t.jsonl, row 1, field '{field}'" in str(e.value)
    assert expected in str(e.value)


def test_unknown_role_suggests(jsonl):
    with pytest.raises(DataError, match="Did you mean 'assistant'"):
        load_examples(jsonl([{"messages": [U("q"), {"role": "asistant", "content": "a"}]}]), "sft")


def test_identical_chosen_rejected_warns_counts_drops(jsonl):
    rows = [
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": "q", "chosen": [A("x")], "rejected": "x"},
    ]
    d = load_examples(jsonl(rows, name="p.jsonl"), "pairwise")
    assert [ex.row for ex in d.examples] == [2]
    assert d.dropped == {"chosen_equals_rejected": 2}
    assert any("p.jsonl, row 1: chosen and rejected are identical" in w for w in d.warnings)
    assert any("row 3" in w for w in d.warnings)


def test_all_rows_dropped_is_an_error(jsonl):
    with pytest.raises(DataError) as e:
        load_examples(jsonl([{"chosen": HH_C, "rejected": HH_C}], name="dup.jsonl"), "pairwise")
    assert "dup.jsonl" in str(e.value) and "every row was dropped" in str(e.value)
    assert "chosen equals rejected" in str(e.value)


@pytest.mark.parametrize(
    "row,kind,fmt",
    [
        ({"prompt": "q", "chosen": "c", "rejected": "r"}, "sft", "pairwise"),
        ({"messages": [U("q"), A("a")]}, "pairwise", "messages"),
        ({"prompt": "q", "completion": "a"}, "unpaired", "prompt_completion"),
        ({"messages": [U("q"), A("a")]}, "prompt", "messages"),
    ],
)
def test_wrong_format_for_kind(jsonl, row, kind, fmt):
    with pytest.raises(DataError) as e:
        load_examples(jsonl([row], name="k.jsonl"), kind)
    msg = str(e.value)
    assert "k.jsonl" in msg and f"holds '{fmt}' data" in msg and f"algorithm kind '{kind}'" in msg
    for accepted in formats_for_kind(kind):
        assert accepted in msg


def test_unknown_format_name(jsonl):
    with pytest.raises(DataError, match="unknown data format 'chat'"):
        load_examples(jsonl([{"messages": [U("q"), A("a")]}]), "sft", format="chat")


def test_hh_completion_with_more_turns(jsonl):
    c = "Human: Hi\n\nAssistant: Hello\n\nHuman: Thanks\n\nAssistant: Welcome"
    r = "Human: Hi\n\nAssistant: Go away"
    ex = load_examples(jsonl([{"chosen": c, "rejected": r}]), "pairwise").examples[0]
    assert ex.prompt == [U("Hi")]
    assert ex.chosen == [A("Hello"), U("Thanks"), A("Welcome")] and ex.rejected == [A("Go away")]


def test_prompt_only_reading_warns_about_lookalike_columns(jsonl):
    d = load_examples(jsonl([{"prompt": "a", "chosen_response": "b", "rejected_response": "c"}]), None)
    assert d.format == "prompt"
    assert any("'chosen_response' -> 'chosen'?" in w and "'rejected_response' -> 'rejected'?" in w for w in d.warnings)
    assert load_examples(jsonl([{"prompt": "a", "id": 3}]), None).warnings == []
