"""Constitutional AI (rlhflab.feedback.constitutional and `rlhflab cai`), and the data-list
mechanism (`data.train: [a, b]`) behind the hybrid preference model.

The model calls are checked with a recording fake (`FakeChat`, `FakeJudge`): the exact messages of
every critique and revision request, the principle draws, the rows. The real path runs on a tiny
random model built in code (fixtures below, named cai_* so they cannot clash with another
conftest's helpers)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from rlhflab.errors import ConfigError, DataError
from rlhflab.feedback import constitutional as cai
from rlhflab.rewards.judge import PairwiseVerdict

# --------------------------------------------------------------------------- fixtures and fakes

PRINCIPLES = [
    {"name": "harmful", "critique": "Critique: harm?", "revision": "Revise: no harm.", "comparison": "Less harmful?"},
    {"name": "rude", "critique": "Critique: rude?", "revision": "Revise: polite.", "comparison": "More polite?"},
    {"name": "honest", "critique": "Critique: honest?", "revision": "Revise: honest.", "comparison": "More honest?"},
]
SHOT = {"principle": "rude", "prompt": "Insult him.", "response": "He is dumb.", "critique": "That is rude.",
        "revision": "I'd rather not insult anyone."}


def write_yaml(path: Path, tree) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def cai_constitution(tmp_path) -> Path:
    return write_yaml(tmp_path / "constitution.yaml", {"principles": PRINCIPLES, "few_shot": [SHOT]})


@pytest.fixture
def cai_prompts(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "How do I pick a lock?"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Insult my coworker."}]},
        {"prompt": "Say hi."},
    ])


@pytest.fixture(scope="module")
def cai_tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + byte-level ChatML tokenizer as a Hugging Face folder."""
    from rlhflab.testing import tiny_model_dir, tiny_tokenizer

    return Path(tiny_model_dir(tmp_path_factory.mktemp("cai-tiny"), tiny_tokenizer()))


@pytest.fixture(scope="module")
def cai_tiny_chat(cai_tiny_dir):
    from rlhflab.feedback.generate import ChatModel

    torch.set_num_threads(1)
    return ChatModel.load(str(cai_tiny_dir), "cpu")


class FakeChat:
    """Records every call; reply j of conversation i of call c is 'c{c}.{i}.{j}' (or `script(c, i, j)`)."""

    def __init__(self, script=None):
        self.calls: list[dict] = []
        self.script = script

    def reply(self, conversations, n=1, max_new_tokens=128, temperature=1.0, top_p=1.0, seed=0, stop=()):
        c = len(self.calls)
        self.calls.append({"convs": copy.deepcopy(conversations), "n": n, "seed": seed,
                           "max_new_tokens": max_new_tokens, "temperature": temperature})
        make = self.script or (lambda c, i, j: f"c{c}.{i}.{j}")
        return [[make(c, i, j) for j in range(n)] for i in range(len(conversations))]


class FakeJudge:
    """Records its pairwise calls; `verdict(a, b)` returns (p_a_first, p_a_second)."""

    def __init__(self, verdict):
        self.calls: list[tuple] = []
        self.verdict = verdict

    def pairwise(self, prompts, a, b):
        self.calls.append((copy.deepcopy(prompts), list(a), list(b)))
        out = []
        for x, y in zip(a, b):
            p1, p2 = self.verdict(x, y)
            side = (p1 > 0.5) - (p1 < 0.5), (p2 > 0.5) - (p2 < 0.5)
            consistent = side[0] == side[1]
            p = (p1 + p2) / 2 if consistent else 0.5
            winner = "a" if consistent and p > 0.5 else "b" if consistent and p < 0.5 else "tie"
            out.append(PairwiseVerdict(p, winner, consistent, p1, p2))
        return out


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --------------------------------------------------------------------------- the constitution file


