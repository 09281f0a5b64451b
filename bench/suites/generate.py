"""Suite generate: generated tokens per second, rlhflab's HFGenerator next to plain Hugging Face
`model.generate`, in one process (bench/gen_worker.py), alternating calls on the same batch.

The batch is one GRPO step's: the first --prompts-per-step addition prompts of the grpo suite,
each sampled --num-generations times, at most --max-new-tokens new tokens, temperature 1, top-p 1,
top-k off, ended by the tokenizer's EOS. Tokens/s = tokens generated through the first EOS / the
call's wall time; median over --generate-reps calls after one warm-up call each. Both sides share
the process, so no memory ratio is given. vLLM: not available (no vLLM engine in rlhflab yet).
"""

from __future__ import annotations

import json
import statistics
import sys

from common import BENCH, Ctx, launch, wants, workdir
from flops import ModelShape
from suites import grpo

NAME = "generate"


def prepare(ctx: Ctx) -> dict:
    prep = grpo.prepare(ctx)
    a = ctx.args
    prep["settings"] = {"prompts": a.prompts_per_step, "num_generations": a.num_generations,
                        "sequences": a.prompts_per_step * a.num_generations, "max_new_tokens": a.max_new_tokens,
                        "temperature": 1.0, "top_p": 1.0, "top_k": "off", "reps": a.generate_reps}
    return prep


def run(ctx: Ctx, model: str, prep: dict) -> list[dict]:
    if not (wants(ctx, "rlhflab") or wants(ctx, "hf-generate")):
        return []
    s = prep["settings"]
    work = workdir(ctx, NAME, model, "generate")
    spec = {"model": str(ctx.models[model]), "data": prep["data"], "prompts": s["prompts"],
            "num_generations": s["num_generations"], "max_new_tokens": s["max_new_tokens"],
            "temperature": s["temperature"], "reps": s["reps"], "threads": ctx.args.threads, "device": ctx.device,
            "out": str(work / "result.json")}
    (work / "spec.json").write_text(json.dumps(spec, indent=2))
    row = launch(ctx, NAME, model, "generate", "rlhflab+hf", [sys.executable, str(BENCH / "gen_worker.py"),
                                                                 str(work / "spec.json")], work)
    if "error" in row:
        return [row]
    rows = [side_row(row, side, s["sequences"]) for side in ("rlhflab", "hf")]
    print(f" rlhflab {rows[0]['tokens_per_s']:.0f} tokens/s, plain HF generate {rows[1]['tokens_per_s']:.0f} tokens/s, "
          f"{row['peak_rss_mib']:.0f} MiB, {row['wall_s']:.0f} s")
    return rows


def side_row(row: dict, side: str, sequences: int) -> dict:
    """One engine's figures from the shared process's result."""
    d = row["detail"]
    secs, toks = d[f"{side}_s"], d[f"{side}_tokens"]
    med = statistics.median(secs)
    out = {k: v for k, v in row.items() if k != "detail"}
    out.update({"framework": "rlhflab" if side == "rlhflab" else "hf-generate",
                "variant": "HFGenerator" if side == "rlhflab" else "model.generate",
                "call_s": secs, "tokens": toks, "call_s_median": med, "call_s_min": min(secs),
                "tokens_per_s": statistics.median(t / s for t, s in zip(toks, secs)),
                "mean_completion_length": statistics.fmean(toks) / sequences, "effective_step_s": med,
                "shared_process": True})
    if side == "rlhflab":
        out["detail"] = d  # once, on the rlhflab row
    return out


def step_flops(shape: ModelShape, prep: dict, row: dict) -> float | None:
    """FLOPs of one call: every sequence sampled with a KV cache from its own prompt, at the row's
    mean completion length."""
    n = row.get("mean_completion_length")
    if not n:
        return None
    return prep["settings"]["sequences"] * shape.generate(prep["flops_inputs"]["P"], n)
