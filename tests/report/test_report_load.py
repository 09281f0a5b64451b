"""Reading run directories: half-written and missing files, non-finite values, what is not a run,
the status line and the wall time."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest

from rlhflab.errors import UserError
from rlhflab.report.html import render_report, write_report
from rlhflab.report.load import load_run, read_jsonl, status, wall_seconds


def test_truncated_last_line_is_skipped_with_a_note(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": "nan"}\n{"step": 3, "lo')
    notes: list[str] = []
    rows = read_jsonl(p, notes)
    assert [r["step"] for r in rows] == [1, 2]
    assert notes == ["metrics.jsonl, line 3: is incomplete (still being written, or the run was killed); skipped"]


def test_bad_middle_line_and_non_objects_are_named(tmp_path):
    p = tmp_path / "evals.jsonl"
    p.write_text('{"step": 1}\nnot json\n[1, 2]\n\n{"step": 4}\n')
    notes: list[str] = []
    assert [r["step"] for r in read_jsonl(p, notes)] == [1, 4]
    assert notes == ["evals.jsonl, line 2: is not valid JSON; skipped",
                     "evals.jsonl, line 3: not a JSON object; skipped"]


def test_missing_files_give_empty_fields(tmp_path):
    (tmp_path / "config.yaml").write_text("algorithm: sft\nmax_steps: 10\n")
    run = load_run(tmp_path)
    assert run.metrics == [] and run.summary == {} and run.info == {} and run.samples == [] and run.curves == []
    assert run.last_step == 0 and run.max_steps == 10
    assert any("no training step logged yet" in n for n in run.notes)
    html = render_report([run])  # an empty run still renders
    assert "no metrics logged yet" in html and "stopped at step 0 of 10" in html


def test_non_finite_strings_become_floats(tmp_path, fake_run):
    d = fake_run(tmp_path / "r", steps=2)
    with (d / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": "nan", "grad_norm": "inf"}\n')
    rows = load_run(d).metrics
    assert math.isnan(rows[2]["loss"]) and rows[2]["grad_norm"] == math.inf


def test_half_written_run_renders(tmp_path, fake_run):
    d = fake_run(tmp_path / "r", steps=6, summary=False)
    text = (d / "metrics.jsonl").read_text()
    (d / "metrics.jsonl").write_text(text[:-25])  # cut inside the last row
    out = write_report([d])
    html = out.read_text()
    assert out == d / "report.html"
    assert "stopped at step 5 of 6" in html and "line 6: is incomplete" in html
    assert "<svg" in html


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "run directory not found"),
    (lambda p: p.mkdir(), "is not a run directory: it has no config.yaml, metrics.jsonl or curves.json"),
    (lambda p: p.write_text("x"), "is a file; give the run directory"),
])
def test_not_a_run_is_a_user_error(tmp_path, setup, message):
    p = tmp_path / "thing"
    setup(p)
    with pytest.raises(UserError, match=message):
        load_run(p)


def test_folder_of_runs_names_them(tmp_path, fake_run):
    fake_run(tmp_path / "runs" / "a")
    with pytest.raises(UserError, match=r"it holds runs: a \(report those"):
        load_run(tmp_path / "runs")


def test_cli_exits_2_for_a_folder_that_is_not_a_run(tmp_path, capsys):
    from rlhflab.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_status_finished_running_stopped(tmp_path, fake_run):
    done = load_run(fake_run(tmp_path / "done", steps=3))
    assert status(done) == "finished" and wall_seconds(done) == 12.5

    live = fake_run(tmp_path / "live", steps=3, summary=False)
    (live / "config.yaml").write_text("max_steps: 10\n")
    info = {"started": "2024-01-01T00:00:00+0000", "pid": os.getpid(), "host": socket.gethostname()}
    (live / "run.json").write_text(json.dumps(info))
    assert status(load_run(live)) == "running: step 3 of 10"

    info["end"] = {"time": "2024-01-01T00:01:40+0000", "step": 3, "outcome": "NonFiniteError: step 4: non-finite loss"}
    (live / "run.json").write_text(json.dumps(info))
    stopped = load_run(live)
    assert status(stopped) == "stopped at step 3 of 10 (NonFiniteError: step 4: non-finite loss)"
    assert wall_seconds(stopped) == 100.0

    killed = fake_run(tmp_path / "killed", steps=3, summary=False)
    (killed / "config.yaml").write_text("max_steps: 10\n")
    (killed / "run.json").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    assert status(load_run(killed)) == "stopped at step 3 of 10"
    assert wall_seconds(load_run(killed)) == 3 * 3.5  # no start time: the sum of the step times


def test_warnings_merge_jsonl_and_summary(tmp_path, fake_run):
    d = fake_run(tmp_path / "r")
    (d / "warnings.jsonl").write_text(json.dumps({"step": 2, "message": "from the summary"}) + "\n"
                                      + json.dumps({"step": 4, "message": "only in jsonl"}) + "\n")
    assert load_run(d).warnings == [(2, "from the summary"), (4, "only in jsonl")]


def test_bad_optional_files_become_notes(tmp_path, fake_run):
    d = fake_run(tmp_path / "r")
    (d / "summary.json").write_text("{broken")
    (d / "curves.json").write_text(json.dumps([{"title": "ok", "series": [{"name": "a", "x": [1, 2], "y": [3, 4]}]},
                                               {"title": "bad", "series": [{"x": [1], "y": [1, 2]}]}]))
    run = load_run(d)
    assert run.summary == {} and [c["title"] for c in run.curves] == ["ok"]
    assert any(n.startswith("summary.json: not readable JSON") for n in run.notes)
    assert any(n.startswith("curves.json, entry 2:") for n in run.notes)


def test_eval_samples_come_from_evals_jsonl(tmp_path, fake_run):
    d = fake_run(tmp_path / "r")
    (d / "evals.jsonl").write_text(json.dumps({"step": 4, "metrics": {"accuracy": 0.5},
                                               "samples": [{"prompt": "1+1", "completion": "2",
                                                            "scores": {"math": 1.0}}]}) + "\n")
    run = load_run(d)
    assert run.samples == [{"prompt": "1+1", "completion": "2", "scores": {"math": 1.0}, "step": 4, "source": "eval"}]
    html = render_report([run])
    assert "step 4: evaluation (1)" in html and "During training (evals.jsonl)" in html


def test_eval_json_is_a_table_per_model(tmp_path, fake_run):
    d = fake_run(tmp_path / "r")
    (d / "eval").mkdir()
    (d / "eval" / "eval.json").write_text(json.dumps({
        "settings": {"data": "heldout.jsonl", "prompts": 200},
        "reference": {"name": "base", "path": "smollm2-135m", "metrics": {"reward": 0.1}},
        "models": [{"name": "trained", "path": "runs/r/final", "metrics": {"reward": 0.75},
                    "win_rate": {"rate": 0.8, "ci": [0.7, 0.9]}}]}))
    html = render_report([load_run(d)])
    section = html[html.index("eval/eval.json"):]
    assert "<p>200 prompts from heldout.jsonl</p>" in section
    assert "<th>base (reference)</th><th>trained</th>" in section
    assert "<td>reward</td><td>0.1</td><td>0.75</td>" in section
    assert "<td>win_rate.ci</td><td></td><td>[0.7, 0.9]</td>" in section


def test_reward_hacking_section_shows_its_points(tmp_path, fake_run):
    d = fake_run(tmp_path / "r")
    summary = json.loads((d / "summary.json").read_text())
    summary["reward_hacking"] = {"start": {"step": 1, "proxy": 0.1, "gold": 0.2, "kl": 0.0},
                                 "gold_peak": {"step": 3, "proxy": 0.5, "gold": 0.4, "kl": 1.5},
                                 "end": {"step": 5, "proxy": 0.9, "gold": 0.1, "kl": 4.0},
                                 "warned": True, "warning": {"step": 5}}
    (d / "summary.json").write_text(json.dumps(summary))
    html = render_report([load_run(d)])
    assert "<td>gold peak</td><td>3</td><td>0.5</td><td>0.4</td><td>1.5</td>" in html
    assert "over-optimization warning: yes, at step 5" in html


def test_out_in_a_missing_folder_is_a_user_error(tmp_path, fake_run):
    d = fake_run(tmp_path / "r")
    with pytest.raises(UserError, match="the folder .*nowhere does not exist"):
        write_report([d], tmp_path / "nowhere" / "report.html")
    with pytest.raises(UserError, match="is a directory"):
        write_report([d], tmp_path)
