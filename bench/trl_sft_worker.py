"""One TRL SFTTrainer run for bench/run.py (suite sft), inside .venv-trl.

    .venv-trl/bin/python bench/trl_sft_worker.py SPEC.json

SPEC.json: trl_common's keys plus max_length. Data rows {"prompt": str, "completion": str} are
given to TRL in the conversational prompt-completion form (one user, one assistant message), so
TRL applies the chat template and, with completion_only_loss left at its default (None: on for
prompt-completion data), trains on the completion only, as rlhflab's assistant mask does.
TRL's completion also covers the "\\n" after <|im_end|>, one loss token more per row.

Measured: on_step_begin -> on_step_end of every optimizer step (forward, backward, clipping,
optimizer; the data loader's fetch and the logging fall outside), the losses, the peak RSS.
"""

from __future__ import annotations

import sys

from trl_common import (BASE_SETTINGS, build_trainer, common_args, compare_ids, load_spec, read_rows, settings_of,
                        train_and_report)


def main() -> None:
    spec = load_spec(sys.argv)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = read_rows(spec["data"])
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    args = SFTConfig(max_length=int(spec["max_length"]), **common_args(spec))
    trainer, timer, init_s = build_trainer(SFTTrainer, spec, args, dataset)
    ds = trainer.train_dataset
    ids, labels = ds["input_ids"], ds["labels"]
    extra = {"ids_vs_rlhflab": compare_ids(spec, ids),
             "tokens": {"seq_mean": sum(map(len, ids)) / len(ids),
                        "loss_tokens_mean": sum(sum(t != -100 for t in lab) for lab in labels) / len(labels)}}
    settings = settings_of(args, BASE_SETTINGS + ("max_length", "packing", "padding_free", "completion_only_loss",
                                                  "assistant_only_loss", "loss_type", "pad_to_multiple_of"))
    settings["completion_only_loss_resolved"] = trainer.completion_only_loss
    train_and_report(spec, trainer, timer, init_s, settings, extra)


if __name__ == "__main__":
    main()
