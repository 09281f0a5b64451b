"""The stages learn: SFT drives held-out loss down; a reward model recovers a known gold reward."""

from __future__ import annotations

from rich.console import Console
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import pref_rows, sft_rows, write_jsonl
from rlhflab.train.run import run

QUIET = Console(quiet=True)


def test_sft_drives_heldout_loss_down(make_cfg, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(200, seed=0))
    held = write_jsonl(tmp_path / "eval.jsonl", sft_rows(40, seed=1))
    res = run(make_cfg(data={"train": str(train), "eval": str(held)}, max_steps=60, batch_size=16, micro_batch_size=16,
                       optim={"lr": 1e-2, "schedule": "cosine", "warmup_steps": 5}), QUIET)
    before, after = res.initial_eval["eval/loss"], res.history[-1]["eval/loss"]
    print(f"SFT eval loss {before:.3f} -> {after:.3f}")
    assert after < 0.5 * before, (before, after)
    AutoModelForCausalLM.from_pretrained(res.final_dir)  # the final folder is a plain HF model


def test_sft_lora_and_packing_run_and_save(make_cfg, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(64))
    res = run(make_cfg(data={"train": str(train)}, max_steps=3, lora={"r": 4, "alpha": 8}, sft={"packing": True},
                       batch_size=2, micro_batch_size=1), QUIET)
    assert (res.final_dir / "model.safetensors").is_file()
    assert (res.final_dir / "adapter" / "adapter_config.json").is_file()
    AutoModelForCausalLM.from_pretrained(res.final_dir)


def test_reward_model_reaches_90_percent_heldout_accuracy(make_cfg, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", pref_rows(400, seed=0))
    held = write_jsonl(tmp_path / "eval.jsonl", pref_rows(100, seed=1))
    res = run(make_cfg(algorithm="reward_model", data={"train": str(train), "eval": str(held)}, max_steps=80,
                       batch_size=16, micro_batch_size=16, optim={"lr": 3e-3, "schedule": "cosine", "warmup_steps": 5}),
              QUIET)
    ev = res.history[-1]
    print(f"RM eval accuracy {ev['eval/accuracy']:.3f} ece {ev['eval/ece']:.3f}")
    assert ev["eval/accuracy"] >= 0.9, ev
    assert 0.0 <= ev["eval/ece"] <= 1.0
    model = AutoModelForSequenceClassification.from_pretrained(res.final_dir)
    assert model.config.num_labels == 1
