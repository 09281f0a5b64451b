"""One TRL RewardTrainer run for bench/run.py (suite rm), inside .venv-trl.

    .venv-trl/bin/python bench/trl_rm_worker.py SPEC.json

SPEC.json: trl_common's keys plus max_length. Data rows {"prompt", "chosen", "rejected"} (strings)
are given to TRL in the conversational form with an explicit prompt, so TRL renders
prompt + chosen and prompt + rejected with the chat template: the same ids as rlhflab (checked
against spec['expected_ids']). RewardTrainer loads AutoModelForSequenceClassification with
num_labels=1 (a fresh `score` head), batches the chosen and rejected sequences together (2B rows,
right-padded) and scores the last non-pad token, which with pad = <|im_end|> is the final "\\n",
the last real token rlhflab's scalar head pools too. Loss: -log sigmoid(r_chosen - r_rejected),
mean over pairs (no margin, no centering), as rlhflab's bradley_terry.

Measured: on_step_begin -> on_step_end of every optimizer step, the losses, the peak RSS.
"""

from __future__ import annotations

import sys

from trl_common import (BASE_SETTINGS, build_trainer, common_args, compare_ids, load_spec, read_rows, settings_of,
                        train_and_report)


def main() -> None:
    spec = load_spec(sys.argv)
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    rows = read_rows(spec["data"])
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    args = RewardConfig(max_length=int(spec["max_length"]), **common_args(spec))
    trainer, timer, init_s = build_trainer(RewardTrainer, spec, args, dataset)
    ds = trainer.train_dataset
    chosen, rejected = ds["chosen_ids"], ds["rejected_ids"]
    got = [x for pair in zip(chosen, rejected) for x in pair]  # chosen, rejected, chosen, ... as expected_ids
    extra = {"ids_vs_rlhflab": compare_ids(spec, got), "train_rows": len(ds),
             "tokens": {"seq_mean": sum(map(len, got)) / len(got)},
             "pad_token_id": trainer.processing_class.pad_token_id}
    settings = settings_of(args, BASE_SETTINGS + ("max_length", "center_rewards_coefficient", "disable_dropout",
                                                  "pad_to_multiple_of"))
    train_and_report(spec, trainer, timer, init_s, settings, extra)


if __name__ == "__main__":
    main()
