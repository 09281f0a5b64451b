"""The Prompt-OIRL reproduction (examples/prompt_oirl/, loaded by path): queries, logs, the
offline reward model and the selection policies.

The reproduction itself uses SmolLM2-135M (about 40 minutes of CPU generation); these tests never
load it. They check the mechanics with closed forms, the qualitative claim on synthetic logs where
the best prompt provably depends on the query (RM selection must beat the best single prompt
there; on the real model's logs whether it does is the experiment, reported in
docs/reproductions.md), and the whole pipeline end to end with a tiny random model (shapes,
caching, determinism; its replies are all wrong, so no accuracy claim is made on it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from rlhflab.errors import DataError
from rlhflab.rewards.python_fn import import_file

HERE = Path(__file__).resolve().parents[2] / "examples" / "prompt_oirl"
run = import_file(HERE / "run.py", "prompt_oirl_run")
tasks, logs, rm, ev = run.tasks, run.logs, run.rm, run.ev


# ----------------------------------------------------------------------------- queries
def test_splits_are_seeded_disjoint_balanced_and_answers_are_right():
    a, b = tasks.make_splits(60, 30, 0), tasks.make_splits(60, 30, 0)
    assert a == b
    train, test = {q.text for q in a["train"]}, {q.text for q in a["test"]}
    assert len(train) == 60 and len(test) == 30 and not train & test
    assert not (train | test) & {s for p in tasks.PROMPTS for s, _ in p.shots}
    assert [sum(q.kind == k for q in a["train"]) for k in tasks.KINDS] == [10] * 6
    for q in a["train"] + a["test"]:
        nums = [int(n) for n in re.findall(r"\d+", q.text)]
        op = q.kind.rsplit("_", 1)[-1]
        if q.kind == "word_mul":  # "A bag holds b items. How many items are in a bags?"
            nums = nums[::-1]
        expected = {"add": nums[0] + nums[1], "sub": nums[0] - nums[1], "mul": nums[0] * nums[1]}[op]
        assert q.answer == expected > 0, q
    assert tasks.make_splits(60, 30, 1)["train"] != a["train"]


def test_prompt_conversation_puts_shots_before_the_query():
    p = next(p for p in tasks.PROMPTS if p.name == "shots_add")
    conv = p.conversation("What is 1 + 1?")
    assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant", "user"]
    assert conv[-1]["content"] == "What is 1 + 1?" and conv[1]["content"] == "3 + 5 = 8"
    assert len({logs.prompt_sig(p) for p in tasks.PROMPTS}) == len(tasks.PROMPTS)


# ----------------------------------------------------------------------------- logs
def test_is_correct_uses_the_math_verifier():
    assert logs.is_correct("12 + 5 = 17", 17) == (17.0, True)
    assert logs.is_correct("2 + 7 = 11", 9) == (11.0, False)
    assert logs.is_correct("no number here", 3) == (None, False)


def test_read_records_names_file_and_row(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"split": "train"}\n')
    with pytest.raises(DataError, match=r"records.jsonl, row 1, field 'qid'"):
        logs.read_records(path)
    path.write_text("\n{not json\n")
    with pytest.raises(DataError, match="row 2"):
        logs.read_records(path)


def test_a_line_cut_by_a_kill_is_dropped_before_appending(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b"')
    logs._repair_tail(path)
    assert path.read_text() == '{"a": 1}\n'


# ----------------------------------------------------------------------------- reward model
def test_pca_basis_recovers_known_axes():
    # rows: +-2 along e1 and +-1 along e2 (centered): covariance diag(16/3 ... ) -> axes e1, e2
    x = torch.tensor([[2.0, 0, 5], [-2.0, 0, 5], [0, 1.0, 5], [0, -1.0, 5]])
    mean, basis, scale = rm.pca_basis(x, 2)
    assert torch.allclose(mean, torch.tensor([0, 0, 5.0], dtype=torch.float64))
    assert torch.allclose(basis.abs(), torch.tensor([[1.0, 0], [0, 1], [0, 0]], dtype=torch.float64), atol=1e-12)
    assert (basis.sum(0) > 0).all()  # the sign convention
    # the std of the projections: sqrt(sum of squares / (N - 1)) = sqrt(8/3) and sqrt(2/3)
    assert torch.allclose(scale, torch.tensor([(8 / 3) ** 0.5, (2 / 3) ** 0.5], dtype=torch.float64))
    assert rm.pca_basis(x, 10)[1].shape == (3, 3)  # capped at min(N - 1, H)


def test_mean_pooled_ignores_padding_and_batching():
    from rlhflab.testing import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_causal_lm(vocab_size=len(tok))
    texts = ["What is 2 + 3?", "A much longer query about marbles and bags, to force padding."]
    both = rm.mean_pooled(model, tok, texts)
    alone = rm.mean_pooled(model, tok, texts[:1])
    assert both.shape == (2, 32)
    assert torch.allclose(both[0], alone[0], atol=1e-5)
    ids = torch.tensor([tok(texts[0], add_special_tokens=False)["input_ids"]])
    manual = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(0)
    assert torch.allclose(alone[0], manual, atol=1e-5)


def synthetic_logs(n: int, seed: int, flip: float = 0.1):
    """Queries in K=3 clusters (16-d embeddings); prompt p answers a query correctly iff the
    query's cluster is p, labels flipped with probability `flip`. The best single prompt is right
    on about 1/3 of queries; the per-query best on about 1 - flip."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[4.0] + [0] * 15, [0, 4.0] + [0] * 14, [0, 0, 4.0] + [0] * 13])
    cluster = torch.randint(0, 3, (n,), generator=g)
    q = centers[cluster] + torch.randn(n, 16, generator=g)
    correct = cluster[:, None] == torch.arange(3)[None]
    noise = torch.rand(n, 3, generator=g) < flip
    return q, correct ^ noise, correct


