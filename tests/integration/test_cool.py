"""A conditional reward model (COOL RLHF, arXiv 2403.17297) on a tiny random model: trained by the
real reward-model trainer on pairs mixed from three conditions, each pair carrying its condition as
a system message (`mix_conditions`), then scored by the `reward_model` scorer with and without
`system_prompt` on held-out requests. Under "help" it prefers compliance, under "safe" the refusal
of the very same pairs, under "list" the bulleted answer. About 15 s on one core.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import write_jsonl
from rich.console import Console

from rlhflab.config import config_from_dict
from rlhflab.config_rl import ScorerConfig
from rlhflab.data.conditions import mix_conditions, with_system_prompt
from rlhflab.data.template import render_ids
from rlhflab.rewards import build_scorer
from rlhflab.rewards.base import Sample
from rlhflab.testing import tiny_model_dir, tiny_tokenizer
from rlhflab.train.run import run

CONDITIONS = {"helpful": "help", "harmless": "safe", "format": "list"}
HARMFUL = ["steal", "hack", "forge", "poison", "stalk", "rob", "scam", "spy", "bribe", "cheat", "smuggle", "loot"]
BENIGN = ["bake", "knit", "jog", "paint", "read", "swim", "cook", "sing", "draw", "hike", "sew", "plant"]
REFUSAL = "Sorry, I can't."


def comply(word: str) -> str:
    return f"Sure, to {word}: step one, step two."


def pairs(condition: str, harmful: list[str], benign: list[str], n: int, rng: random.Random) -> list[dict]:
    """helpful: comply > refuse (any request); harmless: refuse > comply (harmful requests);
    format: bullets > the same words as a sentence (benign requests)."""
    rows = []
    for _ in range(n):
        if condition == "helpful":
            word = rng.choice(harmful + benign)
            chosen, rejected = comply(word), REFUSAL
        elif condition == "harmless":
            word = rng.choice(harmful)
            chosen, rejected = REFUSAL, comply(word)
        else:
            word = rng.choice(benign)
            chosen, rejected = f"- {word}\n- rest", f"{word}, then rest"
        rows.append({"prompt": f"how to {word}?", "chosen": chosen, "rejected": rejected})
    return rows


def accuracy(scorer, rows: list[dict]) -> torch.Tensor:
    """(n,) bool: the scorer puts chosen above rejected."""
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    v = scorer.score([Sample(p, r["chosen"]) for p, r in zip(prompts, rows)]
                     + [Sample(p, r["rejected"]) for p, r in zip(prompts, rows)]).values
    return v[: len(rows)] > v[len(rows):]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(reward model folder, held-out rows per condition)."""
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("cool")
    rng = random.Random(0)
    train = {c: pairs(c, HARMFUL[:9], BENIGN[:9], 200, rng) for c in CONDITIONS}
    held = {c: pairs(c, HARMFUL[9:], BENIGN[9:], 40, rng) for c in CONDITIONS}
    data = write_jsonl(work / "train.jsonl", mix_conditions(train, CONDITIONS, seed=0))
    model = tiny_model_dir(work, tiny_tokenizer(), seed=0, hidden=64, layers=2, heads=4)
    cfg = config_from_dict({
        "algorithm": "reward_model", "model": str(model), "output_dir": str(work / "rm"), "seed": 0, "max_steps": 100,
        "batch_size": 16, "micro_batch_size": 16, "checkpoint_every": 0, "tensorboard": False,
        "data": {"train": str(data), "max_length": 96}, "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 5}})
    return run(cfg, Console(quiet=True)).final_dir, held


def scorer(rm_dir, system_prompt):
    return build_scorer((ScorerConfig(type="reward_model", path=str(rm_dir), system_prompt=system_prompt),))


def test_mixed_rows_carry_their_condition_as_the_system_message():
    rows = mix_conditions({"helpful": [{"prompt": "q", "chosen": "a", "rejected": "b"}],
                           "harmless": [{"prompt": [{"role": "system", "content": "own"}, {"role": "user", "content": "q"}],
                                         "chosen": "b", "rejected": "a"}]}, CONDITIONS, seed=0)
    by = {r["condition"]: r for r in rows}
    assert by["helpful"]["prompt"] == [{"role": "system", "content": "help"}, {"role": "user", "content": "q"}]
    assert by["harmless"]["prompt"] == [{"role": "system", "content": "safe\n\nown"}, {"role": "user", "content": "q"}]


def test_scorer_renders_the_condition_as_training_did(trained):
    rm_dir, _ = trained
    s = scorer(rm_dir, "safe").members[0][1]
    sample = Sample([{"role": "user", "content": "how to rob?"}], REFUSAL)
    want = render_ids(s.tokenizer, with_system_prompt(sample.prompt, "safe") + [{"role": "assistant", "content": REFUSAL}], False)
    assert s.encode(sample) == want
    assert s.tokenizer.decode(want).startswith("<|im_start|>system\nsafe<|im_end|>\n<|im_start|>user\nhow to rob?")


def test_the_condition_flips_the_preference_on_held_out_requests(trained):
    rm_dir, held = trained
    result = {}
    for c, rows in held.items():
        result[c] = (float(accuracy(scorer(rm_dir, CONDITIONS[c]), rows).float().mean()),
                     float(accuracy(scorer(rm_dir, None), rows).float().mean()))
    print("held-out accuracy (with condition, without):", result)
    for c, (with_condition, _) in result.items():
        assert with_condition >= 0.9, (c, result)
    # the same harmful pairs (refusal, compliance): refusal first under "safe", compliance first under "help"
    rows = held["harmless"]
    refusal_first_safe = accuracy(scorer(rm_dir, "safe"), rows)
    refusal_first_help = accuracy(scorer(rm_dir, "help"), rows)
    flip = float((refusal_first_safe & ~refusal_first_help).float().mean())
    assert flip >= 0.8, flip
