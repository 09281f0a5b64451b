"""One TRL DPOTrainer run for bench/run.py (suite dpo), inside .venv-trl.

    .venv-trl/bin/python bench/trl_dpo_worker.py SPEC.json

SPEC.json: trl_common's keys plus beta, max_length. The data rows {"prompt", "chosen", "rejected"}
(strings) are given to TRL in the conversational form (a user message, an assistant message
each), so TRL applies the tokenizer's chat template, as rlhflab does with the same rows; prompt +
completion ids are checked against rlhflab's (spec['expected_ids']). The variant's overrides
choose bf16, gradient checkpointing and precompute_ref_log_probs.

Measured: each optimizer step (on_step_begin -> on_step_end: forward, backward, clipping,
optimizer; the data loader's fetch and the logging happen outside it), the interval between
step ends, the reference precompute pass (`_precompute_ref_logps` plus the hash of the reference
weights TRL keys its cache with), and the peak RSS.
"""

from __future__ import annotations

import sys
import time

from trl_common import (BASE_SETTINGS, build_trainer, common_args, compare_ids, load_spec, read_rows, settings_of,
                        timed_subclass, train_and_report)


def conversational(row: dict) -> dict:
    """A pairwise row of strings -> TRL's conversational form (what rlhflab's reader makes of it)."""
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def main() -> None:
    spec = load_spec(sys.argv)
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.trainer import dpo_trainer as dpo_module

    TimedDPOTrainer, times = timed_subclass(DPOTrainer, ("_precompute_ref_logps",))
    hash_s: list[float] = []
    real_hash = dpo_module.hash_module

    def timed_hash(module):  # TRL hashes the reference weights to key its precompute cache
        t = time.perf_counter()
        out = real_hash(module)
        hash_s.append(time.perf_counter() - t)
        return out

    dpo_module.hash_module = timed_hash

    dataset = Dataset.from_list([conversational(r) for r in read_rows(spec["data"])])
    args = DPOConfig(beta=float(spec["beta"]), loss_type=["sigmoid"], max_length=int(spec["max_length"]),
                     **common_args(spec))
    trainer, timer, init_s = build_trainer(TimedDPOTrainer, spec, args, dataset)
    ds = trainer.train_dataset
    prompt, chosen, rejected = ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]
    got = [list(p) + list(c) for p, pair in zip(prompt, zip(chosen, rejected)) for c in pair]
    tokens = {f"{k}_mean": sum(len(x) for x in ds[k]) / len(ds) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}

    def extra() -> dict:
        pre = args.precompute_ref_log_probs
        return {"ids_vs_rlhflab": compare_ids(spec, got), "tokens": tokens, "train_rows": len(ds),
                "precompute_s": sum(times["_precompute_ref_logps"]) + sum(hash_s) if pre else None,
                "precompute_rows": len(ds) if pre else None,
                "timings_precompute": {"precompute_ref_logps_s": times["_precompute_ref_logps"], "hash_s": hash_s}}

    settings = settings_of(args, BASE_SETTINGS + (
        "precompute_ref_log_probs", "precompute_ref_batch_size", "padding_free", "pad_to_multiple_of", "max_length",
        "truncation_mode", "loss_type", "beta", "disable_dropout"))
    train_and_report(spec, trainer, timer, init_s, settings, extra)


if __name__ == "__main__":
    main()
