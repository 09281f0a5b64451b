"""The benchmark suite: rlhflab next to TRL on the same models, data and hyperparameters, side by
side in one run, as ratios. One entry point (repository root):

    bash bench/setup_trl.sh                                   # once: TRL in its own venv, .venv-trl
    .venv/bin/python bench/run.py                             # every suite on tiny-llama and smollm2
    .venv/bin/python bench/run.py --models tiny-llama --steps 3 --warmup 1      # smoke test
    .venv/bin/python bench/run.py --suites dpo mfu --models smollm2 --steps 8
    .venv/bin/python bench/run.py --markdown-only bench/results/suite.json    # tables again from a JSON

Suites: sft (SFTTrainer), rm (RewardTrainer), dpo (DPOTrainer), grpo (GRPOTrainer), each rlhflab
through `rlhflab train` configs; generate (rlhflab's HFGenerator next to plain HF `generate`);
mfu (the machine's matmul peak, then model FLOPs utilization of every step above). Every
configuration runs in its own process, one after the other, so its peak RSS (wait4) is its own.
Writes one results JSON (machine, command, settings, every row) and one markdown file (the
summary of ratios and every suite's table): --out PREFIX gives PREFIX.json and PREFIX.md.
On a GPU (torch.cuda.is_available(), or --device cuda) the same suites run in bf16 autocast and
MFU is against the measured bf16 matmul peak. `--suites grpo --rollout-backend vllm` (GPU) adds an
rlhflab GRPO run whose rollouts come from the colocated vLLM engine next to the HF-engine run.
Methodology: bench/README.md; results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BENCH, MODELS, TRL_PYTHON, Ctx, build_tiny_llama, child_env, machine_info
from report import fill_doc, generation_summary, markdown, training_summary

SUITE_NAMES = ("sft", "rm", "dpo", "grpo", "generate", "mfu")
TRL_SUITES = ("sft", "rm", "dpo", "grpo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Methodology: bench/README.md. Results: docs/benchmarks.md.")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--suites", nargs="+", default=list(SUITE_NAMES), choices=SUITE_NAMES)
    ap.add_argument("--only", nargs="+", choices=("rlhflab", "trl", "hf-generate"), help="run these frameworks only")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per training run")
    ap.add_argument("--grpo-steps", type=int, default=None,
                    help="optimizer steps per GRPO run (default: --steps, at most 6: a GRPO step is ~10x an SFT step)")
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of every median")
    ap.add_argument("--out", default="bench/results/suite", help="writes OUT.json and OUT.md")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of every process")
    ap.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("sft, rm, dpo")
    g.add_argument("--rows", type=int, default=256, help="synthetic rows (pairs, sequences, prompts)")
    g.add_argument("--batch-size", type=int, default=8, help="sequences (sft) or pairs (rm, dpo) per step, one micro-batch")
    g.add_argument("--max-length", type=int, default=128, help="must not truncate a row")
    g = ap.add_argument_group("grpo, generate")
    g.add_argument("--prompts-per-step", type=int, default=8)
    g.add_argument("--num-generations", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--micro-batch", type=int, default=32, help="sequences per forward/backward (both sides)")
    g.add_argument("--lora-r", type=int, default=0, help="GRPO with LoRA of this rank (alpha 2r) on both sides; 0 = full")
    g.add_argument("--generate-reps", type=int, default=5, help="timed calls of each engine (after one warm-up)")
    g.add_argument("--rollout-backend", choices=("hf", "vllm"), default="hf",
                   help="grpo: vllm adds an rlhflab run with generation.backend vllm next to the HF-engine run, on the "
                        "same GPU (needs CUDA and pip install 'rlhflab[vllm]')")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (models, data, logs, run dirs)")
    ap.add_argument("--markdown-only", metavar="RESULTS.json", help="render RESULTS.md from a results JSON, run nothing")
    ap.add_argument("--doc", metavar="FILE.md", help="also put the tables into FILE.md's results block (docs/benchmarks.md)")
    ap.add_argument("--doc-block", default="results", help="which block of --doc to fill (default: results)")
    args = ap.parse_args(argv)
    if args.markdown_only:
        return args
    if args.grpo_steps is None:
        args.grpo_steps = min(args.steps, 6)
    if min(args.steps, args.grpo_steps) <= args.warmup:
        ap.error("--steps (and --grpo-steps) must be larger than --warmup")
    n = args.prompts_per_step * args.num_generations
    if n % args.micro_batch:
        ap.error(f"--micro-batch must divide the {n} completions of a GRPO step (TRL's gradient accumulation)")
    return args


def render(results_path: Path, doc: str | None = None, block: str = "results") -> str:
    """Write the markdown next to a results JSON (same stem), and into `doc`'s block when given;
    return the markdown."""
    results = json.loads(results_path.read_text())
    text = markdown(results)
    results_path.with_suffix(".md").write_text(text)
    if doc:
        try:
            Path(doc).write_text(fill_doc(Path(doc).read_text(), results, block))
        except (OSError, ValueError) as e:
            sys.exit(f"--doc {doc}: {e}")
        print(f"filled the '{block}' block of {doc}")
    return text


def pick_device(name: str) -> str:
    """GPU branch: cuda when asked or available; everything device-specific keys off this."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is available")
    return name


