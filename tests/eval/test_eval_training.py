"""The `evaluation:` section of a run on tiny models: evals.jsonl at the right steps with the
documented format, eval/gen/ metrics in metrics.jsonl, the best checkpoint, resume dropping the
rows after the checkpoint, the online trainers' own evaluation reproduced, and config / data errors
before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhflab.config import config_from_dict
from rlhflab.errors import ConfigError, DataError

SCORER = "def spread(samples):\n    return [sum(map(ord, s.completion)) % 7 / 7 for s in samples]\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from rlhflab.testing import tiny_model_dir, tiny_tokenizer

    return tiny_model_dir(tmp_path_factory.mktemp("tiny-eval"), tiny_tokenizer())


@pytest.fixture
def make(tiny, tmp_path):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"spell {i}", "completion": "a" * (i % 5 + 1)}) + "\n" for i in range(16)))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say a {i}", "answer": i}) + "\n" for i in range(6)))
    scorer = tmp_path / "scorer.py"
    scorer.write_text(SCORER)
    reward = {"type": "python", "function": f"{scorer}:spread"}

    def build(evaluation: dict, out: str = "run", **over) -> object:
        tree = {"algorithm": "sft", "model": str(tiny), "output_dir": str(tmp_path / out), "max_steps": 4,
                "batch_size": 4, "micro_batch_size": 4, "optim": {"lr": 3e-3, "schedule": "constant"},
                "checkpoint_every": 0, "tensorboard": False, "data": {"train": str(sft), "max_length": 64},
                "evaluation": {"data": str(prompts), "rewards": [reward], "max_new_tokens": 6, **evaluation}}
        tree.update(over)
        return config_from_dict(tree)

    build.prompts, build.reward = prompts, reward
    return build


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sft_run_evaluates_at_every_and_last_step_and_keeps_the_best(make):
    from rlhflab.train.run import run

    res = run(make({"every": 3, "samples": 2, "best_metric": "length/mean", "best_mode": "min", "at_start": True}))
    evals = read_jsonl(res.out_dir / "evals.jsonl")
    assert [e["step"] for e in evals] == [0, 3, 4]  # at_start, every 3, the last step
    for e in evals:
        assert set(e) == {"step", "metrics", "samples"}
        assert {"reward", "python", "kl", "kl/k1", "length/mean", "length/truncated"} <= set(e["metrics"])
        assert len(e["samples"]) == 2 and set(e["samples"][0]) == {"prompt", "completion", "scores"}
        assert e["samples"][0]["prompt"] == "say a 0" and set(e["samples"][0]["scores"]) == {"python"}
    assert evals[0]["metrics"]["kl"] == 0.0  # the initial policy against itself
    metrics = read_jsonl(res.out_dir / "metrics.jsonl")
    with_eval = [m["step"] for m in metrics if "eval/gen/reward" in m]
    assert with_eval == [3, 4]
    assert metrics[2]["eval/gen/kl"] == evals[1]["metrics"]["kl"]
    winner = min(evals, key=lambda e: (e["metrics"]["length/mean"], e["step"]))  # the earliest of equal bests
    best_step = winner["step"]
    best = json.loads((res.out_dir / "best.json").read_text())
    assert best == {"step": best_step, "metric": "length/mean", "value": winner["metrics"]["length/mean"]}
    assert (res.out_dir / "best" / "config.json").is_file() and (res.out_dir / "best" / "model.safetensors").is_file()
    summary = json.loads((res.out_dir / "summary.json").read_text())
    assert summary["best"]["step"] == best_step and summary["best"]["path"] == str(res.out_dir / "best")
    assert "eval/gen/reward" in summary["eval_before"] and "eval/gen/reward" in summary["eval_after"]


def test_the_best_folder_holds_the_best_steps_weights(make):
    """best/ is the policy of the best evaluation: evaluating it again gives the recorded value."""
    from rlhflab.config_eval import resolve_defaults
    from rlhflab.eval.evaluate import EvalPrompts, evaluate_policy, tokenize_prompts
    from rlhflab.models import load_causal_lm, load_tokenizer
    from rlhflab.train.run import run

    cfg = make({"every": 1, "best_metric": "kl", "best_mode": "max"})
    res = run(cfg)
    best = json.loads((res.out_dir / "best.json").read_text())
    evals = read_jsonl(res.out_dir / "evals.jsonl")
    assert [e["step"] for e in evals] == [1, 2, 3, 4]
    assert best["value"] == max(e["metrics"]["kl"] for e in evals)
    tok = load_tokenizer(res.out_dir / "best")
    from rlhflab.data import load_examples

    ex = load_examples(make.prompts, "prompt").examples
    items = tokenize_prompts(EvalPrompts(str(make.prompts), ex, [None] * len(ex)), tok, cfg.data)
    again = evaluate_policy(load_causal_lm(res.out_dir / "best"), tok, items, resolve_defaults(cfg.evaluation), None)
    step = next(e for e in evals if e["step"] == best["step"])
    assert again.metrics["length/mean"] == pytest.approx(step["metrics"]["length/mean"], abs=1e-9)


def test_resume_drops_evaluations_after_the_checkpoint(make):
    from rlhflab.train.run import run

    evaluation = {"every": 1, "best_metric": "length/mean", "best_mode": "max"}
    whole = run(make(evaluation, out="whole", checkpoint_every=2))
    cfg = make(evaluation, out="cut", checkpoint_every=2)
    run(cfg, stop_at=3)  # evaluations at 1, 2, 3; the checkpoint at 2
    assert [e["step"] for e in read_jsonl(cfg_dir(cfg) / "evals.jsonl")] == [1, 2, 3]
    resumed = run(config_from_dict({**to_tree(cfg), "resume": True}))
    steps = [e["step"] for e in read_jsonl(resumed.out_dir / "evals.jsonl")]
    assert steps == [1, 2, 3, 4]  # step 3 was dropped on resume and evaluated again
    a, b = read_jsonl(whole.out_dir / "evals.jsonl"), read_jsonl(resumed.out_dir / "evals.jsonl")
    for x, y in zip(a, b):
        assert x["metrics"] == pytest.approx(y["metrics"], abs=1e-5)
    assert json.loads((whole.out_dir / "best.json").read_text())["step"] == json.loads(
        (resumed.out_dir / "best.json").read_text())["step"]


def cfg_dir(cfg) -> Path:
    return Path(cfg.output_dir)


def to_tree(cfg) -> dict:
    from rlhflab.config import ALGORITHM_CONFIGS, to_dict

    tree = to_dict(cfg)
    for other in ALGORITHM_CONFIGS:
        if other != cfg.algorithm:
            tree.pop(other, None)
    return tree


def test_grpo_evaluation_matches_the_trainers_own(tiny, make, tmp_path):
    """LoRA GRPO: evaluation inherits the algorithm's rewards and generation length, renders the same
    prompt ids and decodes the same greedy completions as OnlineAlgorithm.evaluate; the reference is
    the adapter-disabled policy."""
    from rlhflab.train.run import run

    cfg = config_from_dict({
        "algorithm": "grpo", "model": str(tiny), "output_dir": str(tmp_path / "grpo"), "max_steps": 2,
        "batch_size": 4, "micro_batch_size": 8, "tensorboard": False, "checkpoint_every": 0,
        "optim": {"lr": 5e-2}, "lora": {"r": 4, "alpha": 8},
        "data": {"train": str(make.prompts), "eval": str(make.prompts), "max_length": 64},
        "grpo": {"rewards": [make.reward], "generation": {"num_generations": 4, "max_new_tokens": 8}},
        "evaluation": {"samples": 6},
    })
    res = run(cfg)
    last = res.history[-1]
    assert last["eval/gen/reward"] == pytest.approx(last["eval/reward"], abs=1e-6)
    assert last["eval/gen/length/mean"] == pytest.approx(last["eval/response_length"], abs=1e-9)
    assert last["eval/gen/kl"] > 0  # the adapter moved away from the base model
    evals = read_jsonl(res.out_dir / "evals.jsonl")
    assert [e["step"] for e in evals] == [2] and len(evals[0]["samples"]) == 6


def test_config_errors_before_any_model_loads(make):
    with pytest.raises(ConfigError, match="best_metric 'acuracy'.*Did you mean 'accuracy'"):
        make({"rewards": [{"type": "math"}], "best_metric": "acuracy"})
    with pytest.raises(ConfigError, match="best_metric 'kl'"):
        make({"kl": False, "best_metric": "kl"})
    with pytest.raises(ConfigError, match="identical completions"):
        make({"n": 2})
    with pytest.raises(ConfigError, match="clash"):
        make({"rewards": [{"type": "math", "name": "accuracy"}]})
    with pytest.raises(ConfigError, match="win_rate needs"):
        make({"rewards": [], "win_rate": True})
    with pytest.raises(ConfigError, match="unknown config key 'evaluation.evry'"):
        make({"evry": 2})
    with pytest.raises(ConfigError, match="needs prompts"):
        make({"data": None})
    with pytest.raises(ConfigError, match="reward_model"):
        make({}, algorithm="reward_model")


def test_evaluation_data_errors_name_file_row_and_field(make, tmp_path, monkeypatch):
    import rlhflab.models
    from rlhflab.train.run import run

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "1+1", "answer": 2}) + "\n" + json.dumps({"prompt": "2+2"}) + "\n")
    monkeypatch.setattr(rlhflab.models, "load_tokenizer", lambda *a, **k: pytest.fail("loaded before the data check"))
    with pytest.raises(DataError, match=r"bad.jsonl, row 2, field 'answer'"):
        run(make({"data": str(bad), "rewards": [{"type": "math"}]}))
