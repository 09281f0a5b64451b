"""`rlhflab train` / `rlhflab data inspect` on bad input: one clear message, exit code 2, nothing lost.

Contract (rlhflab.cli): a user error (config, data, paths) prints ONE message to stderr starting
with "error: " (no traceback) and returns 2; validation happens before any model loads, so the
output_dir gets no final/ or checkpoints/. Every case goes through `main(["train", cfg, ...])`
with a YAML config and data written into tmp_path and the tiny model of conftest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import merge_config, pref_rows, sft_rows, tiny_config_dict, write_jsonl
from rlhflab.cli import main

# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Rich wraps (and folds long paths) at 80 columns when not on a terminal; keep lines whole."""
    monkeypatch.setenv("COLUMNS", "4000")


@pytest.fixture
def model_loads():
    """Request this in a test whose run is meant to succeed (it lifts the guard below)."""


@pytest.fixture(autouse=True)
def no_model_load(request, monkeypatch):
    """Fail loudly if a model is built: every user error must be found before that."""
    if "model_loads" in request.fixturenames:
        return

    def boom(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__}.load_model was called before the bad input was reported")

    from rlhflab.algorithms.reward_model import RewardModel
    from rlhflab.algorithms.sft import SFT

    monkeypatch.setattr(SFT, "load_model", boom)
    monkeypatch.setattr(RewardModel, "load_model", boom)


@pytest.fixture
def no_tokenizer_load(monkeypatch):
    """Row-level data errors are found before the tokenizer loads."""
    import rlhflab.models

    def boom(*args, **kwargs):
        raise AssertionError("load_tokenizer was called before the bad data row was reported")

    monkeypatch.setattr(rlhflab.models, "load_tokenizer", boom)


def write_cfg(tmp_path: Path, tiny_dir: Path, train: Path | str | None, name: str = "cfg.yaml", **over) -> Path:
    """A small, fast config (2 steps of 4 examples, no TensorBoard) written as YAML."""
    data = {"max_length": 64, **({"train": str(train)} if train is not None else {})}
    base = {"max_steps": 2, "batch_size": 4, "micro_batch_size": 4, "optim": {"lr": 1.0e-3}, "data": data}
    cfg = tiny_config_dict(tiny_dir, tmp_path / "run", **merge_config(base, over))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def train(capsys, cfg: Path | str, *overrides: str) -> tuple[int, str, str]:
    rc = main(["train", str(cfg), *overrides])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_nothing_written(out_dir: Path) -> None:
    for sub in ("final", "checkpoints", "metrics.jsonl"):
        assert not (out_dir / sub).exists(), f"{out_dir / sub} was written by a run that failed validation"


