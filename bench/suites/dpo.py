"""Suite dpo: DPO steps, rlhflab `algorithm: dpo` next to TRL's DPOTrainer.

Data: the benchmark's synthetic pairs, given to TRL in the conversational form (one user, one
assistant message), so both sides render the same ids (prompt + completion checked per sequence);
rlhflab scores each completion through <|im_end|>, TRL also the "\\n" after it (one token more).
Sigmoid DPO, beta 0.1, batch --batch-size pairs in one micro-batch, lr 1e-6 constant, AdamW as
common.optim_config, seed --seed: both sides draw the same batches, so their losses agree step by
step up to that token.

rlhflab variants: `precompute` (reference log-probs computed once before training, its default)
and `online` (a reference forward every step); the reference cache points into the scratch
folder, so every run pays its pass. TRL variants: the matching precision, `defaults` (its own bf16
autocast and gradient checkpointing) and the matching precision with precompute_ref_log_probs.
A precompute pass is amortized over the rows the run used:
amortized step = median step + precompute_s * (rows used / rows precomputed) / steps.
"""

from __future__ import annotations

import json

from common import Ctx, make_pairs, offline_run, rlhflab_items, run_both, stats, write_jsonl
from flops import ModelShape, causal_pairs

NAME = "dpo"
LR = 1e-6
BETA = 0.1


def prepare(ctx: Ctx) -> dict:
    a = ctx.args
    data = write_jsonl(ctx.scratch / "pairs_dpo.jsonl", make_pairs(a.rows, a.seed))
    items = rlhflab_items(ctx, data, "pairwise", a.max_length)
    seqs = [s for it in items for s in (it.chosen, it.rejected)]
    expected = ctx.scratch / "dpo_ids.json"
    expected.write_text(json.dumps([s.input_ids for s in seqs]))
    lengths, scored = [len(s.input_ids) for s in seqs], [sum(s.loss_mask) for s in seqs]
    prompts = [s.loss_mask.index(True) for s in seqs[::2]]
    return {
        "data": str(data), "expected_ids": str(expected), "rows": len(items),
        "tokens": {"prompt": stats(prompts), "sequence": stats(lengths), "completion (rlhflab)": stats(scored)},
        "flops_inputs": {"T": sum(lengths) / len(lengths), "C": sum(scored) / len(scored), "TT": causal_pairs(lengths)},
        "settings": {"batch_size": a.batch_size, "micro_batch_size": a.batch_size, "lr": LR, "lr_schedule": "constant",
                     "beta": BETA, "loss": "sigmoid DPO", "max_length": a.max_length, "seed": a.seed},
    }


def run(ctx: Ctx, model: str, prep: dict) -> list[dict]:
    base, spec = offline_run(ctx, model, prep, "dpo", LR, beta=BETA)
    ours = {v: {**base, "dpo": {"loss": "dpo", "beta": BETA, "reference": v}} for v in ("precompute", "online")}
    plain = {**ctx.trl_precision(), "precompute_ref_log_probs": False}
    trl = {ctx.plain: plain, "defaults": {"precompute_ref_log_probs": False},
           f"{ctx.plain}_precompute": {**plain, "precompute_ref_log_probs": True}}
    return run_both(ctx, NAME, model, ours, "trl_dpo_worker.py", spec, trl,
                    finish=lambda row: amortize(row, ctx.args.steps, ctx.args.batch_size, prep["rows"]))


def amortize(row: dict, steps: int, batch: int, n_rows: int) -> dict:
    """Adds precompute_s (and its source) and amortized_step_s to a row with a precompute pass."""
    child, pre, source = row["detail"], None, None
    if row["framework"] == "trl":
        pre, source = child.get("precompute_s"), "_precompute_ref_logps + hash_module"
    else:
        summary = child.get("summary", {})
        pre, source = summary.get("reference_precompute_s"), "reference_precompute_s"
        if pre is None and summary.get("reference_mode") == "precompute":
            # the trainer does not time the pass on its own yet: its before-training phase is the
            # precompute pass plus anything else done before step 1, so this over- rather than under-states it
            pre, source = summary.get("before_training_s"), "before_training_s"
    if pre is None or "step_s_median" not in row:
        return row
    rows_pre = child.get("precompute_rows") or child.get("summary", {}).get("reference_precompute_rows") or n_rows
    used = min(steps * batch, rows_pre)
    row.update({"precompute_s": pre, "precompute_source": source,
                "amortized_step_s": row["step_s_median"] + pre * (used / rows_pre) / steps})
    row["effective_step_s"] = row["amortized_step_s"]
    return row


def step_flops(shape: ModelShape, prep: dict, row: dict) -> float:
    """batch x 2 sequences: policy forward + backward and a reference forward (LM head on the
    completion tokens), whether the reference runs every step or once before training (then
    amortized into the step time)."""
    f = prep["flops_inputs"]
    per_seq = shape.train(f["T"], f["C"], TT=f["TT"]) + shape.forward(f["T"], f["C"], TT=f["TT"])
    return 2 * prep["settings"]["batch_size"] * per_seq
