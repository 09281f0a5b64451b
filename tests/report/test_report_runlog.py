"""What a training run writes for its report: run.json, warnings.jsonl, samples.jsonl at a few
rounds, and report.html at the end (a failure to write it is a warning, not a failed run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from rlhflab.report import runlog
from rlhflab.report.runlog import drop_rows_after, pick_samples, sample_rounds


def test_sample_rounds_first_last_and_evenly_between():
    # round(i * 15 / 7) for i = 0..7: 0, 2.14, 4.29, 6.43, 8.57, 10.71, 12.86, 15
    assert sample_rounds(16) == {0, 2, 4, 6, 9, 11, 13, 15}
    assert sample_rounds(100) == {0, 14, 28, 42, 57, 71, 85, 99}
    assert sample_rounds(5) == {0, 1, 2, 3, 4}
    assert sample_rounds(1) == {0} and sample_rounds(0) == set()


def test_pick_samples_takes_one_per_prompt_first():
    # 3 prompts x 2 samples, grouped: the first sample of each prompt, then the second of prompt 0
    assert pick_samples([0, 0, 1, 1, 2, 2], k=4) == [0, 2, 4, 1]
    assert pick_samples([0, 0], k=4) == [0, 1]


def test_drop_rows_after_keeps_earlier_rows_and_drops_cut_lines(tmp_path):
    p = tmp_path / "warnings.jsonl"
    p.write_text('{"step": 1, "message": "a"}\n{"step": 5, "message": "b"}\n{"step": null, "message": "c"}\n{"st')
    drop_rows_after(p, 4)
    assert [json.loads(x)["message"] for x in p.read_text().splitlines()] == ["a", "c"]


def test_finish_run_failure_is_a_warning(tmp_path):
    console = Console(record=True, width=200)
    assert runlog.finish_run(tmp_path / "missing", 3, 10, None, console) is None  # no such run directory
    assert "warning: could not write the run report" in console.export_text()


def test_train_writes_run_files_and_report(grpo_run):
    info = json.loads((grpo_run / "run.json").read_text())
    plan = info["plan"]
    # 4 prompts x 4 samples per step, micro-batches of 8: 2 accumulation steps; 12 of 16 prompts train (eval 0.25)
    assert (plan["batch_size"], plan["micro_batch_size"], plan["accumulation"], plan["items"], plan["eval_items"]) \
        == (16, 8, 2, 12, 4)
    assert plan["text"].startswith("batch plan: 16 sequences/step")
    assert plan["epochs"] == pytest.approx(8 * 4 / 12)
    assert info["trainable_parameters"] == info["parameters"] > 0 and info["device"] == "cpu"
    assert {"torch", "transformers", "rlhflab", "python"} <= set(info["versions"])
    assert info["end"]["outcome"] == "finished" and info["end"]["step"] == 8
    # 8 rounds of one step each (<= SAMPLE_POINTS): every round, 4 samples each from 4 different prompts
    rows = [json.loads(x) for x in (grpo_run / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [s for s in range(1, 9) for _ in range(4)]
    assert all(len({r["prompt"] for r in rows if r["step"] == s}) == 4 for s in range(1, 9))
    assert set(rows[0]["scores"]) == {"reward", "reward/python", "gold", "gold/python"}
    html = (grpo_run / "report.html").read_text()
    assert "<h1>run</h1>" in html and "finished" in html and "proxy and gold reward against KL" in html


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_warnings_as_raised_and_resume_drops_rows_after_the_checkpoint(make_grpo_config):
    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    cfg = make_grpo_config("run", fn="constant", max_steps=4, checkpoint_every=2,
                           grpo={"zero_variance_warn_steps": 1})
    out = run(config_from_dict(cfg), stop_at=2).out_dir
    warned = _jsonl(out / "warnings.jsonl")
    assert [w["step"] for w in warned] == [1] and warned[0]["message"].startswith("zero_variance_groups")
    assert json.loads((out / "run.json").read_text())["end"]["outcome"] == "stopped"
    assert "stopped at step 2 of 4" in (out / "report.html").read_text()
    # a run killed during step 3 after logging its samples and a warning: resuming redoes step 3
    runlog.append_jsonl(out / "samples.jsonl", {"step": 3, "prompt": "p", "completion": "stale", "scores": {}})
    runlog.record_warning(out, 3, "stale warning")
    run(config_from_dict({**cfg, "resume": True}))
    assert [r["step"] for r in _jsonl(out / "samples.jsonl")] == [s for s in range(1, 5) for _ in range(4)]
    assert "stale" not in (out / "samples.jsonl").read_text() + (out / "warnings.jsonl").read_text()
    assert "resumed" in json.loads((out / "run.json").read_text())
    assert "finished" in (out / "report.html").read_text()


def test_a_failed_run_still_writes_its_report(make_grpo_config):
    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    cfg = make_grpo_config("run", fn="crash_on_third_round", max_steps=4)
    cfg["data"]["eval_fraction"] = 0.0
    cfg["grpo"]["gold"] = []
    with pytest.raises(Exception, match="the scorer crashed"):
        run(config_from_dict(cfg))
    out = Path(cfg["output_dir"])
    end = json.loads((out / "run.json").read_text())["end"]
    assert end["step"] == 2 and "the scorer crashed" in end["outcome"]
    assert "stopped at step 2 of 4" in (out / "report.html").read_text()


def test_offline_run_gets_run_json_and_report(tiny_dir, tmp_path):
    from rlhflab.config import config_from_dict
    from rlhflab.report.load import load_run
    from rlhflab.report.plots import time_breakdown
    from rlhflab.train.run import run

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"spell {i}", "completion": "one two"}) + "\n" for i in range(8)))
    cfg = {"algorithm": "sft", "model": str(tiny_dir), "output_dir": str(tmp_path / "sft"), "max_steps": 2,
           "batch_size": 4, "micro_batch_size": 2, "checkpoint_every": 0, "tensorboard": False,
           "data": {"train": str(data), "max_length": 64}}
    out = run(config_from_dict(cfg)).out_dir
    plan = json.loads((out / "run.json").read_text())["plan"]
    assert (plan["batch_size"], plan["micro_batch_size"], plan["accumulation"], plan["items"]) == (4, 2, 2, 8)
    assert plan["tokens_per_step"] > 0 and plan["text"].endswith("tokens/step")
    assert not (out / "samples.jsonl").exists()  # no rollouts offline
    run_data = load_run(out)
    steps, table = time_breakdown(run_data)  # update + other (collation) = time/step_s, closed form per step
    for i, row in enumerate(run_data.metrics):
        assert table["update"][i] + table.get("other", [0.0] * len(steps))[i] == pytest.approx(row["time/step_s"])
    assert "batch plan: 4 examples/step" in (out / "report.html").read_text()
