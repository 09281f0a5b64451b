"""Suite sft: supervised fine-tuning steps, rlhflab `algorithm: sft` next to TRL's SFTTrainer.

Data: the benchmark's synthetic rows as {"prompt", "completion"} (the chosen answers of
common.make_pairs), ~72 tokens per sequence with SmolLM2's chat template; TRL gets them in the
conversational prompt-completion form, so both sides train on the same ids (checked per row) and
on the completion only (TRL's completion also covers the "\\n" after <|im_end|>: one loss token
more per row). Batch --batch-size sequences in one micro-batch, lr 1e-5 constant, AdamW as
common.optim_config, max_length --max-length (no truncation), seed --seed: both sides draw the
same batches (a randperm seeded the same way), so their losses agree step by step up to that token.
TRL variants: the matching precision without gradient checkpointing, and `defaults` (TRL's own
bf16 autocast and gradient checkpointing).
"""

from __future__ import annotations

import json
import statistics

from common import Ctx, make_pairs, offline_run, rlhflab_items, run_both, stats, write_jsonl
from flops import ModelShape, causal_pairs

NAME = "sft"
LR = 1e-5


def prepare(ctx: Ctx) -> dict:
    a = ctx.args
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in make_pairs(a.rows, a.seed)]
    data = write_jsonl(ctx.scratch / "sft.jsonl", rows)
    items = rlhflab_items(ctx, data, "sft", a.max_length)
    expected = ctx.scratch / "sft_ids.json"
    expected.write_text(json.dumps([it.input_ids for it in items]))
    lengths, scored = [len(it.input_ids) for it in items], [sum(it.loss_mask) for it in items]
    return {
        "data": str(data), "expected_ids": str(expected), "rows": len(rows),
        "tokens": {"sequence": stats(lengths), "loss_tokens (rlhflab)": stats(scored)},
        "flops_inputs": {"T": statistics.fmean(lengths), "C": statistics.fmean(scored), "TT": causal_pairs(lengths)},
        "settings": {"batch_size": a.batch_size, "micro_batch_size": a.batch_size, "lr": LR, "lr_schedule": "constant",
                     "max_length": a.max_length, "seed": a.seed, "loss": "token-mean NLL on completion tokens"},
    }


def run(ctx: Ctx, model: str, prep: dict) -> list[dict]:
    cfg, spec = offline_run(ctx, model, prep, "sft", LR)
    trl = {ctx.plain: ctx.trl_precision(), "defaults": {}}
    return run_both(ctx, NAME, model, {ctx.plain: cfg}, "trl_sft_worker.py", spec, trl)


def step_flops(shape: ModelShape, prep: dict, row: dict) -> float:
    """batch x (forward + backward of one sequence: decoder on every token, LM head on the loss tokens)."""
    f = prep["flops_inputs"]
    return prep["settings"]["batch_size"] * shape.train(f["T"], f["C"], TT=f["TT"])
