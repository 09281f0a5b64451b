"""Suite grpo: GRPO steps (generation, scoring, update), rlhflab `algorithm: grpo` next to TRL's
GRPOTrainer.

Task: --rows two-digit additions (rlhflab.quickstart.addition_problems, seed --seed) as
{"prompt": "What is 59 + 63?", "answer": 122}, given to TRL as one user message, so both sides
render the same prompt ids (checked). Reward: bench/addition_reward.py, one function for both.
Per optimizer step: --prompts-per-step prompts x --num-generations samples of at most
--max-new-tokens tokens at temperature 1 (top-p 1, top-k off), ended by the tokenizer's EOS; all
decoded as one batch; one policy update per generation round, no reference model (rlhflab
kl_coef 0 / log_kl false, TRL beta 0 / num_iterations 1, so no old log-probs either);
micro-batches of --micro-batch sequences; the GRPO loss with clip 0.2, group-std-scaled
advantages and per-sequence token means (TRL loss_type "grpo"); lr 1e-6 constant; AdamW as
common.optim_config. Full fine-tuning, or --lora (r, alpha 2r, all linear layers) on both sides.
Rollouts: the Hugging Face engine on both sides; with --rollout-backend vllm (GPU) one more rlhflab run,
variant `<precision>_vllm`, generates with the colocated vLLM engine (generation.backend vllm,
docs/vllm.md), so its completions/s compares with the HF-engine row on the same GPU.
"""

from __future__ import annotations

import statistics

from common import BENCH, Ctx, median_after, optim_config, run_both, trl_ids, write_jsonl
from flops import ModelShape

NAME = "grpo"
LR = 1e-6
PROMPT = "What is {a} + {b}?"


def prepare(ctx: Ctx) -> dict:
    from rlhflab.data.template import tokenize_prompt
    from rlhflab.quickstart import addition_problems

    a = ctx.args
    rows = [{"prompt": PROMPT.format(a=x, b=y), "answer": x + y} for x, y in addition_problems(a.rows, a.seed)]
    data = write_jsonl(ctx.scratch / "prompts.jsonl", rows)
    lengths, same = [], True
    for r in rows:
        msgs = [{"role": "user", "content": r["prompt"]}]
        ours = tokenize_prompt(ctx.tokenizer, msgs)
        same &= trl_ids(ctx.tokenizer, msgs, True) == ours
        lengths.append(len(ours))
    n = a.prompts_per_step * a.num_generations
    return {
        "data": str(data), "rows": len(rows),
        "tokens": {"prompt": {"mean": statistics.fmean(lengths), "min": min(lengths), "max": max(lengths)},
                   "trl_prompt_ids_identical": same},
        "flops_inputs": {"P": statistics.fmean(lengths)},
        "settings": {"prompt": PROMPT, "prompts_per_step": a.prompts_per_step, "num_generations": a.num_generations,
                     "completions_per_step": n, "max_new_tokens": a.max_new_tokens, "micro_batch": a.micro_batch,
                     "temperature": 1.0, "top_p": 1.0, "top_k": "off", "lr": LR, "lr_schedule": "constant",
                     "lora_r": a.lora_r, "kl": "none (beta 0)", "updates_per_generation": 1,
                     "loss": "GRPO, clip 0.2, per-sequence token mean", "reward": "bench/addition_reward.py"},
    }


def _rlhflab_config(ctx: Ctx, model: str, prep: dict, backend: str = "hf") -> dict:
    a, n = ctx.args, prep["settings"]["completions_per_step"]
    cfg = {
        "algorithm": "grpo", "model": str(ctx.models[model]), "seed": a.seed, "max_steps": a.steps,
        "batch_size": a.prompts_per_step, "micro_batch_size": a.micro_batch, "eval_every": 0,
        "data": {"train": prep["data"], "max_length": 256}, "optim": optim_config(LR),
        "grpo": {
            "rewards": [{"type": "python", "function": f"{BENCH / 'addition_reward.py'}:addition_reward",
                         "name": "addition"}],
            "generation": {"num_generations": a.num_generations, "max_new_tokens": a.max_new_tokens,
                           "temperature": 1.0, "top_p": 1.0, "top_k": 0, "batch_size": n, "backend": backend},
            "kl_coef": 0.0, "log_kl": False, "aggregation": "sequence-mean-token-mean", "scale_rewards": True,
            "clip_low": 0.2, "epochs": 1, "minibatches": 1, "dynamic_sampling": False,
        },
    }
    if a.lora_r:
        cfg["lora"] = {"r": a.lora_r, "alpha": 2 * a.lora_r, "dropout": 0.0, "target_modules": "all-linear"}
    return cfg


