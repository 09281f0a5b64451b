"""`rlhflab eval` on tiny models: the output files and their schema, a run directory evaluated with
its own settings (reproducing the run's final evaluation), and exit code 2 before any model loads
on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhflab.cli import main

SCORER = ("def count_a(samples):\n    return [s.completion.count('a') / 4.0 for s in samples]\n"
          "def spread(samples):\n    return [sum(map(ord, s.completion)) % 7 / 7 for s in samples]\n")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    from rlhflab.testing import tiny_model_dir, tiny_tokenizer

    root = tmp_path_factory.mktemp("eval-models")
    return tiny_model_dir(root / "a", tiny_tokenizer(), seed=0), tiny_model_dir(root / "b", tiny_tokenizer(), seed=1)


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"add {i} and {i}", "answer": 2 * i}) + "\n" for i in range(5)))
    scorer = tmp_path / "scorer.py"
    scorer.write_text(SCORER)
    return {"prompts": prompts, "scorer": scorer}


def test_eval_writes_eval_json_and_generations(models, files, tmp_path):
    a, b = models
    out = tmp_path / "out"
    code = main(["eval", str(a), str(b), "--data", str(files["prompts"]), "--reward", "math", "--reward",
                 f"python:{files['scorer']}:count_a", "--reference", str(b), "--max-new-tokens", "6",
                 "--temperature", "1.0", "--n", "2", "--seed", "5", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "eval.json").read_text())
    assert set(doc) == {"settings", "reference", "models", "notes", "seconds"}
    s = doc["settings"]
    assert s["prompts"] == 5 and s["dropped_prompts"] == 0 and s["n"] == 2 and s["seed"] == 5
    assert s["rewards"] == [{"type": "math"}, {"type": "python", "function": f"{files['scorer']}:count_a"}]
    assert doc["reference"]["name"] == str(b) and "kl" not in doc["reference"]["metrics"]
    assert [m["name"] for m in doc["models"]] == [str(a), str(b)]
    for m in doc["models"]:
        for key in ("reward", "math", "python", "accuracy", "pass@2", "length/mean", "length/median", "length/p90",
                    "length/max", "length/truncated", "length/chars_mean", "kl", "kl/k1", "win_rate"):
            assert isinstance(m["metrics"][key], float), key
        wr = m["win_rate"]
        assert wr["by"] == "scorer math" and wr["wins"] + wr["losses"] + wr["ties"] == 10
    same = doc["models"][1]  # the reference evaluated as a model: the same seeded completions
    assert same["metrics"]["kl"] == 0.0 and same["win_rate"]["ties"] == 10
    assert same["metrics"]["reward"] == doc["reference"]["metrics"]["reward"]
    assert doc["models"][0]["metrics"]["kl"] > 0
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 5 * 2  # (reference + 2 models) x 5 prompts x 2 samples
    first = rows[0]
    assert first["role"] == "reference" and first["row"] == 1 and first["prompt"] == "add 0 and 0"
    assert set(first["scores"]) == {"math", "python", "reward"}
    model_row = next(r for r in rows if r["role"] == "model")
    assert {"kl", "winner", "completion", "tokens", "finish_reason", "sample"} <= set(model_row)
    assert model_row["winner"] in ("model", "reference", "tie")


def test_eval_win_rate_by_a_judge(models, files, tmp_path):
    """A pairwise judge (the reference's own weights, loaded once) decides the win rate; the reference
    against itself, greedy: identical answers, every pair a tie."""
    a, b = models
    judge = tmp_path / "judge.yaml"
    judge.write_text("mode: pairwise\ntemplate: \"Pick.\\n[Q]\\n{prompt}\\n[End Q]\\n[A]\\n{response_a}\\n[End A]"
                     "\\n[B]\\n{response_b}\\n[End B]\"\nmax_length: 200\n")
    out = tmp_path / "judged"
    assert main(["eval", str(a), str(b), "--data", str(files["prompts"]), "--reference", str(b), "--judge-config",
                 str(judge), "--max-new-tokens", "4", "--no-kl", "--out", str(out)]) == 0
    doc = json.loads((out / "eval.json").read_text())
    first, same = doc["models"]
    assert first["win_rate"]["by"].startswith(f"judge {b}") and "kl" not in first["metrics"]
    assert first["win_rate"]["wins"] + first["win_rate"]["losses"] + first["win_rate"]["ties"] == 5
    assert same["win_rate"]["ties"] == 5 and same["metrics"]["win_rate"] == 0.5
    assert 0.0 <= first["metrics"]["win_rate"] <= 1.0


def test_eval_without_reference_says_so(models, files, capsys):
    a, _ = models
    assert main(["eval", str(a), "--data", str(files["prompts"]), "--max-new-tokens", "3"]) == 0
    err = capsys.readouterr().err
    assert "no reference model" in err and "nothing written" in err


def test_eval_of_a_run_directory_reproduces_its_final_evaluation(models, files, tmp_path):
    """Full fine-tuning GRPO with held-out prompts: `rlhflab eval RUN` (the run's eval data, rewards,
    generation length, reference) gives the reward the run measured after its last step."""
    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    a, _ = models
    cfg = config_from_dict({
        "algorithm": "grpo", "model": str(a), "output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 4,
        "micro_batch_size": 8, "tensorboard": False, "checkpoint_every": 0, "optim": {"lr": 1e-2},
        "data": {"train": str(files["prompts"]), "eval": str(files["prompts"]), "max_length": 64},
        "grpo": {"rewards": [{"type": "python", "function": f"{files['scorer']}:spread"}],
                 "generation": {"num_generations": 4, "max_new_tokens": 8}},
    })
    res = run(cfg)
    after = json.loads((res.out_dir / "summary.json").read_text())["eval_after"]
    assert main(["eval", str(res.out_dir)]) == 0
    doc = json.loads((res.out_dir / "eval" / "eval.json").read_text())
    m = doc["models"][0]
    assert m["path"] == str(res.out_dir / "final") and doc["reference"]["path"] == str(a)
    assert doc["settings"]["max_new_tokens"] == 8 and doc["settings"]["prompts"] == 5
    assert m["metrics"]["reward"] == pytest.approx(after["eval/reward"], abs=1e-6)
    assert m["metrics"]["length/mean"] == pytest.approx(after["eval/response_length"], abs=1e-9)
    assert m["metrics"]["kl"] > 0


@pytest.mark.parametrize("extra, message", [
    (["--n", "2"], "identical completions"),
    (["--temperature", "-1"], "--temperature"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--reward", "nope"], "unknown scorer type"),
    (["--reward", "python:missing.py:fn"], "missing.py"),
    (["--rationale"], "need a judge"),
    (["--judge-model", "smollm2-135m"], "--reference"),
    (["--reference", "no/such-folder"], "no such folder"),
    (["--limit", "0"], "--limit"),
])
def test_bad_flags_exit_2_before_any_model_loads(models, files, monkeypatch, capsys, extra, message):
    _no_model_loads(monkeypatch)
    a, _ = models
    code = main(["eval", str(a), "--data", str(files["prompts"]), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def test_bad_data_exits_2_naming_file_row_and_field(models, tmp_path, monkeypatch, capsys):
    _no_model_loads(monkeypatch)
    a, _ = models
    missing = tmp_path / "missing.jsonl"
    assert main(["eval", str(a), "--data", str(missing)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    no_prompt = tmp_path / "no_prompt.jsonl"
    no_prompt.write_text(json.dumps({"question": "hi"}) + "\n")
    assert main(["eval", str(a), "--data", str(no_prompt)]) == 2
    assert "no_prompt.jsonl" in capsys.readouterr().err
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text(json.dumps({"prompt": "1+1", "answer": 2}) + "\n" + json.dumps({"prompt": "2+2"}) + "\n")
    assert main(["eval", str(a), "--data", str(no_answer), "--reward", "math"]) == 2
    err = capsys.readouterr().err
    assert "no_answer.jsonl, row 2, field 'answer'" in err


def test_model_and_run_directory_errors_exit_2(models, files, tmp_path, monkeypatch, capsys):
    _no_model_loads(monkeypatch)
    assert main(["eval", str(tmp_path / "nowhere"), "--data", str(files["prompts"])]) == 2
    assert "no such folder" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(f"algorithm: sft\ndata: {{train: {files['prompts']}}}\n")
    assert main(["eval", str(unfinished)]) == 2
    assert "has no final/" in capsys.readouterr().err
    assert main(["eval", str(models[0])]) == 2  # a model folder and no --data
    assert "--data is required" in capsys.readouterr().err


def _no_model_loads(monkeypatch):
    import rlhflab.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(rlhflab.models, "load_causal_lm", refuse)
