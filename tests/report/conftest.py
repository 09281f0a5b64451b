"""Run directories for the report tests: a real GRPO run on a tiny random model (built in code),
and hand-written ones for the loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SCORER = '''
def ascii_share(samples):
    return [sum(ch.isascii() for ch in s.completion) / max(len(s.completion), 1) for s in samples]

def letters(samples):
    return [sum(ch.isalpha() and ch.isascii() for ch in s.completion) / 8.0 for s in samples]

def constant(samples):
    return [0.0 for _ in samples]

CALLS = [0]

def crash_on_third_round(samples):
    CALLS[0] += 1
    if CALLS[0] >= 3:
        raise RuntimeError("the scorer crashed")
    return [0.0 for _ in samples]
'''


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def grpo_config(tiny: Path, tmp: Path, out: Path, fn: str = "ascii_share", **over) -> dict:
    """A tiny GRPO run: 4 prompts x 4 samples per step, a proxy reward, a gold scorer, KL logged."""
    scorer = tmp / "scorer.py"
    scorer.write_text(SCORER)
    data = write_jsonl(tmp / "prompts.jsonl", [{"prompt": f"say a word {i}", "answer": i} for i in range(16)])
    cfg = {"algorithm": "grpo", "model": str(tiny), "output_dir": str(out), "seed": 0, "max_steps": 8,
           "batch_size": 4, "micro_batch_size": 8, "checkpoint_every": 0, "tensorboard": False,
           "optim": {"lr": 3e-3, "schedule": "constant"},
           "data": {"train": str(data), "max_length": 64, "eval_fraction": 0.25},
           "grpo": {"rewards": [{"type": "python", "function": f"{scorer}:{fn}"}],
                    "gold": [{"type": "python", "function": f"{scorer}:letters"}],
                    "generation": {"num_generations": 4, "max_new_tokens": 8}, "log_kl": True}}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


@pytest.fixture
def make_grpo_config(tiny_dir, tmp_path):
    """`make(out_name, fn=..., **overrides)`: a config dict for a tiny GRPO run in tmp_path."""
    return lambda name, **over: grpo_config(tiny_dir, tmp_path, tmp_path / name, **over)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from rlhflab.testing import tiny_model_dir, tiny_tokenizer

    return Path(tiny_model_dir(tmp_path_factory.mktemp("tiny"), tiny_tokenizer()))


@pytest.fixture(scope="session")
def grpo_run(tiny_dir, tmp_path_factory) -> Path:
    """A finished 8-step GRPO run directory (written by `rlhflab.train.run.run`, report included)."""
    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    tmp = tmp_path_factory.mktemp("grpo")
    res = run(config_from_dict(grpo_config(tiny_dir, tmp, tmp / "run")))
    return res.out_dir


@pytest.fixture
def fake_run():
    """`make(path, steps, lr, summary, **metric_slopes)`: a run directory written by hand."""
    return make_fake_run


def make_fake_run(path: Path, steps: int = 5, lr: float = 1e-3, summary: bool = True, **extra_metrics) -> Path:
    """A run directory written by hand: config.yaml, metrics.jsonl (loss = 1/step, reward = step/10,
    timers), optionally summary.json."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(f"algorithm: grpo\nmodel: tiny\nmax_steps: {steps}\nbatch_size: 4\n"
                                      f"optim:\n  lr: {lr}\n  schedule: constant\n")
    rows = [{"step": s, "loss": 1.0 / s, "lr": lr, "reward/mean": s / 10, "time/generate_s": 2.0,
             "time/update_s": 1.0, "time/step_s": 3.5, **{k: v * s for k, v in extra_metrics.items()}}
            for s in range(1, steps + 1)]
    write_jsonl(path / "metrics.jsonl", rows)
    if summary:
        (path / "summary.json").write_text(json.dumps({"algorithm": "grpo", "steps": steps, "seconds": 12.5,
                                                       "warnings": ["from the summary"]}))
    return path