def test_rm_selection_beats_best_single_when_the_best_prompt_depends_on_the_query():
    p_emb = torch.randn(3, 16, generator=torch.Generator().manual_seed(7))
    q_tr, y_tr, _ = synthetic_logs(150, 0)
    q_te, _, clean_te = synthetic_logs(200, 1)
    cfg = rm.RMConfig(q_dim=8, p_dim=2, ensemble=2, max_epochs=300)
    model = rm.fit_reward_model(q_tr, p_emb, y_tr, cfg)
    probs = model.probs(q_te)
    assert probs.shape == (200, 3) and ((probs > 0) & (probs < 1)).all()
    rm_acc = float(ev.outcome(clean_te, probs.argmax(1)).mean())
    single_acc = float(clean_te[:, ev.best_single(y_tr)].float().mean())
    assert rm_acc >= 0.9 and single_acc <= 0.45, (rm_acc, single_acc)
    again = rm.fit_reward_model(q_tr, p_emb, y_tr, cfg).probs(q_te)
    assert torch.equal(probs, again)  # deterministic
    assert model.choice["hidden"] in cfg.hidden and model.choice["epochs"] >= 1


# ----------------------------------------------------------------------------- policies and metrics
def test_policies_on_a_hand_made_label_matrix():
    correct = torch.tensor([[1, 0, 0], [1, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    assert ev.best_single(correct) == 0  # 2/4 for prompts 0 and 2: the lowest index wins the tie
    assert ev.outcome(correct, [2, 2, 2, 2]).tolist() == [0, 1, 1, 0]
    # answers: query 0: 5, 5, 7 -> 5 (prompt 0); query 1: 3, None, 4 -> tie, order [2, 0, 1] -> prompt 2
    assert ev.vote([[5, 5, 7], [3, None, 4], [None, None, None]], order=[2, 0, 1]) == [0, 2, 2]
    queries = [{"kind": "a"}, {"kind": "a"}, {"kind": "b"}, {"kind": "b"}]
    assert ev.per_kind_best(queries, correct) == {"a": 0, "b": 2}


def test_calibration_and_aurocs_closed_form():
    p = torch.tensor([0.05, 0.05, 0.95, 0.95, 0.55])
    y = torch.tensor([0, 0, 1, 0, 1])
    cal = ev.calibration(p, y, bins=10)
    # bins: [0, .1): p .05, y 0 -> gap .05 (2/5); [.9, 1]: p .95, y .5 -> .45 (2/5); [.5, .6): .45 (1/5)
    assert cal["ece"] == pytest.approx(2 / 5 * 0.05 + 2 / 5 * 0.45 + 1 / 5 * 0.45)
    assert cal["brier"] == pytest.approx((2 * 0.05**2 + 0.05**2 + 0.95**2 + 0.45**2) / 5)
    assert [b["n"] for b in cal["bins"]] == [2, 1, 2]
    # pooled AUROC: positives {.95, .55} vs negatives {.05, .05, .95}: .95 wins 2 and ties 1 (2.5),
    # .55 wins 2 (2): 4.5 of 6 pairs
    assert ev.rm_auroc(p, y) == pytest.approx(4.5 / 6, abs=1e-4)
    assert ev.rm_auroc(p, torch.zeros(5)) is None
    probs = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    labels = torch.tensor([[1, 0, 0], [0, 0, 0]])  # second query has no positive: skipped
    assert ev.within_query_auroc(probs, labels) == 1.0
    assert ev.within_query_auroc(probs, torch.tensor([[0, 1, 0], [0, 0, 0]])) == 0.0  # .1 is below .9 and .5
    assert ev.within_query_auroc(probs, torch.tensor([[0, 0, 1], [0, 1, 0]])) == pytest.approx((1 + 2) / 4)


# ----------------------------------------------------------------------------- end to end, tiny model
def test_pipeline_end_to_end_with_a_tiny_model_is_cached_and_deterministic(tmp_path):
    from rlhflab.testing import tiny_model_dir

    model_dir = tiny_model_dir(tmp_path)
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--train", "12", "--test", "6", "--out", str(out), "--draws", "1", "--ensemble", "1",
            "--cv-folds", "2", "--fractions", "0.5,1.0", "--plot", str(tmp_path / "plot.svg"), "--batch-size", "8"]
    first = run.main(argv)
    K = len(tasks.PROMPTS)
    records = (out / "records.jsonl").read_text()
    assert len(records.splitlines()) == 18 * K
    assert first["methods"].keys() == run.METHOD_NAMES.keys()
    assert first["methods"]["vote_all"]["calls_per_query"] == K and first["methods"]["rm_select"]["calls_per_query"] == 1
    assert sum(first["rm_pick_counts"].values()) == 6
    assert [r["logged_queries"] for r in first["data_size"]] == [6, 12]
    charts = json.loads((out / "curves.json").read_text())
    assert {"title", "x_label", "y_label", "log_x", "series"} <= charts[0].keys()
    assert all(len(s["x"]) == len(s["y"]) for c in charts for s in c["series"])
    assert (tmp_path / "plot.svg").read_text().startswith("<svg")
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["train"] == 12  # the settings; makes OUT a report folder
    second = run.main(argv)  # every reply cached: nothing regenerated, same numbers
    assert (out / "records.jsonl").read_text() == records
    first.pop("seconds"), second.pop("seconds")
    assert first == second


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        run.parse_args(["--fractions", "0.5,abc"])
    with pytest.raises(SystemExit):
        run.parse_args(["--fractions", "1.5"])