def run(ctx: Ctx, model: str, prep: dict) -> list[dict]:
    a, n = ctx.args, prep["settings"]["completions_per_step"]
    variant = f"{ctx.plain}_lora" if a.lora_r else ctx.plain
    spec = {"model": str(ctx.models[model]), "data": prep["data"], "steps": a.steps, "batch_size": a.micro_batch,
            "grad_accum": n // a.micro_batch, "lr": LR, "seed": a.seed, "prompts_per_step": a.prompts_per_step,
            "num_generations": a.num_generations, "max_new_tokens": a.max_new_tokens, "temperature": 1.0,
            "lora": bool(a.lora_r), "lora_r": a.lora_r, "lora_alpha": 2 * a.lora_r,
            "reward_module": str(BENCH / "addition_reward.py")}
    configs = {variant: _rlhflab_config(ctx, model, prep)}
    if getattr(a, "rollout_backend", "hf") == "vllm":
        configs[f"{variant}_vllm"] = _rlhflab_config(ctx, model, prep, backend="vllm")
    return run_both(ctx, NAME, model, configs, "trl_grpo_worker.py", spec,
                    {variant: ctx.trl_precision()}, finish=lambda row: rollout_figures(row, a.warmup, n))


def _column(child: dict, key: str) -> list:
    """A per-step column: the TRL worker's own list, or rlhflab's metrics.jsonl key."""
    if child.get("framework") == "trl":
        return child.get(key, [])
    names = {"generate_s": "time/generate_s", "score_s": "time/score_s", "rollout_s": "time/rollout_s",
             "update_s": "time/update_s", "mean_length": "response_length/mean", "reward_mean": "reward/mean"}
    return [h.get(names[key]) for h in child.get("history", [])]


def rollout_figures(row: dict, warmup: int, n: int) -> dict:
    """Completions/s, the generation phase, the mean completion length and generated tokens/s."""
    child = row["detail"]
    if "step_s_median" not in row:
        return row
    gen, _ = median_after(_column(child, "generate_s"), warmup)
    lengths = [x for x in _column(child, "mean_length")[warmup:] if x is not None]
    rewards = [x for x in _column(child, "reward_mean") if x is not None]
    row.update({"completions_per_step": n, "completions_per_s": n / row["step_s_median"], "generate_s_median": gen,
                "generate_share": gen / row["step_s_median"] if gen else None,
                "mean_completion_length": statistics.fmean(lengths) if lengths else None,
                "reward_mean": statistics.fmean(rewards) if rewards else None})
    for key in ("score_s", "rollout_s", "update_s"):
        row[f"{key}_median"], _ = median_after(_column(child, key), warmup)
    if row["mean_completion_length"] and gen:
        row["generated_tokens_per_s"] = n * row["mean_completion_length"] / gen
    return row


def step_flops(shape: ModelShape, prep: dict, row: dict) -> float | None:
    """Per completion (each with its own prompt, as the plain algorithm computes it): sampling its
    tokens with a KV cache, then forward + backward of prompt + completion with the LM head on the
    completion; at the row's own mean completion length."""
    n = row.get("mean_completion_length")
    if not n:
        return None
    P, s = prep["flops_inputs"]["P"], prep["settings"]
    lora = s["lora_r"] if row["variant"].endswith("_lora") else 0
    return s["completions_per_step"] * (shape.generate(P, n) + shape.train(P + n, n, lora_r=lora))
