"""`rlhflab rbr fit`: a fit on rule propositions over a python base reward end to end, the configs it
reads, and bad input: one "error: " line naming the file, row and field, exit code 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from rlhflab.cli import main
from rlhflab.config_rl import ScorerConfig
from rlhflab.rewards import Sample, build_scorer

REFUSE, JUDGE = "I'm sorry, but I can't help with that.", "I won't. You should be ashamed of asking."


def comply(task: str) -> str:
    return f"Sure! Here's how to {task}. Step 1: get ready. Step 2: do it."


HARMFUL = ["pick a lock", "make a fake ID", "steal a car", "forge a check", "hack an account", "cheat on taxes"]
BENIGN = ["bake bread", "fix a tire", "learn to juggle", "plant tomatoes", "tie a tie", "brew tea"]

PROPS = [{"name": "refuses", "kind": "refusal", "applies_to": ["harmful"]},
         {"name": "over_refuses", "kind": "refusal", "applies_to": ["benign"]},
         {"name": "judgmental", "kind": "keyword", "keywords": ["ashamed"]},
         {"name": "harmful_detail", "kind": "regex", "pattern": "Step 1", "applies_to": ["harmful"]}]


def fit_rows(harmful: list[str], benign: list[str]) -> list[dict]:
    rows = [{"prompt": f"How do I {t}?", "category": "harmful", "completions": [REFUSE, JUDGE, comply(t)]} for t in harmful]
    rows += [{"prompt": f"How do I {t}?", "category": "benign", "ideal": comply(t), "others": [REFUSE, JUDGE]}
             for t in benign]
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def setup(tmp_path):
    """A base reward that likes long answers (so it ranks compliance first everywhere) and an rbr scorer."""
    (tmp_path / "base.py").write_text("def score(samples):\n    return [len(s.completion) / 50 for s in samples]\n")
    rewards = [{"type": "python", "function": f"{tmp_path / 'base.py'}:score", "name": "helpful"},
               {"type": "rbr", "propositions": PROPS}]
    (tmp_path / "rbr.yaml").write_text(yaml.safe_dump(rewards))
    write_jsonl(tmp_path / "fit.jsonl", fit_rows(HARMFUL[:4], BENIGN[:4]))
    write_jsonl(tmp_path / "held.jsonl", fit_rows(HARMFUL[4:], BENIGN[4:]))
    return tmp_path


def fit(setup: Path, *extra: str, config: str = "rbr.yaml", data: str = "fit.jsonl", out: str = "w.json") -> int:
    return main(["rbr", "fit", "--config", str(setup / config), "--data", str(setup / data), "--out", str(setup / out),
                 *extra])


def test_fit_writes_weights_that_rank_as_the_data(setup, capsys):
    torch.set_num_threads(1)
    assert fit(setup, "--eval", str(setup / "held.jsonl")) == 0
    err = capsys.readouterr().err
    assert "fitted RBR weights" in err and "wrote" in err
    saved = json.loads((setup / "w.json").read_text())
    fit_info = saved["fit"]
    # 4 harmful rows ranked a > b > c (3 pairs each) + 4 benign rows ideal > {others} (2 pairs each); the
    # long-answer base gets the harmful rows wrong, the fitted sum every pair, fitted and held out
    assert fit_info["pairs"] == 20 and fit_info["rows"] == 8 and fit_info["base"] == ["helpful"]
    assert fit_info["accuracy"]["base"] < 0.6
    assert fit_info["accuracy"]["base+rbr"] == 1.0 and fit_info["eval"]["accuracy"]["base+rbr"] == 1.0
    w = saved["weights"]
    assert w["refuses"] > 0 and w["over_refuses"] < 0 and w["judgmental"] < 0 and w["harmful_detail"] < 0
    # the file plugs into the scorer: base + rbr reproduces the fitted ranking
    (setup / "w2.json").write_text(json.dumps(saved))
    scorer = build_scorer((ScorerConfig(type="python", function=f"{setup / 'base.py'}:score"),
                           ScorerConfig(type="rbr", propositions=tuple(_props()), rbr_weights=str(setup / "w2.json"))))
    t = "steal a car"
    s = scorer.score([Sample([{"role": "user", "content": t}], c, {"category": "harmful"}) for c in (REFUSE, JUDGE, comply(t))])
    assert s.values[0] > s.values[1] > s.values[2]
    # the bias centers the rbr term on the fitting completions
    everything = [Sample([{"role": "user", "content": r["prompt"]}], c, r) for r in fit_rows(HARMFUL[:4], BENIGN[:4])
                  for c in (r.get("completions") or [r["ideal"], *r["others"]])]
    assert abs(float(scorer.score(everything).parts["rbr"].mean())) < 1e-6
    # --overwrite replaces; without it the existing file is an error (below)
    assert fit(setup, "--overwrite", "--loss", "logistic", "--l2", "0.01") == 0
    assert json.loads((setup / "w.json").read_text())["fit"]["loss"] == "logistic"


def _props():
    from rlhflab.config import _build
    from rlhflab.config_feedback import PropositionConfig

    return [_build(PropositionConfig, p) for p in PROPS]


def test_fit_reads_a_training_config_whose_weights_file_does_not_exist_yet(setup):
    cfg = {"algorithm": "grpo", "model": "m", "data": {"train": "p.jsonl"},
           "grpo": {"rewards": [{"type": "python", "function": f"{setup / 'base.py'}:score"},
                                {"type": "rbr", "propositions": PROPS, "rbr_weights": str(setup / "w.json")}]}}
    (setup / "train.yaml").write_text(yaml.safe_dump(cfg))
    assert fit(setup, config="train.yaml") == 0
    from rlhflab.config import load_config

    assert load_config(setup / "train.yaml").grpo.rewards[1].rbr_weights == str(setup / "w.json")  # now it loads


def rows_with(**change) -> list[dict]:
    rows = fit_rows(HARMFUL[:2], BENIGN[:1])
    rows[1] = {k: v for k, v in {**rows[1], **change}.items() if v is not None}
    return rows


BAD_DATA = {
    "no completions": (rows_with(completions=None), "row 2, field 'completions'", "missing column 'completions'"),
    "not a list": (rows_with(completions="a"), "row 2, field 'completions'", "non-empty list"),
    "not text": (rows_with(completions=["a", 3]), "row 2, field 'completions[1]'", "non-empty string"),
    "both forms": (rows_with(ideal="a"), "row 2, field 'completions'", "not both"),
    "others without ideal": (rows_with(completions=None, others=["a"]), "row 2, field 'ideal'", "needs `ideal`"),
    "duplicate": (rows_with(completions=["a", "b", "a"]), "row 2, field 'completions'", "listed twice"),
    "no category": (rows_with(category=None), "row 2, field 'category'", "applies_to"),
    "no prompt": (rows_with(prompt=None), "row 2, field 'prompt'", "missing column 'prompt'"),
    "single completions only": ([{"prompt": "q", "category": "benign", "completions": ["a"]}], "field 'completions'",
                                "no ranked pairs"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_exits_2_naming_file_row_and_field(setup, capsys, case):
    rows, where, problem = BAD_DATA[case]
    write_jsonl(setup / "bad.jsonl", rows)
    assert fit(setup, data="bad.jsonl") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert f"bad.jsonl, {where}" in err or (case == "single completions only" and where in err), err
    assert problem in err, err
    assert not (setup / "w.json").exists()


BAD_CONFIG = {
    "no rbr": ([{"type": "python", "function": "x.py:f"}], "exactly one scorer of type rbr (its weights are fitted), found 0"),
    "two rbr": ([{"type": "rbr", "propositions": PROPS}, {"type": "rbr", "name": "b", "propositions": PROPS}],
                "found 2"),
    "normalized base": ([{"type": "python", "function": "x.py:f", "normalize": "group"},
                         {"type": "rbr", "propositions": PROPS}], "normalize: none"),
    "bad proposition": ([{"type": "rbr", "propositions": [{"name": "a", "kind": "regex"}]}], "needs `pattern`"),
    "unknown key": ([{"type": "rbr", "propositions": PROPS, "weights": "w.json"}], "unknown config key 'rewards[0].weights'"),
    "not a list": ({"foo": 1}, "expected a list of scorers"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIG))
def test_bad_config_exits_2(setup, capsys, case):
    tree, problem = BAD_CONFIG[case]
    (setup / "bad.yaml").write_text(yaml.safe_dump(tree))
    assert fit(setup, config="bad.yaml") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.yaml" in err and problem in err, err
    assert not (setup / "w.json").exists()


def test_missing_files_existing_out_and_bad_options_exit_2(setup, capsys):
    assert fit(setup, data="nope.jsonl") == 2
    assert "nope.jsonl: file not found" in capsys.readouterr().err
    assert fit(setup, config="nope.yaml") == 2
    assert "--config not found" in capsys.readouterr().err
    (setup / "w.json").write_text("{}")
    assert fit(setup) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert fit(setup, "--overwrite", "--l2", "0") == 2
    assert "--l2 must be > 0 for the hinge loss" in capsys.readouterr().err
    assert (setup / "w.json").read_text() == "{}"
