"""`rlhflab quickstart`: a short LoRA SFT of the embedded SmolLM2-135M-Instruct on CPU.

It teaches a fixed answer format on a bundled toy task (arithmetic, word reversal, parity), shows
held-out loss before and after, and greedy answers of the base and tuned models side by side.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from rlhflab.config import config_from_dict

PROBES = ["What is 71 + 104?", "Is 57 even or odd?", "Reverse the order of these words: moon paper door"]


def quickstart_config(output_dir: str, steps: int, model: str) -> dict:
    data = str(resources.files("rlhflab") / "assets" / "quickstart_sft.jsonl")
    return {
        "algorithm": "sft",
        "model": model,
        "data": {"train": data, "eval_fraction": 0.15, "max_length": 128},
        "output_dir": output_dir,
        "seed": 0,
        "max_steps": steps,
        "batch_size": 8,
        "micro_batch_size": 8,
        "optim": {"lr": 1.0e-3, "warmup_steps": 3, "schedule": "cosine"},
        "lora": {"r": 16, "alpha": 32},
        "checkpoint_every": 0,
        "eval_every": 0,
        "overwrite": True,
        "sft": {"packing": False},
    }


@torch.no_grad()
def greedy_answers(model_dir: str, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    from transformers import AutoModelForCausalLM

    from rlhflab.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def quickstart(output_dir: str = "runs/quickstart", steps: int = 30, model: str = "smollm2-135m",
               console: Console | None = None) -> None:
    from rlhflab.models import resolve_model_path
    from rlhflab.train.run import run

    console = console or Console(stderr=True)
    cfg = config_from_dict(quickstart_config(output_dir, steps, model))
    console.print(f"[bold]rlhflab quickstart[/]: LoRA SFT of {model} for {steps} steps on a bundled toy task (CPU is fine)")
    result = run(cfg, console)
    base_dir = str(resolve_model_path(model))
    before = greedy_answers(base_dir, PROBES)
    after = greedy_answers(str(result.final_dir), PROBES)
    table = Table(title="greedy answers on prompts not in the training data")
    table.add_column("prompt")
    table.add_column("before")
    table.add_column("after")
    for p, b, a in zip(PROBES, before, after):
        table.add_row(p, b, a)
    Console().print(table)
    console.print(f"run directory: {Path(output_dir).resolve()} (config.yaml, metrics.jsonl, final/)")
