"""SFT step time and peak memory on the embedded SmolLM2-135M-Instruct.

Each mode runs in its own process so peak RSS is its own. Usage (from the repository root):

    .venv/bin/python bench/sft_cpu.py                 # full and LoRA, 12 steps each
    .venv/bin/python bench/sft_cpu.py --steps 20 --modes lora

Writes bench/results/sft_cpu.json and prints a markdown table. Step time is the median of the
steps after the first two (warm-up); tokens/s counts non-padding input tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

MODES = {
    "full": {"lora": None, "optim": {"lr": 1.0e-5}},
    "lora": {"lora": {"r": 16, "alpha": 32}, "optim": {"lr": 1.0e-3}},
}


def one(mode: str, steps: int, batch: int, micro: int, max_length: int, packing: bool) -> dict:
    from importlib import resources

    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    data = str(resources.files("rlhflab") / "assets" / "quickstart_sft.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_dict({
            "algorithm": "sft", "model": "smollm2-135m", "output_dir": tmp, "max_steps": steps,
            "batch_size": batch, "micro_batch_size": micro, "checkpoint_every": 0, "tensorboard": False,
            "data": {"train": data, "max_length": max_length}, "sft": {"packing": packing}, **MODES[mode],
        })
        from rich.console import Console

        result = run(cfg, Console(stderr=True, quiet=True))
    times = [r["time/step_s"] for r in result.history[2:]]
    tps = [r["throughput/tokens_per_s"] for r in result.history[2:]]
    return {
        "mode": mode, "steps": steps, "batch_size": batch, "micro_batch_size": micro, "max_length": max_length,
        "packing": packing, "step_time_s_median": statistics.median(times), "tokens_per_s_median": statistics.median(tps),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": result.history[-1]["loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.steps, args.batch_size, args.micro_batch_size, args.max_length, args.packing)))
        return
    rows = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--micro-batch-size", str(args.micro_batch_size), "--max-length", str(args.max_length)]
        cmd += ["--packing"] if args.packing else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    machine = {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
               "processor": platform.processor() or platform.machine()}
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/sft_cpu.json").write_text(json.dumps({"machine": machine, "results": rows}, indent=2))
    print(f"machine: {machine}")
    print("| mode | batch x micro | max_length | step time (s, median) | tokens/s | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['batch_size']} x {r['micro_batch_size']} | {r['max_length']} | "
              f"{r['step_time_s_median']:.3f} | {r['tokens_per_s_median']:.0f} | {r['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
