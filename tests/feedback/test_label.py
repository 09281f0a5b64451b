"""`rlhflab label` and the judge win rate: pair selection from fake judges (pointwise and pairwise),
the rows' format (loadable as pairwise data), the bootstrap interval, the command end to end on a
tiny model and its exit-code-2 paths."""

from __future__ import annotations

import json

import pytest

from rlhflab.cli import main
from rlhflab.config_feedback import JudgeConfig
from rlhflab.eval.winrate import bootstrap_ci, win_rate_from_verdicts
from rlhflab.feedback.label import label_prompts
from rlhflab.rewards.judge import PairwiseVerdict, PointwiseVerdict, combine_orders
from rlhflab.testing import tiny_model_dir, tiny_tokenizer

TEMPLATE = "Rate {min}-{max}.\n[Q]\n{prompt}\n[End Q]\n[R]\n{response}\n[End R]"
PAIR_TEMPLATE = "Pick.\n[Q]\n{prompt}\n[End Q]\n[A]\n{response_a}\n[End A]\n[B]\n{response_b}\n[End B]"


class FakePolicy:
    batch_size = 8

    def __init__(self, replies):
        self.replies = replies

    def reply(self, prompts, n, *args, **kwargs):
        return [list(self.replies[p[0]["content"]][:n]) for p in prompts]


class LengthJudge:
    """Pointwise: score = length; pairwise: the longer wins (consistent) or the first shown wins."""

    def __init__(self, mode, consistent=True):
        self.cfg = JudgeConfig(mode=mode)
        self.calls = 0
        self.consistent = consistent

    def pointwise(self, prompts, responses):
        self.calls += len(responses)
        return [PointwiseVerdict(float(len(r))) for r in responses]

    def pairwise(self, prompts, a, b):
        self.calls += 2 * len(a)
        out = []
        for x, y in zip(a, b):
            if self.consistent:
                p1, q = (0.9 if len(x) > len(y) else 0.1), (0.9 if len(y) > len(x) else 0.1)
            else:  # the first shown always wins
                p1 = q = 0.9
            out.append(combine_orders(p1, q))
        return out


def prompts(*texts):
    return [[{"role": "user", "content": t}] for t in texts]


def test_pointwise_pairs_best_versus_worst_with_min_gap():
    policy = FakePolicy({"p1": ["a", "abcd", "ab", "abc"], "p2": ["xx", "xy", "yy", "yx"]})
    rows, stats = label_prompts(policy, LengthJudge("pointwise"), prompts("p1", "p2"), k=4, min_gap=1.0)
    assert len(rows) == 1 and stats.skipped_small_gap == 1  # p2: every score equal
    r = rows[0]
    assert (r["chosen"], r["rejected"]) == ("abcd", "a")
    assert (r["chosen_reward"], r["rejected_reward"]) == (4.0, 1.0)
    assert r["candidate_scores"] == [1.0, 4.0, 2.0, 3.0]


def test_pairwise_round_robin_and_consistency():
    policy = FakePolicy({"p1": ["a", "abcd", "ab"]})
    rows, stats = label_prompts(policy, LengthJudge("pairwise"), prompts("p1"), k=3)
    assert len(rows) == 1 and rows[0]["chosen"] == "abcd" and rows[0]["rejected"] == "a"
    assert rows[0]["p_chosen_better"] == pytest.approx(0.9)
    assert stats.consistency == 1.0 and stats.position_bias == pytest.approx(0.0)
    rows, stats = label_prompts(policy, LengthJudge("pairwise", consistent=False), prompts("p1"), k=3)
    assert rows == [] and stats.skipped_inconsistent == 1  # every verdict flips with the order: all ties
    assert stats.consistency == 0.0 and stats.position_bias > 0.3


def test_rows_load_as_pairwise_data(tmp_path):
    from rlhflab.data import load_examples

    policy = FakePolicy({"p1": ["a", "abcd"], "p2": ["bbb", "b"]})
    rows, _ = label_prompts(policy, LengthJudge("pointwise"), prompts("p1", "p2"), k=2)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_examples(str(path), "pairwise")
    assert loaded.format == "pairwise" and len(loaded.examples) == 2


