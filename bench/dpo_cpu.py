"""DPO steps per second and peak memory on CPU: rlhflab next to TRL's DPOTrainer.

Same models, data and hyperparameters on both sides; every configuration runs in its own process,
one after the other (never two at once), so its peak RSS is its own. Usage (repository root):

    bash bench/setup_trl.sh                       # once: TRL in its own venv, .venv-trl
    .venv/bin/python bench/dpo_cpu.py --models tiny-llama smollm2 --steps 20 --warmup 2
    .venv/bin/python bench/dpo_cpu.py --models tiny-llama --steps 6 --only trl

Models: tiny-llama (a random 4-layer Llama, hidden 256, with SmolLM2's tokenizer and 49,152-token
vocabulary, tied embeddings; built here with a fixed seed) and smollm2 (the embedded
SmolLM2-135M-Instruct). Data: synthetic preference pairs, ~70 tokens per prompt + completion
after SmolLM2's chat template. rlhflab runs `algorithm: dpo` with the reference precomputed and
online; TRL runs DPOConfig as a CPU user would set it (fp32), with its defaults for bf16 and
gradient checkpointing, and fp32 with precompute_ref_log_probs.

Step time is the median over the steps after the warm-up; steps/s is its inverse. For precompute
variants the amortized step time adds the precompute pass, prorated to the rows the run used,
spread over its steps. Writes bench/results/dpo_cpu.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"
TRL_WORKER = ROOT / "bench" / "trl_dpo_worker.py"
TRL_VARIANTS = ("fp32", "defaults", "fp32_precompute")
RLHFLAB_VARIANTS = ("precompute", "online")
MODELS = ("tiny-llama", "smollm2")

WORDS = (
    "the model answers questions about rivers mountains cities music history science cooking gardens "
    "weather travel books animals oceans planets computers languages painting football winter summer "
    "bridges trains coffee bread apples forests deserts islands stars moons clouds storms lakes roads "
    "simple careful quick quiet bright warm cold green small large old new early late good clear "
    "explain describe compare list suggest choose build write read learn teach plan visit measure "
    "because while after before with without around between under over through during about"
).split()


# --------------------------------------------------------------------------- inputs


def build_tiny_llama(dest: Path, tokenizer_dir: Path, seed: int) -> Path:
    """A random LlamaForCausalLM (hidden 256, 4 layers, 4 heads) with SmolLM2's tokenizer and vocab."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=49152, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        attention_dropout=0.0, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    return dest


