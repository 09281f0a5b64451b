"""Generation throughput for bench/run.py (suite generate), in rlhflab's environment: rlhflab's
HFGenerator next to plain Hugging Face `model.generate` on the same prompts and settings.

    .venv/bin/python bench/gen_worker.py SPEC.json

SPEC.json: model, data (jsonl with "prompt"), prompts, num_generations, max_new_tokens,
temperature, reps, threads, device, out. The first `prompts` prompts (chat template, generation
prompt) each sampled `num_generations` times, at most `max_new_tokens` new tokens, top-p 1, top-k
off, ended by the tokenizer's end-of-turn ids. Plain HF: the prompts repeated, left-padded, one
`generate(do_sample=True)` call under inference_mode. rlhflab: `HFGenerator.generate` (each prompt
prefilled once, its KV cache copied to its samples, decoded together). The two alternate, `reps`
timed calls each after one untimed call. Generated tokens count through the first end-of-turn
token (what the caller keeps). float32 on a CPU; bfloat16 weights on a GPU.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(int(spec["threads"]))
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rlhflab.data.template import end_of_turn_ids, tokenize_prompt
    from rlhflab.rollout import HFGenerator, SamplingParams

    device = spec["device"]
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, attn_implementation="sdpa").to(device)
    model.eval()
    rows = [json.loads(line) for line in open(spec["data"], encoding="utf-8") if line.strip()][: spec["prompts"]]
    prompts = [tokenize_prompt(tok, [{"role": "user", "content": r["prompt"]}]) for r in rows]
    G, new = spec["num_generations"], spec["max_new_tokens"]
    stop = sorted(end_of_turn_ids(tok))
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop[0]
    repeated = [p for p in prompts for _ in range(G)]
    width = max(len(p) for p in repeated)
    ids = torch.full((len(repeated), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, p in enumerate(repeated):  # left padding
        ids[b, width - len(p):] = torch.tensor(p)
        attn[b, width - len(p):] = 1
    ids, attn = ids.to(device), attn.to(device)
    gen_cfg = GenerationConfig(max_new_tokens=new, do_sample=True, temperature=spec["temperature"], top_p=1.0, top_k=0,
                               eos_token_id=stop, pad_token_id=pad, bos_token_id=tok.bos_token_id)
    stop_t = torch.tensor(stop, device=device)

    def hf_once(seed: int) -> tuple[float, list[int]]:
        torch.manual_seed(seed)
        _sync()
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=attn, generation_config=gen_cfg)
        _sync()
        dt = time.perf_counter() - t
        lengths = []
        for row in out[:, width:]:  # through the first end-of-turn token
            hit = torch.isin(row, stop_t).nonzero()
            lengths.append(int(hit[0]) + 1 if len(hit) else row.shape[0])
        return dt, lengths

    generator = HFGenerator(model, tok, set(stop), batch_size=len(repeated), pad_token_id=pad)
    params = SamplingParams(G, new, spec["temperature"], 1.0, 0, ())

    def ours_once(seed: int) -> tuple[float, list[int]]:
        _sync()
        t = time.perf_counter()
        comps = generator.generate(prompts, params, seed)
        _sync()
        return time.perf_counter() - t, [len(c.token_ids) for c in comps]

    res: dict = {"hf_s": [], "hf_tokens": [], "rlhflab_s": [], "rlhflab_tokens": []}
    for rep in range(spec["reps"] + 1):
        order = (("hf", hf_once), ("rlhflab", ours_once)) if rep % 2 == 0 else (("rlhflab", ours_once), ("hf", hf_once))
        for name, fn in order:
            dt, lengths = fn(1000 + rep)
            if rep > 0:  # the first call of each is a warm-up
                res[f"{name}_s"].append(dt)
                res[f"{name}_tokens"].append(sum(lengths))
    res.update({"framework": "generate", "torch": torch.__version__, "threads": torch.get_num_threads(),
                "dtype": str(dtype), "sequences": len(repeated), "prompt_tokens_mean": statistics.fmean(map(len, prompts)),
                "prompt_width": width,
                "generation_config": {k: v for k, v in gen_cfg.to_diff_dict().items() if not k.startswith("_")},
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    if device != "cpu":
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(spec["out"]).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