def assert_user_error(rc: int, err: str, *needles: str, out_dir: Path | None = None) -> None:
    """Exit 2, one message starting with 'error: ', no traceback, every needle in it."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("error: "), err
    assert err.count("error: ") == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in stderr:\n{err}"
    if out_dir is not None:
        assert_nothing_written(out_dir)


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


# --------------------------------------------------------------------------- data errors

def test_missing_column_in_first_row_names_field_and_formats(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"spell {k}"} for k in range(8)])
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data))
    assert_user_error(rc, err, str(data), "row 1", "field 'completion'", "missing column 'completion'",
                      "Accepted formats", "prompt_completion: prompt, completion", "messages: messages",
                      out_dir=tmp_path / "run")


def test_missing_column_in_a_later_row(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    rows = sft_rows(8)
    del rows[2]["completion"]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data))
    assert_user_error(rc, err, str(data), "row 3", "field 'completion'", "missing column 'completion'",
                      "prompt, completion", out_dir=tmp_path / "run")


def test_missing_column_pairwise(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    rows = [{k: v for k, v in r.items() if k != "rejected"} for r in pref_rows(8)]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data, algorithm="reward_model"))
    assert_user_error(rc, err, str(data), "row 1", "field 'rejected'", "missing column 'rejected'",
                      "pairwise: prompt, chosen, rejected", out_dir=tmp_path / "run")


def test_misspelled_column_suggests_closest_and_lists_formats(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    rows = [{"promt": r["prompt"], "completion": r["completion"]} for r in sft_rows(8)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data))
    assert_user_error(rc, err, str(data), "row 1", "field 'promt'", "unknown column 'promt'",
                      "Did you mean 'prompt'?", "Accepted formats (columns):",
                      "messages: messages", "prompt_completion: prompt, completion", out_dir=tmp_path / "run")


def test_misspelled_pairwise_column(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    rows = [{"prompt": r["prompt"], "choosen": r["chosen"], "rejected": r["rejected"]} for r in pref_rows(8)]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data, algorithm="reward_model"))
    assert_user_error(rc, err, str(data), "row 1", "'choosen'", "Did you mean 'chosen'?",
                      "pairwise: prompt, chosen, rejected", out_dir=tmp_path / "run")


@pytest.mark.parametrize("value", ["", "   \n\t"], ids=["empty", "whitespace"])
def test_empty_string(tmp_path, tiny_dir, capsys, no_tokenizer_load, value):
    rows = sft_rows(8)
    rows[1]["completion"] = value
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data))
    assert_user_error(rc, err, str(data), "row 2", "field 'completion'", "empty text", out_dir=tmp_path / "run")


def test_wrong_type_chosen_is_a_number(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    rows = pref_rows(8)
    rows[3]["chosen"] = 5
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data, algorithm="reward_model"))
    assert_user_error(rc, err, str(data), "row 4", "field 'chosen'", "expected a string or a list of messages",
                      "got int", out_dir=tmp_path / "run")


def test_wrong_type_in_message_list(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 6
    rows = [dict(r) for r in rows]
    rows[4] = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 7}]}
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data))
    assert_user_error(rc, err, str(data), "row 5", "field 'messages[1].content'", "expected a string",
                      out_dir=tmp_path / "run")


def test_invalid_json_on_line_3(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    lines = [json.dumps(r) for r in sft_rows(6)]
    lines[2] = '{"prompt": "spell 12", "completion": "one two"'  # missing closing brace
    data = write_lines(tmp_path / "d.jsonl", lines)
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data))
    assert_user_error(rc, err, str(data), "row 3", "invalid JSON on line 3", "JSON object",
                      out_dir=tmp_path / "run")


def test_non_utf8_bytes_on_a_line(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    lines: list[str | bytes] = [json.dumps(r) for r in sft_rows(6)]
    lines[1] = b'{"prompt": "spell \xff\xfe 12", "completion": "one two"}'
    data = write_lines(tmp_path / "d.jsonl", lines)
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data))
    assert_user_error(rc, err, str(data), "row 2", "not UTF-8", "0xff", "UTF-8", out_dir=tmp_path / "run")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["zero-bytes", "blank-lines"])
def test_empty_file(tmp_path, tiny_dir, capsys, no_tokenizer_load, content):
    data = tmp_path / "empty.jsonl"
    data.write_bytes(content)
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data))
    assert_user_error(rc, err, str(data), "no rows", out_dir=tmp_path / "run")


def test_chosen_identical_to_rejected_is_dropped_with_a_warning(tmp_path, tiny_dir, capsys, model_loads):
    rows = pref_rows(12)
    for i in (1, 4):  # rows 2 and 5
        rows[i]["rejected"] = rows[i]["chosen"]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = write_cfg(tmp_path, tiny_dir, data, algorithm="reward_model")
    rc, _, err = train(capsys, cfg)
    assert rc == 0, err
    assert "Traceback" not in err and "error: " not in err
    assert "warning:" in err
    assert "chosen and rejected are identical" in err
    assert "row 2" in err and "row 5" in err
    assert "dropped 2 of 12 rows" in err
    assert "chosen_equals_rejected': 2" in err
    out = tmp_path / "run"
    assert (out / "final" / "config.json").is_file()
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2


def test_every_pair_identical_is_an_error(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    rows = [{"prompt": "hi", "chosen": "same", "rejected": "same"}] * 5
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data, algorithm="reward_model"))
    assert_user_error(rc, err, str(data), "every row was dropped", "5 chosen equals rejected",
                      out_dir=tmp_path / "run")


def _long_prompt_rows() -> list[dict]:
    rows = sft_rows(8)
    rows[2]["prompt"] = "spell " + "9" * 200  # ~230 tokens with the byte-level tokenizer; limit 63
    return rows


def test_prompt_too_long_with_truncation_error(tmp_path, tiny_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", _long_prompt_rows())
    cfg = write_cfg(tmp_path, tiny_dir, data, data={"max_length": 64, "truncation": "error"})
    rc, _, err = train(capsys, cfg)
    assert_user_error(rc, err, str(data), "row 3", "field 'prompt'", "longer than max_prompt_length 63",
                      "data.truncation", out_dir=tmp_path / "run")


def test_prompt_too_long_with_truncation_drop_is_counted(tmp_path, tiny_dir, capsys, model_loads):
    data = write_jsonl(tmp_path / "d.jsonl", _long_prompt_rows())
    cfg = write_cfg(tmp_path, tiny_dir, data, data={"max_length": 64, "truncation": "drop"})
    rc, _, err = train(capsys, cfg)
    assert rc == 0, err
    assert "Traceback" not in err and "error: " not in err
    assert f"data: {data}" in err
    assert "kept 7" in err
    assert "dropped 1" in err
    assert "prompt too long 1" in err
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_example_too_long_with_truncation_error(tmp_path, tiny_dir, capsys):
    rows = sft_rows(8)
    rows[5]["completion"] = "nine " * 40  # the prompt fits, the whole example does not
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = write_cfg(tmp_path, tiny_dir, data, data={"max_length": 64, "truncation": "error"})
    rc, _, err = train(capsys, cfg)
    assert_user_error(rc, err, str(data), "row 6", "longer than max_length 64", out_dir=tmp_path / "run")


# A ChatML variant that renders the assistant header but drops the content of an assistant turn
# whose text is SKIP (and a variant that drops every assistant turn's content): prefix-consistent,
# so the pipeline accepts it, and such turns leave no trainable token.
_SKIP_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% if message['content'] != 'SKIP' %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_NO_ASSISTANT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_rows_without_trainable_tokens_are_dropped_and_counted(tmp_path, tiny_dir, capsys, model_loads):
    # With the default length policy a kept prompt always leaves its first completion token inside
    # max_length, so truncation alone cannot empty a loss mask; a template that renders no
    # assistant content for some turns can. Those rows are dropped before batching (so no batch
    # is ever empty) and counted in the data summary.
    rows = sft_rows(10)
    for i in (0, 6):
        rows[i]["completion"] = "SKIP"
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    template = tmp_path / "skip.jinja"
    template.write_text(_SKIP_TEMPLATE, encoding="utf-8")
    cfg = write_cfg(tmp_path, tiny_dir, data, data={"max_length": 64, "chat_template": str(template)})
    rc, _, err = train(capsys, cfg)
    assert rc == 0, err
    assert "Traceback" not in err and "error: " not in err
    assert "kept 8" in err and "dropped 2" in err and "no trainable tokens 2" in err
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_every_row_without_trainable_tokens_is_an_error(tmp_path, tiny_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    template = tmp_path / "noassistant.jinja"
    template.write_text(_NO_ASSISTANT_TEMPLATE, encoding="utf-8")
    cfg = write_cfg(tmp_path, tiny_dir, data, data={"max_length": 64, "chat_template": str(template)})
    rc, _, err = train(capsys, cfg)
    assert rc == 2, err
    assert "Traceback" not in err
    # the data summary line comes first (it says why), then the one error message
    assert "no trainable tokens 8" in err
    message = err[err.index("error: "):]
    assert err.count("error: ") == 1
    assert str(data) in message and "no rows left" in message
    assert_nothing_written(tmp_path / "run")


# --------------------------------------------------------------------------- config and path errors


@pytest.mark.parametrize(
    "override,key,suggestion",
    [("optim.lrr=1", "optim.lrr", "lr"), ("max_step=3", "max_step", "max_steps"),
     ("data.max_lenght=32", "data.max_lenght", "max_length")],
)
def test_unknown_config_key_override_suggests_closest(tmp_path, tiny_dir, capsys, no_tokenizer_load,
                                                      override, key, suggestion):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data), override)
    assert_user_error(rc, err, f"unknown config key '{key}'", f"Did you mean '{suggestion}'?",
                      out_dir=tmp_path / "run")


def test_unknown_config_key_in_yaml_suggests_closest(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    cfg = write_cfg(tmp_path, tiny_dir, data, max_step=3)
    rc, _, err = train(capsys, cfg)
    assert_user_error(rc, err, "unknown config key 'max_step'", "Did you mean 'max_steps'?",
                      out_dir=tmp_path / "run")


def test_bad_config_value_type(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data), "max_steps=many")
    assert_user_error(rc, err, "'max_steps'", "must be an integer", out_dir=tmp_path / "run")


def test_impossible_batch_plan_names_nearest(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data), "batch_size=10", "micro_batch_size=4")
    assert_user_error(rc, err, "impossible batch plan", "batch_size 10", "micro_batch_size 4", "8 or 12",
                      out_dir=tmp_path / "run")


def test_missing_config_file(tmp_path, capsys, no_tokenizer_load):
    missing = tmp_path / "nope.yaml"
    rc, _, err = train(capsys, missing)
    assert_user_error(rc, err, str(missing), "config file not found")


def test_config_not_valid_yaml(tmp_path, capsys, no_tokenizer_load):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("algorithm: sft\ndata: [unclosed\n", encoding="utf-8")
    rc, _, err = train(capsys, cfg)
    assert_user_error(rc, err, str(cfg), "not valid YAML")


def test_missing_data_file(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    missing = tmp_path / "no-such-data.jsonl"
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, missing))
    assert_user_error(rc, err, str(missing), "file not found", "data.train", out_dir=tmp_path / "run")


def test_no_data_train_in_config(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, None))
    assert_user_error(rc, err, "data.train is required", out_dir=tmp_path / "run")


def test_model_folder_does_not_exist(tmp_path, capsys, no_tokenizer_load):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    missing = tmp_path / "no-such-model"
    rc, _, err = train(capsys, write_cfg(tmp_path, missing, data))
    assert_user_error(rc, err, f"model '{missing}'", "no such folder", out_dir=tmp_path / "run")


def test_model_folder_without_config_json(tmp_path, capsys, no_tokenizer_load):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    folder = tmp_path / "empty-model"
    folder.mkdir()
    rc, _, err = train(capsys, write_cfg(tmp_path, folder, data))
    assert_user_error(rc, err, str(folder), "config.json", out_dir=tmp_path / "run")


@pytest.mark.parametrize("name,suggestion", [("qlearning", None), ("sfft", "sft"), ("reward", "reward_model"), ("dpoo", "dpo")])
def test_unknown_algorithm(tmp_path, tiny_dir, capsys, no_tokenizer_load, name, suggestion):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data, algorithm=name))
    needles = [f"unknown algorithm '{name}'", "available:", "reward_model", "sft"]
    if suggestion:
        needles.append(f"Did you mean '{suggestion}'?")
    assert_user_error(rc, err, *needles, out_dir=tmp_path / "run")


def test_sft_data_given_to_reward_model(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data, algorithm="reward_model"))
    assert_user_error(rc, err, str(data), "'prompt_completion' data", "cannot use",
                      "pairwise: prompt, chosen, rejected",
                      out_dir=tmp_path / "run")


# --------------------------------------------------------------------------- nothing lost


def _previous_run(out: Path) -> None:
    """Stand-ins for what a finished run leaves (a complete checkpoint has state.json)."""
    (out / "final").mkdir(parents=True)
    (out / "final" / "config.json").write_text("{}")
    (out / "checkpoints" / "step-000002").mkdir(parents=True)
    (out / "checkpoints" / "step-000002" / "state.json").write_text('{"step": 2}')
    (out / "metrics.jsonl").write_text('{"step": 1}\n')


def _assert_previous_run_intact(out: Path) -> None:
    assert (out / "final" / "config.json").is_file(), "final/ of the previous run was deleted"
    assert (out / "checkpoints" / "step-000002" / "state.json").is_file(), "a checkpoint was deleted"
    assert (out / "metrics.jsonl").is_file(), "metrics.jsonl of the previous run was deleted"


def test_existing_run_is_refused_without_overwrite(tmp_path, tiny_dir, capsys, no_tokenizer_load):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    _previous_run(tmp_path / "run")
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data))
    assert_user_error(rc, err, "already holds a run", "overwrite=true", "resume=true")
    _assert_previous_run_intact(tmp_path / "run")


@pytest.mark.parametrize("bad", ["data", "batch_plan"])
def test_overwrite_keeps_previous_run_when_rows_or_config_are_bad(tmp_path, tiny_dir, capsys, bad):
    rows = sft_rows(8)
    if bad == "data":
        rows[3]["completion"] = 3
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    _previous_run(tmp_path / "run")
    extra = ["batch_size=10"] if bad == "batch_plan" else []
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data), "overwrite=true", *extra)
    assert rc == 2 and "Traceback" not in err, err
    _assert_previous_run_intact(tmp_path / "run")


@pytest.mark.parametrize("bad", ["model_path", "prompt_too_long"])
def test_overwrite_keeps_previous_run_when_model_or_lengths_are_bad(tmp_path, tiny_dir, capsys, bad):
    data = write_jsonl(tmp_path / "d.jsonl", _long_prompt_rows())
    _previous_run(tmp_path / "run")
    if bad == "model_path":
        cfg = write_cfg(tmp_path, tmp_path / "no-such-model", data)
    else:
        cfg = write_cfg(tmp_path, tiny_dir, data, data={"max_length": 64, "truncation": "error"})
    rc, _, err = train(capsys, cfg, "overwrite=true")
    assert rc == 2 and "Traceback" not in err, err
    _assert_previous_run_intact(tmp_path / "run")


# --------------------------------------------------------------------------- success and data inspect


def test_good_config_trains_and_writes_the_run(tmp_path, tiny_dir, capsys, model_loads):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    rc, _, err = train(capsys, write_cfg(tmp_path, tiny_dir, data))
    assert rc == 0, err
    assert "Traceback" not in err and "error: " not in err
    out = tmp_path / "run"
    assert (out / "final" / "config.json").is_file()
    assert (out / "config.yaml").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 2
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2]
    assert "done" in err


def test_data_inspect_valid_file(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    rc = main(["data", "inspect", str(data)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "format: prompt_completion" in out
    assert "rows: 8, kept: 8" in out
    assert "Traceback" not in err and "error" not in err


def test_data_inspect_bad_file(tmp_path, capsys):
    lines = [json.dumps(r) for r in sft_rows(6)]
    lines[2] = "{not json"
    data = write_lines(tmp_path / "d.jsonl", lines)
    rc = main(["data", "inspect", str(data)])
    _, err = capsys.readouterr()
    assert_user_error(rc, err, str(data), "row 3", "invalid JSON on line 3")


def test_data_inspect_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    rc = main(["data", "inspect", str(missing)])
    _, err = capsys.readouterr()
    assert_user_error(rc, err, str(missing), "file not found")


# --------------------------------------------------------------------------- a real process


def _cli_command() -> list[str]:
    script = Path(sys.executable).parent / "rlhflab"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "rlhflab.cli"]


def test_real_process_exit_code_and_no_traceback(tmp_path, tiny_dir):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8))
    bad = write_cfg(tmp_path, tiny_dir, data, name="bad.yaml", max_step=3)
    proc = subprocess.run([*_cli_command(), "train", str(bad)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "4000"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("error: ") == 1
    assert "unknown config key 'max_step'" in proc.stderr and "max_steps" in proc.stderr
    assert_nothing_written(tmp_path / "run")
