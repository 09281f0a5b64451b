"""One TRL GRPOTrainer run for bench/run.py (suite grpo), inside .venv-trl; imports nothing from
rlhflab (the reward function comes from bench/addition_reward.py, standard library only).

    .venv-trl/bin/python bench/trl_grpo_worker.py SPEC.json

SPEC.json: trl_common's keys (batch_size = completions per micro-batch, grad_accum = completions
per step / micro-batch) plus prompts_per_step, num_generations, max_new_tokens, temperature, lora,
lora_r, lora_alpha, reward_module. Prompts are given in the conversational form (one user
message), so TRL applies the tokenizer's chat template, as rlhflab does with the same rows.

Configuration: GRPOConfig with the variant's precision overrides, use_vllm False, beta 0 (no
reference model), num_iterations 1, loss_type "grpo", scale_rewards "group", so
generation_batch_size = steps_per_generation x micro-batch = one generation of all the step's
completions per optimizer step (and no old-log-prob pass).

Measured: each optimizer step (on_step_begin -> on_step_end; generation happens in the first
micro-step's training_step, so it is inside), and per generation round the time of
`_generate_single_turn` (left-padding the prompt ids, `unwrapped_model.generate`, cutting at the
first EOS: comparable to rlhflab's time/generate_s), `_generate` (plus templating, decoding and
length metrics), `_calculate_rewards` and `_generate_and_score_completions` (the whole rollout);
the completions' lengths through the first EOS; the peak RSS.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys

from trl_common import (BASE_SETTINGS, build_trainer, common_args, load_spec, read_rows, settings_of, timed_subclass,
                        train_and_report)

TIMED = ("_generate_single_turn", "_generate", "_calculate_rewards", "_generate_and_score_completions")


def load_reward(path: str):
    spec = importlib.util.spec_from_file_location("bench_addition_reward", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.trl_addition_reward


def lora_config(spec: dict):
    if not spec["lora"]:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        sys.exit("--lora needs peft in .venv-trl: .venv-trl/bin/python -m pip install peft==0.21.2 "
                 "(the version in .venv; torch stays pinned)")
    return LoraConfig(r=int(spec["lora_r"]), lora_alpha=int(spec["lora_alpha"]), lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def main() -> None:
    spec = load_spec(sys.argv)
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    peft_config = lora_config(spec)
    lengths: list[list[int]] = []
    truncated: list[float] = []
    rewards: list[float] = []

    def seen(name, trainer, out):
        if name == "_generate_single_turn":
            lengths.append([len(c) for c in out[0]])
            truncated.append(sum(not c or c[-1] not in trainer.eos_token_ids for c in out[0]) / max(len(out[0]), 1))
        elif name == "_calculate_rewards":
            rewards.append(float(out.float().nanmean()))

    TimedGRPOTrainer, times = timed_subclass(GRPOTrainer, TIMED, seen)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                                 for r in read_rows(spec["data"])])
    per_step = int(spec["prompts_per_step"]) * int(spec["num_generations"])
    args = GRPOConfig(
        num_generations=int(spec["num_generations"]), max_completion_length=int(spec["max_new_tokens"]),
        temperature=float(spec["temperature"]), top_p=1.0, top_k=0, repetition_penalty=1.0, use_vllm=False,
        beta=0.0, num_iterations=1, epsilon=0.2, loss_type="grpo", scale_rewards="group", log_completions=False,
        **common_args(spec),
    )
    assert args.generation_batch_size == per_step, (args.generation_batch_size, per_step)
    settings = settings_of(args, BASE_SETTINGS + (
        "use_vllm", "beta", "num_iterations", "loss_type", "scale_rewards", "epsilon", "generation_batch_size",
        "steps_per_generation", "num_generations", "max_completion_length", "temperature", "top_p", "top_k", "min_p",
        "repetition_penalty", "cache_implementation", "disable_dropout"))
    trainer, timer, init_s = build_trainer(TimedGRPOTrainer, spec, args, dataset,
                                           reward_funcs=load_reward(spec["reward_module"]), peft_config=peft_config)
    settings["eos_token_ids"] = list(trainer.eos_token_ids)
    settings["generation_config"] = {k: v for k, v in trainer.generation_config.to_diff_dict().items()
                                     if not k.startswith("_")}

    def extra() -> dict:
        n = len(timer.step_s)
        return {"generate_s": times["_generate_single_turn"][:n], "generate_phase_s": times["_generate"][:n],
                "score_s": times["_calculate_rewards"][:n], "rollout_s": times["_generate_and_score_completions"][:n],
                "completions": [len(x) for x in lengths][:n], "mean_length": [statistics.fmean(x) for x in lengths][:n],
                "max_length": [max(x) for x in lengths][:n], "truncated_fraction": truncated[:n],
                "reward_mean": rewards[:n]}

    train_and_report(spec, trainer, timer, init_s, settings, extra)


if __name__ == "__main__":
    main()
