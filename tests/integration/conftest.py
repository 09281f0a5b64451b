"""Tiny models and synthetic data for end-to-end tests (built in code, nothing downloaded)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rlhflab.config import config_from_dict

GOOD = ["great", "lovely", "superb", "kind", "bright"]
BAD = ["awful", "rude", "broken", "dull", "nasty"]
FILLER = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "was", "very", "so"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    """Spell a number: 'spell 42' -> 'four two'. A deterministic map the tiny model can learn."""
    names = "zero one two three four five six seven eight nine".split()
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(10, 999)
        rows.append({"prompt": f"spell {k}", "completion": " ".join(names[int(d)] for d in str(k))})
    return rows


def gold_reward(text: str) -> int:
    words = text.split()
    return sum(w in GOOD for w in words) - sum(w in BAD for w in words)


def pref_rows(n: int, seed: int = 0) -> list[dict]:
    """Pairs labelled by a known gold reward: each response has filler and one sentiment word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        def resp(word: str) -> str:
            words = rng.sample(FILLER, 4)
            words.insert(rng.randint(0, 4), word)
            return " ".join(words)

        a, b = resp(rng.choice(GOOD)), resp(rng.choice(BAD))
        assert gold_reward(a) > gold_reward(b)
        rows.append({"prompt": "say something", "chosen": a, "rejected": b})
    return rows


def unpaired_rows(n: int, seed: int = 0, scored: bool = False) -> list[dict]:
    """Single completions from `pref_rows`: each pair gives a desirable and an undesirable row
    (KTO's format), or rows with the gold reward as `reward` (DRO's scored format)."""
    rows = []
    for r in pref_rows((n + 1) // 2, seed):
        for text, good in ((r["chosen"], True), (r["rejected"], False)):
            row = {"prompt": r["prompt"], "completion": text}
            row.update({"reward": float(gold_reward(text))} if scored else {"label": good})
            rows.append(row)
    return rows[:n]


@pytest.fixture(autouse=True, scope="session")
def _reference_cache(tmp_path_factory):
    """Precomputed reference log-probs go to a temporary cache, not ~/.cache."""
    import os

    os.environ["RLHFLAB_REFERENCE_CACHE"] = str(tmp_path_factory.mktemp("reference-cache"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny Llama causal LM + byte-level ChatML tokenizer saved as a Hugging Face folder."""
    from rlhflab.testing import tiny_model_dir, tiny_tokenizer

    return Path(tiny_model_dir(tmp_path_factory.mktemp("tiny"), tiny_tokenizer()))


def tiny_config_dict(tiny_dir: Path, default_output_dir: Path, **over) -> dict:
    """A small, fast run config on the tiny model; `over` replaces keys (dicts are merged one level)."""
    base = {
        "algorithm": "sft",
        "model": str(tiny_dir),
        "output_dir": str(default_output_dir),
        "seed": 0,
        "max_steps": 4,
        "batch_size": 8,
        "micro_batch_size": 4,
        "optim": {"lr": 3.0e-3, "schedule": "constant"},
        "checkpoint_every": 0,
        "tensorboard": False,
        "data": {"max_length": 64},
    }
    return merge_config(base, over)


def merge_config(base: dict, over: dict) -> dict:
    """`base` with the keys of `over` replaced; a dict value is merged into a dict one level deep."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


@pytest.fixture
def make_cfg(tiny_dir, tmp_path):
    def make(**over):
        return config_from_dict(tiny_config_dict(tiny_dir, tmp_path / "run", **over))

    return make