def measure_peak(ctx: Ctx) -> dict | None:
    """The matmul peak in its own process (bench/flops.py), at the benchmark's thread count."""
    out = ctx.scratch / "peak.json"
    cmd = [sys.executable, str(BENCH / "flops.py"), "--peak", str(out), "--device", ctx.device,
           "--threads", str(ctx.args.threads)]
    print("  mfu / matmul peak ...", end="", flush=True)
    proc = subprocess.run(cmd, env=child_env(ctx.args.threads, ctx.scratch), capture_output=True, text=True)
    if proc.returncode != 0:
        print(f" FAILED:\n{proc.stderr[-2000:]}")
        return None
    peak = json.loads(out.read_text())
    print(f" {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['dtype']}, n={peak['best_size']})")
    return peak


def attach_flops(rows: list[dict], prep: dict, suite, shapes: dict) -> None:
    """Model FLOPs per step of every measured row (bench/flops.py, through the suite)."""
    for row in rows:
        if "effective_step_s" in row:
            row["model_flops_per_step"] = suite.step_flops(shapes[row["model"]], prep, row)


def apply_peak(rows: list[dict], peak: dict | None) -> None:
    """MFU = model FLOPs per step / effective step time / peak FLOP/s."""
    for row in rows:
        if peak and row.get("model_flops_per_step") and row.get("effective_step_s"):
            row["mfu"] = row["model_flops_per_step"] / row["effective_step_s"] / peak["flops_per_s"]


def best_peak(first: dict | None, second: dict | None) -> dict | None:
    """The higher of two peak measurements (one before the suites, one after): a busy moment
    during one of them lowers it, which would inflate every MFU; both are kept in the JSON."""
    runs = [p for p in (first, second) if p]
    if not runs:
        return None
    best = dict(max(runs, key=lambda p: p["flops_per_s"]))
    best["measurements_flops_per_s"] = [p["flops_per_s"] for p in runs]
    return best


def run_suites(ctx: Ctx, results: dict, save) -> None:
    """Every chosen suite on every model, in the order given; `results` gains the peak (measured
    before and after the suites, the higher kept), the model shapes, the rows (with MFU) and each
    suite's data, and is saved after every suite."""
    from flops import model_shape
    from suites import SUITES

    args = ctx.args
    shapes = {m: model_shape(ctx.models[m]) for m in args.models}
    results.update({"peak": measure_peak(ctx) if "mfu" in args.suites else None, "rows": [], "suites": {},
                    "shapes": {m: s.as_dict() for m, s in shapes.items()}})
    chosen = {name: SUITES[name] for name in args.suites if name in SUITES}
    for name, suite in chosen.items():
        prep = suite.prepare(ctx)
        results["suites"][name] = {k: v for k, v in prep.items() if not k.startswith("_")}
        for model in args.models:
            if name == "grpo":
                ctx.args = argparse.Namespace(**{**vars(args), "steps": args.grpo_steps})
            rows = suite.run(ctx, model, prep)
            ctx.args = args
            attach_flops(rows, prep, suite, shapes)
            apply_peak(rows, results["peak"])
            results["rows"] += rows
            save(results)
    if results["peak"]:
        results["peak"] = best_peak(results["peak"], measure_peak(ctx))
        apply_peak(results["rows"], results["peak"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.markdown_only:
        print(render(Path(args.markdown_only), args.doc, args.doc_block))
        return
    if any(s in TRL_SUITES for s in args.suites) and (not args.only or "trl" in args.only) and not TRL_PYTHON.exists():
        sys.exit(f"no TRL environment at {TRL_PYTHON}; run `bash bench/setup_trl.sh` first (or --only rlhflab)")
    from transformers import AutoTokenizer

    from rlhflab.models import resolve_model_path

    scratch = Path(tempfile.mkdtemp(prefix="rlhflab-bench-"))
    try:
        smollm2 = resolve_model_path("smollm2-135m")
        ctx = Ctx(args, scratch, pick_device(args.device), tokenizer=AutoTokenizer.from_pretrained(str(smollm2)))
        if args.rollout_backend == "vllm" and ctx.device != "cuda":
            sys.exit("--rollout-backend vllm needs a CUDA GPU (vLLM runs colocated with the trainer)")
        ctx.models = {"smollm2": Path(smollm2)}
        if "tiny-llama" in args.models:
            ctx.models["tiny-llama"] = build_tiny_llama(scratch / "tiny-llama", smollm2, args.seed)
        machine = machine_info(ctx)
        print(f"machine: {machine['cpu']}, {machine['cores']} cores, {args.threads} threads, device {ctx.device}, "
              f"vllm: {machine['vllm']}")
        results = {"machine": machine, "settings": {k: v for k, v in vars(args).items() if k != "markdown_only"}}
        out = Path(args.out).with_suffix(".json")
        out.parent.mkdir(parents=True, exist_ok=True)

        def save(res: dict, complete: bool = False) -> None:  # after every suite and model: a crash keeps the rest
            res["complete"] = complete
            machine["load_average_end"] = os.getloadavg()
            res["summary"] = {"training": training_summary(res), "generation": generation_summary(res)}
            out.write_text(json.dumps(res, indent=2, default=str))

        run_suites(ctx, results, save)
        save(results, complete=True)
        print(render(out, args.doc, args.doc_block))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    finally:
        if args.keep:
            print(f"scratch kept at {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