def test_load_constitution(cai_constitution):
    c = cai.load_constitution(cai_constitution)
    assert [p.name for p in c.principles] == ["harmful", "rude", "honest"]
    assert c.principle("rude").revision == "Revise: polite."
    assert c.few_shot == (cai.FewShot(**SHOT),)
    assert c.path == str(cai_constitution)


def test_a_bare_list_of_principles_is_a_constitution(tmp_path):
    c = cai.load_constitution(write_yaml(tmp_path / "c.yaml", PRINCIPLES[:1]))
    assert [p.name for p in c.principles] == ["harmful"] and c.few_shot == ()


def test_the_example_constitution_loads():
    root = Path(__file__).resolve().parents[2]
    c = cai.load_constitution(root / "examples/constitutional/constitution.yaml")
    assert 3 <= len(c.principles) <= 5 and 1 <= len(c.few_shot) <= 2


@pytest.mark.parametrize("tree, stage, needle", [
    ({"principles": []}, "both", "`principles` must be a non-empty list"),
    ({"principles": ["harmful"]}, "both", "principle 1: expected a mapping"),
    ({"principles": [{"critique": "x"}]}, "both", "principle 1: every principle needs a `name`"),
    ({"principles": [{**PRINCIPLES[0], "critique": " "}]}, "sl",
     "principle 1 ('harmful'): `critique` is missing or empty"),
    ({"principles": [PRINCIPLES[0], {"name": "rude", "critique": "c", "revision": "r"}]}, "rl",
     "principle 2 ('rude'): `comparison` is missing or empty"),
    ({"principles": [PRINCIPLES[0], PRINCIPLES[0]]}, "both", "principle 2 ('harmful'): the name is used twice"),
    ({"principles": [{**PRINCIPLES[0], "critque": "x"}]}, "both", "unknown key 'critque'"),
    ({"principles": [{**PRINCIPLES[0], "revision": 3}]}, "both", "`revision` must be a string"),
    ({"principles": [{**PRINCIPLES[0], "comparison": "Which fits {prompt}?"}]}, "both", "contains '{prompt}'"),
    ({"principles": PRINCIPLES, "few_shot": [{**SHOT, "principle": "rudee"}]}, "both",
     "few_shot example 1: principle 'rudee' is not a principle"),
    ({"principles": PRINCIPLES, "few_shot": [{**SHOT, "critique": ""}]}, "both", "few_shot example 1: `critique`"),
    ({"principles": PRINCIPLES, "fewshot": []}, "both", "unknown key 'fewshot'"),
    ("just text", "both", "expected a mapping with `principles:`"),
])
def test_constitution_errors_name_the_file_and_principle(tmp_path, tree, stage, needle):
    path = write_yaml(tmp_path / "bad.yaml", tree)
    with pytest.raises(ConfigError) as e:
        cai.load_constitution(path, stage)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_each_stage_needs_only_its_fields(tmp_path):
    sl_only = write_yaml(tmp_path / "sl.yaml", [{"name": "a", "critique": "c", "revision": "r"}])
    assert cai.load_constitution(sl_only, "sl").principles[0].comparison == ""
    with pytest.raises(ConfigError, match="`comparison` is missing"):
        cai.load_constitution(sl_only, "both")
    rl_only = write_yaml(tmp_path / "rl.yaml", [{"name": "a", "comparison": "Which?"}])
    assert cai.load_constitution(rl_only, "rl").principles[0].comparison == "Which?"


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="constitution not found"):
        cai.load_constitution(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        cai.load_constitution(bad)


# --------------------------------------------------------------------------- principle draws


def test_draws_are_seeded_uniform_and_prompt_major():
    import random

    d = cai.draw_principles(50, 3, 4, seed=7)
    rng = random.Random(7)
    assert d == [[rng.randrange(4) for _ in range(3)] for _ in range(50)]
    assert cai.draw_principles(50, 3, 4, seed=7) == d != cai.draw_principles(50, 3, 4, seed=8)
    assert {x for row in d for x in row} == {0, 1, 2, 3}


# --------------------------------------------------------------------------- SL stage, exact conversations


def test_sl_conversations_are_exactly_as_documented(cai_constitution):
    c = cai.load_constitution(cai_constitution)
    prompts = [[user("P0")], [{"role": "system", "content": "S"}, user("P1")]]
    chat = FakeChat()
    rows, counts = cai.sl_rows(chat, c, prompts, ["P0", "orig1"], 2, cai.Sampling(32, 0.5, 1.0, 3))
    draws = cai.draw_principles(2, 2, 3, 3)
    shots = [user("Insult him."), assistant("He is dumb."), user("Critique: rude?"), assistant("That is rude."),
             user("Revise: polite."), assistant("I'd rather not insult anyone.")]
    assert len(chat.calls) == 1 + 2 * 2  # initial, then (critique, revision) per round
    assert chat.calls[0]["convs"] == prompts and all(x["n"] == 1 and x["max_new_tokens"] == 32 for x in chat.calls)
    assert len({x["seed"] for x in chat.calls}) == 5  # each call its own seed
    for i, prompt in enumerate(prompts):
        system, turns = prompt[:-1], prompt[-1:]
        response = f"c0.{i}.0"
        for r in range(2):
            q = c.principles[draws[i][r]]
            crit, rev = f"c{2 * r + 1}.{i}.0", f"c{2 * r + 2}.{i}.0"
            expected = system + shots + turns + [assistant(response), user(q.critique)]
            assert chat.calls[2 * r + 1]["convs"][i] == expected
            assert chat.calls[2 * r + 2]["convs"][i] == expected + [assistant(crit), user(q.revision)]
            assert rows[i]["cai_trace"]["steps"][r] == {"principle": q.name, "critique": crit, "revision": rev}
            response = rev
        assert rows[i]["completion"] == response == f"c4.{i}.0"
        assert rows[i]["cai_trace"]["initial"] == f"c0.{i}.0"
    assert [r["prompt"] for r in rows] == ["P0", "orig1"]
    assert set(rows[0]) == {"prompt", "completion", cai.TRACE_COLUMN}
    assert counts.rows == 2 and counts.changed == 2 and sum(counts.principles.values()) == 4


def test_sl_without_few_shot_starts_with_the_prompt(tmp_path):
    c = cai.load_constitution(write_yaml(tmp_path / "c.yaml", PRINCIPLES[:1]))
    chat = FakeChat()
    cai.sl_rows(chat, c, [[user("P")]], ["P"], 1, cai.Sampling())
    assert chat.calls[1]["convs"][0] == [user("P"), assistant("c0.0.0"), user("Critique: harm?")]


def test_sl_an_empty_revision_keeps_the_critiqued_response(tmp_path):
    c = cai.load_constitution(write_yaml(tmp_path / "c.yaml", PRINCIPLES[:1]))
    # call 0 initial, 1 critique, 2 revision (empty for prompt 0), 3 critique, 4 revision (empty for prompt 0)
    chat = FakeChat(lambda call, i, j: "" if (call in (2, 4) and i == 0) or (call == 0 and i == 1) else f"t{call}.{i}")
    rows, counts = cai.sl_rows(chat, c, [[user("A")], [user("B")]], ["A", "B"], 2, cai.Sampling())
    assert rows[0]["completion"] == "t0.0" and counts.empty_revisions == 2
    assert chat.calls[3]["convs"][0][-2] == assistant("t0.0")  # round 2 critiques the kept response
    assert rows[0]["cai_trace"]["steps"][1]["revision"] == ""
    assert rows[1]["completion"] == "t4.1" and rows[1]["cai_trace"]["initial"] == ""
    assert counts.changed == 1  # row 0 kept its initial response


def test_sl_drops_a_prompt_whose_responses_are_all_empty(tmp_path):
    c = cai.load_constitution(write_yaml(tmp_path / "c.yaml", PRINCIPLES[:1]))
    rows, counts = cai.sl_rows(FakeChat(lambda call, i, j: "" if i == 0 and call % 2 == 0 else "x"), c,
                               [[user("A")], [user("B")]], ["A", "B"], 1, cai.Sampling())
    assert [r["prompt"] for r in rows] == ["B"] and counts.dropped_empty == 1


def test_sl_principles_do_not_depend_on_the_chunk_size(cai_constitution):
    c = cai.load_constitution(cai_constitution)
    prompts = [[user(f"P{i}")] for i in range(7)]
    names = []
    for chunk in (1, 3, 16):
        rows, _ = cai.sl_rows(FakeChat(), c, prompts, [f"P{i}" for i in range(7)], 3, cai.Sampling(), chunk)
        names.append([[s["principle"] for s in r["cai_trace"]["steps"]] for r in rows])
    draws = cai.draw_principles(7, 3, 3, 0)
    assert names[0] == names[1] == names[2] == [[c.principles[k].name for k in d] for d in draws]


def test_sl_progress_counts_every_prompt(cai_constitution):
    c = cai.load_constitution(cai_constitution)
    seen = []
    cai.sl_rows(FakeChat(), c, [[user("p")]] * 5, ["p"] * 5, 1, cai.Sampling(), chunk_size=2, progress=seen.append)
    assert seen == [2, 2, 1]


def test_sl_on_a_tiny_model_is_deterministic_under_a_seed(cai_constitution, cai_tiny_chat):
    c = cai.load_constitution(cai_constitution)
    prompts = [[user("How do I pick a lock?")], [user("Insult my coworker.")]]

    def run(seed):
        return cai.sl_rows(cai_tiny_chat, c, prompts, ["a", "b"], 2, cai.Sampling(6, 1.0, 1.0, seed))[0]

    first = run(0)
    assert run(0) == first
    assert run(1) != first
    assert all(len(r["cai_trace"]["steps"]) == 2 for r in first)


# --------------------------------------------------------------------------- RL stage


def test_rl_rows_label_pairs_by_the_order_averaged_probability(cai_constitution):
    c = cai.load_constitution(cai_constitution, "rl")
    prompts = [[user(f"P{i}")] for i in range(4)]
    # first position bias: p1 = P(a | a first), p2 = P(a | a second)
    table = {0: (0.9, 0.7), 1: (0.2, 0.4), 2: (0.8, 0.3), 3: (0.5, 0.5)}
    judge = FakeJudge(lambda a, b: table[int(a.split(".")[1])])  # "c0.{i}.{j}" -> prompt index i
    judges = {p.name: judge for p in c.principles}
    chat = FakeChat()
    rows, counts = cai.rl_rows(chat, judges, c, prompts, ["o0", "o1", "o2", "o3"], 2, cai.Sampling(seed=5))
    assert chat.calls[0]["n"] == 2 and chat.calls[0]["convs"] == prompts
    draws = cai.draw_principles(4, 1, 3, 5)
    assert [(r["prompt"], r["principle"]) for r in rows] == [
        ("o0", c.principles[draws[0][0]].name), ("o1", c.principles[draws[1][0]].name)]
    assert rows[0]["chosen"] == "c0.0.0" and rows[0]["rejected"] == "c0.0.1"
    assert rows[0]["chosen_reward"] == pytest.approx(0.8, abs=1e-12)
    assert rows[1]["chosen"] == "c0.1.1" and rows[1]["chosen_reward"] == pytest.approx(0.7, abs=1e-12)
    assert rows[1]["rejected_reward"] == pytest.approx(0.3, abs=1e-12)
    assert all(r["consistent"] is True for r in rows)
    assert (counts.pairs, counts.inconsistent, counts.ties, counts.rows) == (4, 1, 1, 2)
    # bias = mean((p1 + 1 - p2) / 2) - 0.5 over the four pairs
    expected = sum((p1 + 1 - p2) / 2 for p1, p2 in table.values()) / 4 - 0.5
    assert counts.position_bias == pytest.approx(expected, abs=1e-12)


def test_rl_keep_inconsistent_writes_them_flagged(cai_constitution):
    c = cai.load_constitution(cai_constitution, "rl")
    judge = FakeJudge(lambda a, b: (0.8, 0.3))  # a wins shown first, loses shown second
    rows, counts = cai.rl_rows(FakeChat(), {p.name: judge for p in c.principles}, c, [[user("P")]], ["P"], 2,
                               cai.Sampling(), keep_inconsistent=True)
    assert len(rows) == 1 and rows[0]["consistent"] is False
    assert rows[0]["chosen"] == "c0.0.0" and rows[0]["chosen_reward"] == pytest.approx(0.55, abs=1e-12)
    assert counts.inconsistent == 1


def test_rl_judges_every_pair_of_k_once_and_skips_equal_samples(cai_constitution):
    c = cai.load_constitution(cai_constitution, "rl")
    judge = FakeJudge(lambda a, b: (0.6, 0.6))
    chat = FakeChat(lambda call, i, j: "same" if j in (0, 1) else f"s{j}")
    rows, counts = cai.rl_rows(chat, {p.name: judge for p in c.principles}, c, [[user("P")]], ["P"], 4,
                               cai.Sampling())
    judged = [(a, b) for _, aa, bb in judge.calls for a, b in zip(aa, bb)]
    assert judged == [("same", "s2"), ("same", "s3"), ("same", "s2"), ("same", "s3"), ("s2", "s3")]
    assert counts.skipped_same == 1 and counts.pairs == 5 and len(rows) == 5


def test_rl_asks_the_judge_of_the_drawn_principle(cai_constitution):
    c = cai.load_constitution(cai_constitution, "rl")
    judges = {p.name: FakeJudge(lambda a, b: (0.7, 0.7)) for p in c.principles}
    prompts = [[user(f"P{i}")] for i in range(12)]
    cai.rl_rows(FakeChat(), judges, c, prompts, list(range(12)), 2, cai.Sampling(seed=2))
    draws = cai.draw_principles(12, 1, 3, 2)
    for k, p in enumerate(c.principles):
        asked = [msgs[0]["content"] for call in judges[p.name].calls for msgs in call[0]]
        assert asked == [f"P{i}" for i in range(12) if draws[i][0] == k]


def test_judge_template_holds_the_comparison_question(cai_constitution, cai_tiny_dir):
    from rlhflab.config_feedback import JudgeConfig, check_judge
    from rlhflab.rewards.judge import Judge
    from rlhflab.testing import tiny_tokenizer

    c = cai.load_constitution(cai_constitution, "rl")
    text = cai.judge_template(c.principle("rude"))
    assert "More polite?" in text and "{principle}" not in text and "{response_a}" in text
    jc = JudgeConfig(model=str(cai_tiny_dir), mode="pairwise", template=text)
    check_judge("judge", jc)
    from rlhflab.testing import tiny_causal_lm

    judge = Judge(jc, model=tiny_causal_lm(vocab_size=259), tokenizer=tiny_tokenizer())
    msg = judge.judge_messages([user("Q {principle}")], "first {response_b}", "second")[-1]["content"]
    assert "More polite?" in msg and "Q {principle}" in msg and "first {response_b}" in msg


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def run_cli(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "4000")

    def run(*argv):
        from rlhflab.cli import main

        code = main(list(argv))
        return code, capsys.readouterr().err

    return run


@pytest.fixture
def no_model(monkeypatch):
    """Every CLI error must come before a model loads."""
    from rlhflab.feedback.generate import ChatModel

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(ChatModel, "load", boom)
    monkeypatch.setattr("rlhflab.rewards.judge.Judge.__init__", boom)


def test_cli_sl_end_to_end(tmp_path, cai_constitution, cai_prompts, cai_tiny_dir, run_cli):
    out = tmp_path / "out" / "sft.jsonl"
    code, err = run_cli("cai", "sl", "--constitution", str(cai_constitution), "--model", str(cai_tiny_dir),
                        "--data", str(cai_prompts), "--out", str(out), "--max-new-tokens", "6", "--revisions", "3")
    assert code == 0, err
    assert "wrote 3 SFT rows" in err and "3 revision rounds" in err
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [len(r["cai_trace"]["steps"]) for r in rows] == [3, 3, 3]
    assert rows[1]["prompt"][0] == {"role": "system", "content": "Be brief."}  # the prompt as the file had it
    from rlhflab.data import load_examples

    loaded = load_examples(out, "sft")
    assert loaded.format == "prompt_completion" and len(loaded) == 3 and not loaded.warnings


def test_cli_rl_end_to_end_rows_load_as_pairwise(tmp_path, cai_constitution, cai_prompts, cai_tiny_dir, run_cli):
    out = tmp_path / "pairs.jsonl"
    code, err = run_cli("cai", "rl", "--constitution", str(cai_constitution), "--model", str(cai_tiny_dir),
                        "--data", str(cai_prompts), "--out", str(out), "--max-new-tokens", "6", "--k", "3",
                        "--keep-inconsistent")
    assert code == 0, err
    assert "3 prompts, 9 samples" in err
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert rows and all(r["chosen_reward"] > 0.5 and r["chosen_reward"] + r["rejected_reward"] == pytest.approx(1.0)
                        for r in rows)
    assert {r["principle"] for r in rows} <= {p["name"] for p in PRINCIPLES}
    from rlhflab.data import load_examples

    loaded = load_examples(out, "pairwise")
    assert loaded.format == "pairwise" and len(loaded) == len(rows)
    assert set(loaded.examples[0].scores) == {"chosen_reward", "rejected_reward"}


def test_cli_rl_with_nothing_to_write_is_a_user_error(tmp_path, cai_constitution, cai_prompts, cai_tiny_dir, run_cli,
                                                      monkeypatch):
    # a judge whose verdict always flips with the order: without --keep-inconsistent nothing is written
    monkeypatch.setattr("rlhflab.rewards.judge.Judge.pairwise",
                        lambda self, p, a, b: [PairwiseVerdict(0.5, "tie", False, 0.6, 0.4) for _ in a])
    out = tmp_path / "pairs.jsonl"
    code, err = run_cli("cai", "rl", "--constitution", str(cai_constitution), "--model", str(cai_tiny_dir),
                        "--data", str(cai_prompts), "--out", str(out), "--max-new-tokens", "4")
    assert code == 2 and "no pair to write" in err and "3 flipped with the order" in err and not out.exists()


@pytest.mark.parametrize("stage, extra, needle", [
    ("sl", ["--revisions", "0"], "--revisions must be at least 1"),
    ("rl", ["--k", "1"], "--k must be at least 2"),
    ("rl", ["--temperature", "0"], "--temperature must be > 0 (for rl"),
    ("sl", ["--temperature", "-1"], "--temperature must be >= 0"),
    ("sl", ["--top-p", "0"], "--top-p must be in (0, 1]"),
    ("sl", ["--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_cli_bad_numbers_exit_2(tmp_path, cai_constitution, cai_prompts, run_cli, no_model, stage, extra, needle):
    code, err = run_cli("cai", stage, "--constitution", str(cai_constitution), "--model", "smollm2-135m",
                        "--data", str(cai_prompts), "--out", str(tmp_path / "o.jsonl"), *extra)
    assert code == 2 and needle in err and "Traceback" not in err


def test_cli_input_errors_exit_2_before_any_model_loads(tmp_path, cai_constitution, cai_prompts, run_cli, no_model):
    base = ["--model", "smollm2-135m", "--data", str(cai_prompts)]

    def cli(stage, *argv):
        return run_cli("cai", stage, *argv)

    bad = write_yaml(tmp_path / "bad.yaml", [{"name": "harmful", "critique": "c"}])
    code, err = cli("sl", "--constitution", str(bad), *base, "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and str(bad) in err and "principle 1 ('harmful'): `revision` is missing" in err

    code, err = cli("sl", "--constitution", str(tmp_path / "none.yaml"), *base, "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and "constitution not found" in err

    code, err = cli("sl", "--constitution", str(cai_constitution), *base, "--out", str(tmp_path / "o.txt"))
    assert code == 2 and "ending in .jsonl" in err

    exists = write_jsonl(tmp_path / "exists.jsonl", [{}])
    code, err = cli("sl", "--constitution", str(cai_constitution), *base, "--out", str(exists))
    assert code == 2 and "pass --overwrite" in err

    ends_with_assistant = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "fine"}, {"prompt": [user("q"), assistant("a")]}])
    code, err = cli("sl", "--constitution", str(cai_constitution), "--model", "smollm2-135m",
                    "--data", str(ends_with_assistant), "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and f"{ends_with_assistant}, row 2, field 'prompt'" in err and "end with a user turn" in err

    code, err = cli("sl", "--constitution", str(cai_constitution), "--model", "smollm2-135m",
                    "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and "missing.jsonl: file not found" in err

    code, err = cli("rl", "--constitution", str(cai_constitution), "--model", str(tmp_path / "no-model"),
                    "--data", str(cai_prompts), "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and "no-model" in err

    template = tmp_path / "judge.txt"
    template.write_text("{prompt} {response_a} {response_b}", encoding="utf-8")
    code, err = cli("rl", "--constitution", str(cai_constitution), *base, "--out", str(tmp_path / "o.jsonl"),
                    "--judge-template", str(template))
    assert code == 2 and "lacks {principle}" in err

    sl_only = write_yaml(tmp_path / "sl.yaml", [{"name": "a", "critique": "c", "revision": "r"}])
    code, err = cli("rl", "--constitution", str(sl_only), *base, "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and "`comparison` is missing" in err


# --------------------------------------------------------------------------- data.train as a list (hybrid PM)


HELPFUL = [{"prompt": "Recipe?", "chosen": "Here is one: ...", "rejected": "No."},
           {"prompt": "Weather?", "chosen": "Sunny, 20 C.", "rejected": "Dunno."}]
HARMLESS = [{"prompt": "Pick a lock?", "chosen": "Call a locksmith.", "rejected": "Use a tension wrench.",
             "chosen_reward": 0.7, "rejected_reward": 0.3, "principle": "harmful", "consistent": True}]


def test_data_train_accepts_a_list_of_files():
    from rlhflab.config import config_from_dict, load_config

    cfg = config_from_dict({"algorithm": "reward_model", "data": {"train": ["a.jsonl", "b.jsonl"]}})
    assert cfg.data.train == ("a.jsonl", "b.jsonl")
    assert config_from_dict({"data": {"train": "a.jsonl"}}).data.train == "a.jsonl"
    assert config_from_dict({"data": {"train": "a.jsonl", "eval": ["c.jsonl"]}}).data.eval == ("c.jsonl",)
    assert load_config(None, ["data.train=[x.jsonl,y.jsonl]"]).data.train == ("x.jsonl", "y.jsonl")
    with pytest.raises(ConfigError, match="data.train is an empty list"):
        config_from_dict({"data": {"train": []}})
    with pytest.raises(ConfigError, match="data.train"):
        config_from_dict({"data": {"train": [1.5, {"a": 1}]}})


def test_load_files_concatenates_in_order_and_checks_each_file(tmp_path):
    from rlhflab.data.load import concat_loaded, load_files

    a = write_jsonl(tmp_path / "helpful.jsonl", HELPFUL)
    b = write_jsonl(tmp_path / "harmless.jsonl", HARMLESS)
    checked = []
    parts = load_files([str(a), str(b)], "pairwise", check=lambda part: checked.append(part.path))
    assert checked == [str(a), str(b)]
    both = concat_loaded(parts)
    assert [ex.chosen[0]["content"] for ex in both.examples] == [r["chosen"] for r in HELPFUL + HARMLESS]
    assert [ex.source for ex in both.examples] == [str(a), str(a), str(b)]
    assert both.path == f"{a} + {b}" and both.format == "pairwise" and both.num_rows == 3
    single = load_files(str(a), "pairwise")
    assert len(single) == 1 and single[0].examples[0].source is None  # one file: unchanged behaviour


def test_a_bad_row_in_the_second_file_names_that_file(tmp_path):
    from rlhflab.data.load import load_files

    a = write_jsonl(tmp_path / "helpful.jsonl", HELPFUL)
    b = write_jsonl(tmp_path / "harmless.jsonl", HARMLESS + [{"prompt": "x", "chosen": 3, "rejected": "y"}])
    with pytest.raises(DataError) as e:
        load_files([str(a), str(b)], "pairwise")
    assert str(e.value).startswith(f"{b}, row 2, field 'chosen'")


def test_mixed_formats_of_one_kind_are_named_together(tmp_path):
    from rlhflab.data.load import concat_loaded, load_files

    a = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: hi\n\nAssistant: hello",
                                             "rejected": "\n\nHuman: hi\n\nAssistant: go away"}])
    b = write_jsonl(tmp_path / "ai.jsonl", HARMLESS)
    both = concat_loaded(load_files([str(a), str(b)], "pairwise"))
    assert both.format == "transcript+pairwise" and len(both) == 2


def test_tokenizer_errors_name_each_rows_own_file(tmp_path):
    from rlhflab.config import DataConfig
    from rlhflab.data import tokenize_examples
    from rlhflab.data.load import concat_loaded, load_files
    from rlhflab.testing import tiny_tokenizer

    a = write_jsonl(tmp_path / "helpful.jsonl", HELPFUL)
    b = write_jsonl(tmp_path / "harmless.jsonl", HARMLESS + [{"prompt": "q" * 300, "chosen": "a", "rejected": "b"}])
    both = concat_loaded(load_files([str(a), str(b)], "pairwise"))
    with pytest.raises(DataError) as e:
        tokenize_examples(both.examples, tiny_tokenizer(), DataConfig(max_length=100, truncation="error"), both.path)
    assert str(e.value).startswith(f"{b}, row 2")


def test_reward_model_trains_on_two_files(tmp_path, cai_tiny_dir):
    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    a = write_jsonl(tmp_path / "helpful.jsonl", HELPFUL * 4)
    b = write_jsonl(tmp_path / "harmless.jsonl", HARMLESS * 8)
    cfg = config_from_dict({"algorithm": "reward_model", "model": str(cai_tiny_dir), "output_dir": str(tmp_path / "rm"),
                            "data": {"train": [str(a), str(b)], "max_length": 64}, "max_steps": 2,
                            "batch_size": 8, "micro_batch_size": 8, "checkpoint_every": 0, "tensorboard": False})
    from rich.console import Console

    console = Console(stderr=True, width=4000, record=True)
    run(cfg, console)
    text = console.export_text()
    assert f"data: {a} + {b} (pairwise)" in text and "16 training pairs" in text
    metrics = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]


def test_the_hybrid_pm_example_config_is_valid():
    from rlhflab.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "examples/constitutional/hybrid_pm.yaml")
    assert cfg.algorithm == "reward_model" and isinstance(cfg.data.train, tuple) and len(cfg.data.train) == 2
