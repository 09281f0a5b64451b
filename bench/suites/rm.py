"""Suite rm: reward-model steps, rlhflab `algorithm: reward_model` next to TRL's RewardTrainer.

Data: the benchmark's synthetic pairs {"prompt", "chosen", "rejected"}, given to TRL in the
conversational form with an explicit prompt, so both sides score the same ids (checked per
sequence): prompt + answer, ~72 tokens, ending "<|im_end|>\\n". Both load
AutoModelForSequenceClassification with one label and a fresh `score` head, run chosen and
rejected as one batch of 2B rows, score the last real token, and minimize the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected), mean over pairs (rlhflab `reward_model.loss: bradley_terry`,
TRL without margin or centering). Batch --batch-size pairs in one micro-batch, lr 1e-5 constant,
AdamW as common.optim_config. TRL variants: the matching precision without gradient
checkpointing, and `defaults` (its own bf16 autocast and gradient checkpointing).
"""

from __future__ import annotations

import json

from common import Ctx, make_pairs, offline_run, rlhflab_items, run_both, stats, write_jsonl
from flops import ModelShape, causal_pairs

NAME = "rm"
LR = 1e-5


def prepare(ctx: Ctx) -> dict:
    a = ctx.args
    data = write_jsonl(ctx.scratch / "pairs_rm.jsonl", make_pairs(a.rows, a.seed))
    items = rlhflab_items(ctx, data, "pairwise", a.max_length)
    seqs = [s.input_ids for it in items for s in (it.chosen, it.rejected)]  # chosen, rejected, chosen, ...
    expected = ctx.scratch / "rm_ids.json"
    expected.write_text(json.dumps(seqs))
    lengths = [len(s) for s in seqs]
    return {
        "data": str(data), "expected_ids": str(expected), "rows": len(items),
        "tokens": {"sequence": stats(lengths)},
        "flops_inputs": {"T": sum(lengths) / len(lengths), "TT": causal_pairs(lengths)},
        "settings": {"batch_size": a.batch_size, "micro_batch_size": a.batch_size, "lr": LR, "lr_schedule": "constant",
                     "max_length": a.max_length, "seed": a.seed, "loss": "Bradley-Terry, mean over pairs"},
    }


def run(ctx: Ctx, model: str, prep: dict) -> list[dict]:
    cfg, spec = offline_run(ctx, model, prep, "reward_model", LR)
    cfg["reward_model"] = {"loss": "bradley_terry"}
    trl = {ctx.plain: ctx.trl_precision(), "defaults": {}}
    return run_both(ctx, NAME, model, {ctx.plain: cfg}, "trl_rm_worker.py", spec, trl)


def step_flops(shape: ModelShape, prep: dict, row: dict) -> float:
    """2 x batch sequences through the decoder, forward + backward; no LM head (the d x 1 score
    head is negligible)."""
    f = prep["flops_inputs"]
    return 2 * prep["settings"]["batch_size"] * shape.train(f["T"], 0, TT=f["TT"])
