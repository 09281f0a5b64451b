"""Conditions of a conditional reward model (rlhflab.data.conditions): the system prompt is put in
one way, rows are mixed deterministically, and bad inputs are errors naming what is wrong."""

from __future__ import annotations

import pytest

from rlhflab.data.conditions import condition_rows, load_conditions, mix_conditions, with_system_prompt
from rlhflab.data.load import examples_from_records
from rlhflab.data.io import Record
from rlhflab.errors import ConfigError, DataError

USER = [{"role": "user", "content": "q"}]


def test_with_system_prompt_prepends_or_merges_and_copies():
    assert with_system_prompt(USER, "be safe") == [{"role": "system", "content": "be safe"}, *USER]
    own = [{"role": "system", "content": "You are terse."}, *USER]
    assert with_system_prompt(own, "be safe") == [{"role": "system", "content": "be safe\n\nYou are terse."}, *USER]
    assert own[0]["content"] == "You are terse."  # the input is not changed
    same = with_system_prompt(own, None)
    assert same == own and same is not own and same[0] is not own[0]


def test_mix_is_seeded_and_rows_load_as_pairs_with_their_system_message():
    sources = {"helpful": [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(5)],
               "harmless": [{"prompt": f"q{i}", "chosen": "b", "rejected": "a"} for i in range(5)]}
    conditions = {"helpful": "H", "harmless": "S", "unused": "U"}
    a, b = mix_conditions(sources, conditions, seed=3), mix_conditions(sources, conditions, seed=3)
    assert a == b and len(a) == 10 and a != mix_conditions(sources, conditions, seed=4)
    assert sorted(r["condition"] for r in a) == ["harmless"] * 5 + ["helpful"] * 5
    loaded = examples_from_records([Record(i + 1, r) for i, r in enumerate(a)], "mixed.jsonl", "pairwise")
    assert loaded.format == "pairwise" and not loaded.warnings  # the `condition` column is passed over quietly
    for row, ex in zip(a, loaded.examples):
        assert ex.prompt[0] == {"role": "system", "content": conditions[row["condition"]]}


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match=r"no system prompt for condition\(s\) \['format'\]"):
        mix_conditions({"format": []}, {"helpful": "H"})
    with pytest.raises(DataError, match=r"helpful, row 2, field 'prompt'.*transcript rows are not supported"):
        condition_rows([{"prompt": "q"}, {"chosen": "x", "rejected": "y"}], "helpful", "H", path="helpful")
    (tmp_path / "c.yaml").write_text("helpful: 'Prefer helpful answers.'\nharmless: \"\"\n")
    with pytest.raises(ConfigError, match="condition 'harmless' needs a non-empty system prompt"):
        load_conditions(tmp_path / "c.yaml")
    (tmp_path / "c.json").write_text('{"helpful": "H", "harmless": "S"}')
    assert load_conditions(tmp_path / "c.json") == {"helpful": "H", "harmless": "S"}
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_conditions(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_conditions(tmp_path / "none.yaml")
