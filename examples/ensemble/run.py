"""Reward-model ensemble demo: does the members' spread tell held-out responses from
out-of-distribution ones? (README.md in this folder has the measured numbers.)

    python examples/ensemble/run.py [--members 4] [--threads 2] [--out runs/ensemble]

1. `rlhflab ensemble train` trains N LoRA reward models on examples/data/prefs.jsonl (seeds 0..N-1,
   the same rows; 20% of the pairs held out once for all of them);
2. the held-out pairs are split in two: `calib` (the first half) and `test` (the second half);
   `rlhflab ensemble calibrate` sets each member's offset and the OOD threshold (q0.95) on calib;
3. `rlhflab ensemble score` scores the test responses (in distribution) against two
   out-of-distribution sets, each answering the test prompts: random token strings (uniform
   token ids of the model's vocabulary, 8 to 24 tokens, decoded) and German reviews
   (examples/ensemble/german.jsonl), and prints the AUROC of the spread and the flag rates.

Everything goes through `rlhflab.cli.main`, exactly as the commands would run. Deterministic
given the thread count (results can move in the last digits with another one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cli(*argv: str) -> None:
    from rlhflab.cli import main

    print("$ rlhflab " + " ".join(argv), flush=True)
    rc = main(list(argv))
    if rc != 0:
        sys.exit(rc)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def random_token_rows(prompts: list[str], n: int, seed: int) -> list[dict]:
    """`n` rows answering the given prompts (cycled) with uniformly random tokens of the embedded
    model's vocabulary (special tokens excluded), 8 to 24 tokens, decoded to text."""
    from rlhflab.models import load_tokenizer, resolve_model_path

    tok = load_tokenizer(str(resolve_model_path("smollm2-135m")))
    special = set(tok.all_special_ids)
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        ids = [i for i in (rng.randrange(len(tok)) for _ in range(rng.randint(8, 24))) if i not in special]
        text = tok.decode(ids).strip()
        if text:
            rows.append({"prompt": prompts[len(rows) % len(prompts)], "completion": text})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--out", default="runs/ensemble")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    out = Path(args.out)
    cli("ensemble", "train", str(HERE / "ensemble.yaml"), "--members", str(args.members), f"output_dir={out}",
        "overwrite=true")
    held = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines() if line.strip()]
    half = len(held) // 2
    calib, test = write_jsonl(out / "calib.jsonl", held[:half]), write_jsonl(out / "test.jsonl", held[half:])
    prompts = [r["prompt"] for r in held[half:]]
    german = [json.loads(line) for line in (HERE / "german.jsonl").read_text(encoding="utf-8").splitlines() if line]
    rand = write_jsonl(out / "random_tokens.jsonl", random_token_rows(prompts, len(german), seed=0))
    ens = str(out / "ensemble.json")
    cli("ensemble", "calibrate", "--ensemble", ens, "--data", str(calib))
    cli("ensemble", "score", "--ensemble", ens, "--data", str(test), "--ood", str(rand), str(HERE / "german.jsonl"),
        "--out", str(out / "scores.jsonl"), "--overwrite")
    print(f"total: wall {time.perf_counter() - t0:.0f} s, CPU {time.process_time() - cpu0:.0f} s (this process, all "
          f"threads); 1-minute load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