def test_win_rate_and_bootstrap():
    vs = [PairwiseVerdict(0.8, "a", True, 0.8, 0.8), PairwiseVerdict(0.2, "b", True, 0.2, 0.2),
          PairwiseVerdict(0.5, "tie", False, 0.9, 0.1), PairwiseVerdict(0.5, None, False, 0.9, 0.1)]
    wr = win_rate_from_verdicts(vs)
    assert (wr.wins, wr.losses, wr.ties, wr.dropped) == (1, 1, 1, 1)
    assert wr.win_rate == pytest.approx(0.5) and wr.position_consistency == 0.5
    lo, hi = bootstrap_ci([1.0] * 10)
    assert lo == hi == 1.0
    lo, hi = bootstrap_ci([0.0, 1.0] * 50, seed=1)
    assert 0.35 < lo < 0.5 < hi < 0.65
    assert bootstrap_ci([0.0, 1.0] * 50, seed=1) == (lo, hi)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("m"), tiny_tokenizer(), seed=2)


def test_label_command_end_to_end(tiny, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in ("hi", "yo", "ok")))
    judge_yaml = tmp_path / "judge.yaml"
    judge_yaml.write_text(f"mode: pointwise\ntemplate: {json.dumps(TEMPLATE)}\nmax_length: 200\n")
    out = tmp_path / "pairs.jsonl"
    args = ["label", "--model", str(tiny), "--data", str(data), "--out", str(out), "--k", "3",
            "--max-new-tokens", "6", "--judge-config", str(judge_yaml)]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["prompt"].startswith("say ") and r["chosen_reward"] > r["rejected_reward"] for r in rows)
    assert main(args) == 2  # out exists
    assert main(args + ["--overwrite"]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows  # same seed, same file


@pytest.mark.parametrize("extra, msg", [
    (["--k", "1"], "--k"),
    (["--temperature", "0"], "temperature"),
    (["--judge-mode", "pairwise", "--judge-config", "MISSING.yaml"], "not found"),
])
def test_label_command_errors_exit_2(tiny, tmp_path, capsys, extra, msg):
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "hi"}) + "\n")
    code = main(["label", "--model", str(tiny), "--data", str(data), "--out", str(tmp_path / "o.jsonl"), *extra])
    assert code == 2 and msg in capsys.readouterr().err


def test_label_command_bad_data_names_the_row(tiny, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"text": "no prompt"}) + "\n")
    code = main(["label", "--model", str(tiny), "--data", str(data), "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "prompts.jsonl" in err and "2" in err


def test_compare_command(tiny, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in ("hi", "yo")))
    judge_yaml = tmp_path / "judge.yaml"
    judge_yaml.write_text(f"mode: pairwise\ntemplate: {json.dumps(PAIR_TEMPLATE)}\nmax_length: 200\n")
    out = tmp_path / "cmp"
    assert main(["compare", "--model-a", str(tiny), "--model-b", str(tiny), "--data", str(data), "--out", str(out),
                 "--judge-config", str(judge_yaml), "--max-new-tokens", "5"]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["prompts"] == 2 and res["ties"] == 2  # the same model twice, greedy: identical answers, a tie each
    assert len((out / "verdicts.jsonl").read_text().splitlines()) == 2
    judge_yaml.write_text(f"mode: pointwise\ntemplate: {json.dumps(TEMPLATE)}\nmax_length: 200\n")
    assert main(["compare", "--model-a", str(tiny), "--model-b", str(tiny), "--data", str(data), "--out", str(out),
                 "--judge-config", str(judge_yaml), "--max-new-tokens", "5"]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["ties"] == 2 and res["win_rate"] == 0.5  # equal answers, equal expected scores


def test_pointwise_win_rate():
    from rlhflab.eval.winrate import judge_win_rate

    wr, verdicts = judge_win_rate(LengthJudge("pointwise"), prompts("a", "b", "c"), ["xx", "x", "yy"], ["x", "xx", "zz"])
    assert [v.winner for v in verdicts] == ["a", "b", "tie"] and wr.win_rate == pytest.approx(0.5)