def make_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """Synthetic preference pairs: a question of random words, two answers of random words."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = []
    for i in range(n):
        prompt = f"Question {i}: {words(rng.randint(9, 11))}?"
        chosen = words(rng.randint(20, 24)).capitalize() + "."
        rejected = words(rng.randint(20, 24)).capitalize() + "."
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def token_counts(rows: list[dict[str, str]], tokenizer) -> dict[str, dict[str, float]]:
    """Tokens per pair as each framework cuts them: TRL (prompt rendered with the generation prompt,
    completion = the rest of the rendered conversation) and rlhflab (its own tokenize_pair)."""
    from rlhflab.data.template import tokenize_pair

    def ids(msgs, gen):
        out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    stats: dict[str, list[int]] = {k: [] for k in (
        "trl_prompt", "trl_chosen", "trl_rejected", "rlhflab_prompt", "rlhflab_chosen", "rlhflab_rejected",
        "seq_chosen", "seq_rejected")}
    for r in rows:
        p = [{"role": "user", "content": r["prompt"]}]
        c = [{"role": "assistant", "content": r["chosen"]}]
        j = [{"role": "assistant", "content": r["rejected"]}]
        prompt_ids, pc, pr = ids(p, True), ids(p + c, False), ids(p + j, False)
        stats["trl_prompt"].append(len(prompt_ids))
        stats["trl_chosen"].append(len(pc) - len(prompt_ids))
        stats["trl_rejected"].append(len(pr) - len(prompt_ids))
        pair = tokenize_pair(tokenizer, p, c, j)
        first = pair.chosen.loss_mask.index(True)
        stats["rlhflab_prompt"].append(first)
        stats["rlhflab_chosen"].append(sum(pair.chosen.loss_mask))
        stats["rlhflab_rejected"].append(sum(pair.rejected.loss_mask))
        stats["seq_chosen"].append(len(pair.chosen.input_ids))
        stats["seq_rejected"].append(len(pair.rejected.input_ids))
    return {k: {"mean": statistics.fmean(v), "min": min(v), "max": max(v)} for k, v in stats.items()}


# --------------------------------------------------------------------------- one run per process


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float]:
    """Run one configuration; (exit code, wall seconds, peak RSS MiB of that process, from wait4)."""
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t, usage.ru_maxrss / 1024


def child_env(threads: int, scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1",
        "HF_DATASETS_CACHE": str(scratch / "hf_datasets"), "RLHFLAB_CACHE": str(scratch / "rlhflab_cache"),
        "RLHFLAB_REFERENCE_CACHE": str(scratch / "rlhflab_cache" / "reference"),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def rlhflab_child(spec_path: str) -> None:
    """Inside the child process: one rlhflab DPO run; writes the measurements to spec['out']."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(int(spec["threads"]))
    from rich.console import Console

    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    out_dir = Path(spec["run_dir"])
    cfg = config_from_dict({
        "algorithm": "dpo", "model": spec["model"], "output_dir": str(out_dir), "seed": spec["seed"],
        "max_steps": spec["steps"], "batch_size": spec["batch_size"], "micro_batch_size": spec["batch_size"],
        "data": {"train": spec["data"], "max_length": spec["max_length"]},
        # TRL / transformers AdamW defaults: no weight decay, betas (0.9, 0.999), eps 1e-8, clip at 1.0.
        "optim": {"lr": spec["lr"], "schedule": "constant", "warmup_steps": 0, "max_grad_norm": 1.0,
                  "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8},
        "checkpoint_every": 0, "tensorboard": False,
        "dpo": {"loss": "dpo", "beta": spec["beta"], "reference": spec["variant"]},
    })
    t = time.perf_counter()
    run(cfg, Console(stderr=True, quiet=True))
    train_s = time.perf_counter() - t
    history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((out_dir / "summary.json").read_text())
    precompute_s, source = summary.get("reference_precompute_s"), "reference_precompute_s"
    if precompute_s is None and summary.get("reference_mode") == "precompute" and "before_training_s" in summary:
        # An older trainer without the key: its before-training phase is the precompute pass (and
        # anything else done before step 1), so this over- rather than under-states the cost.
        precompute_s, source = summary["before_training_s"], "before_training_s"
    result = {
        "framework": "rlhflab", "variant": spec["variant"], "torch": torch.__version__,
        "threads": torch.get_num_threads(), "steps_done": len(history),
        "step_s": [h["time/step_s"] for h in history], "losses": [h["loss"] for h in history],
        "timings": {"run_s": train_s, "summary_seconds": summary.get("seconds")},
        "precompute_s": precompute_s, "precompute_rows": summary.get("reference_precompute_rows"),
        "precompute_source": source if precompute_s is not None else None, "summary": summary,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(spec["out"]).write_text(json.dumps(result, indent=2))


def one_config(framework: str, variant: str, model_name: str, model_dir: Path, data: Path, n_rows: int,
               args: argparse.Namespace, scratch: Path) -> dict:
    work = scratch / f"{model_name}-{framework}-{variant}"
    work.mkdir(parents=True)
    spec = {
        "model": str(model_dir), "data": str(data), "steps": args.steps, "batch_size": args.batch_size,
        "lr": args.lr, "beta": args.beta, "max_length": args.max_length, "seed": args.seed,
        "threads": args.threads, "variant": variant, "out": str(work / "result.json"), "run_dir": str(work / "run"),
    }
    (work / "spec.json").write_text(json.dumps(spec, indent=2))
    if framework == "trl":
        cmd = [str(TRL_PYTHON), str(TRL_WORKER), str(work / "spec.json")]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-rlhflab", str(work / "spec.json")]
    print(f"  {model_name} / {framework} / {variant} ...", end="", flush=True)
    code, wall, rss = run_child(cmd, child_env(args.threads, work), work / "log.txt")
    row = {"model": model_name, "framework": framework, "variant": variant, "wall_s": wall,
           "peak_rss_mib": rss, "exit_code": code}
    if code != 0 or not (work / "result.json").exists():
        tail = (work / "log.txt").read_text(errors="replace").strip().splitlines()[-12:]
        row["error"] = "\n".join(tail)
        print(f" FAILED (exit {code}; log {work / 'log.txt'})")
        return row
    child = json.loads((work / "result.json").read_text())
    row.update(summarize(child, args, n_rows))
    row["peak_rss_self_mib"] = child.pop("peak_rss_mib")
    row["detail"] = child
    print(f" {row['step_s_median']:.3f} s/step, {rss:.0f} MiB, {wall:.0f} s")
    return row


def summarize(child: dict, args: argparse.Namespace, n_rows: int) -> dict:
    times = child["step_s"][args.warmup:] or child["step_s"]
    med = statistics.median(times)
    out = {"steps_done": child["steps_done"], "step_s_median": med, "steps_per_s": 1.0 / med,
           "step_s_min": min(times), "step_s_max": max(times), "first_loss": (child["losses"] or [None])[0]}
    pre = child.get("precompute_s")
    if pre is not None:
        rows_pre = child.get("precompute_rows") or n_rows
        rows_used = min(args.steps * args.batch_size, rows_pre)
        out["precompute_s"] = pre
        out["precompute_source"] = child.get("precompute_source", "_precompute_ref_logps + hash_module")
        out["amortized_step_s"] = med + pre * (rows_used / rows_pre) / args.steps
    return out


# --------------------------------------------------------------------------- report


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        ok = [r for r in rows if r["model"] == model and "steps_per_s" in r]
        trl = {r["variant"]: r for r in ok if r["framework"] == "trl"}
        if not trl:
            continue
        best = max(trl.values(), key=lambda r: r["steps_per_s"])
        for r in (r for r in ok if r["framework"] == "rlhflab"):
            entry = {"model": model, "rlhflab": r["variant"], "best_trl": best["variant"],
                     "vs_best_trl": r["steps_per_s"] / best["steps_per_s"]}
            entry.update({f"vs_trl_{v}": r["steps_per_s"] / t["steps_per_s"] for v, t in trl.items()})
            if "fp32" in trl:  # same seed, same sampler permutation: the same batches, so nearly the same losses
                pairs = zip(r["detail"]["losses"], trl["fp32"]["detail"]["losses"])
                entry["max_loss_diff_vs_trl_fp32"] = max((abs(a - b) for a, b in pairs), default=None)
            match = trl.get("fp32_precompute" if r["variant"] == "precompute" else "fp32")
            if match is not None:
                entry["rss_vs_matching_trl"] = r["peak_rss_mib"] / match["peak_rss_mib"]
                entry["matching_trl"] = match["variant"]
                if "amortized_step_s" in r and "amortized_step_s" in match:
                    entry["amortized_vs_matching_trl"] = match["amortized_step_s"] / r["amortized_step_s"]
            out.append(entry)
    return out


def print_tables(rows: list[dict], rat: list[dict]) -> str:
    lines = ["| model | framework / variant | step (s, median) | steps/s | amortized step (s) | precompute (s) "
             "| peak RSS (MiB) | wall (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"{r['framework']} / {r['variant']}"
        if "steps_per_s" not in r:
            lines.append(f"| {r['model']} | {name} | failed (exit {r['exit_code']}) | | | | | {r['wall_s']:.0f} |")
            continue
        am = f"{r['amortized_step_s']:.3f}" if "amortized_step_s" in r else "-"
        pre = f"{r['precompute_s']:.1f}" if "precompute_s" in r else "-"
        if r.get("precompute_source") == "before_training_s":
            pre += " (before_training_s)"
        lines.append(f"| {r['model']} | {name} | {r['step_s_median']:.3f} | {r['steps_per_s']:.3g} | {am} | {pre} "
                     f"| {r['peak_rss_mib']:.0f} | {r['wall_s']:.0f} |")
    if rat:
        variants = [v for v in TRL_VARIANTS if any(f"vs_trl_{v}" in e for e in rat)]
        lines += ["", "| model | rlhflab variant | " + " | ".join(f"vs TRL {v}" for v in variants)
                  + " | vs best TRL | peak RSS vs matching TRL | max loss diff vs TRL fp32 |",
                  "|---|---|" + "---|" * (len(variants) + 3)]
        for e in rat:
            cells = " | ".join(f"{e[f'vs_trl_{v}']:.2f}x" if f"vs_trl_{v}" in e else "-" for v in variants)
            rss = f"{e['rss_vs_matching_trl']:.2f} ({e['matching_trl']})" if "rss_vs_matching_trl" in e else "-"
            diff = e.get("max_loss_diff_vs_trl_fp32")
            diff = f"{diff:.1e}" if diff is not None else "-"
            lines.append(f"| {e['model']} | {e['rlhflab']} | {cells} | {e['vs_best_trl']:.2f}x ({e['best_trl']}) | {rss} "
                         f"| {diff} |")
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    ap.add_argument("--only", choices=("trl", "rlhflab"), help="run one framework's configurations only")
    ap.add_argument("--out", default="bench/results/dpo_cpu.json")
    ap.add_argument("--rows", type=int, default=256, help="preference pairs in the synthetic data set")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (models, data, logs, run dirs)")
    ap.add_argument("--child-rlhflab", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_rlhflab:
        rlhflab_child(args.child_rlhflab)
        return
    if args.steps <= args.warmup:
        ap.error("--steps must be larger than --warmup")
    frameworks = [args.only] if args.only else ["rlhflab", "trl"]
    if "trl" in frameworks and not TRL_PYTHON.exists():
        sys.exit(f"no TRL environment at {TRL_PYTHON}; run `bash bench/setup_trl.sh` first")

    import torch
    from transformers import AutoTokenizer

    from rlhflab.models import resolve_model_path

    smollm2 = resolve_model_path("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2))
    scratch = Path(tempfile.mkdtemp(prefix="rlhflab-dpo-bench-"))
    try:
        rows_data = make_pairs(args.rows, args.seed)
        data = scratch / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows_data))
        tokens = token_counts(rows_data, tokenizer)
        print(f"data: {args.rows} pairs; tokens per pair (mean [min, max]):")
        for k, v in tokens.items():
            print(f"  {k:17s} {v['mean']:.1f} [{v['min']}, {v['max']}]")
        if max(tokens["seq_chosen"]["max"], tokens["seq_rejected"]["max"]) > args.max_length:
            sys.exit(f"--max-length {args.max_length} would truncate the longest pair; raise it")
        models = {"smollm2": smollm2}
        if "tiny-llama" in args.models:
            models["tiny-llama"] = build_tiny_llama(scratch / "tiny-llama", smollm2, args.seed)
        variants = {"rlhflab": RLHFLAB_VARIANTS, "trl": TRL_VARIANTS}
        results = []
        for model in args.models:
            for fw in frameworks:
                for variant in variants[fw]:
                    results.append(one_config(fw, variant, model, models[model], data, args.rows, args, scratch))
        trl_tokens = next((r["detail"]["tokens"] for r in results if r["framework"] == "trl" and "detail" in r), None)
        if trl_tokens:
            print("TRL's own tokenization (means): " + ", ".join(f"{k} {v:.1f}" for k, v in trl_tokens.items()))
        rat = ratios(results)
        machine = {"cpu_threads": args.threads, "cores": os.cpu_count(), "torch": torch.__version__,
                   "python": platform.python_version(), "processor": platform.processor() or platform.machine()}
        settings = {k: getattr(args, k) for k in ("steps", "warmup", "rows", "batch_size", "max_length", "lr", "beta",
                                                   "seed", "threads")}
        settings.update({"loss": "sigmoid DPO", "lr_schedule": "constant", "max_grad_norm": 1.0, "weight_decay": 0.0,
                         "gradient_accumulation": 1})
        print(f"machine: {machine}")
        table = print_tables(results, rat)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine, "settings": settings, "tokens": tokens, "trl_tokens": trl_tokens,
                                   "results": results, "ratios": rat, "table": table}, indent=2))
        print(f"wrote {out}")
    finally:
        if args.keep:
            print(f"scratch kept at {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
