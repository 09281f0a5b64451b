"""A conditional reward model (COOL RLHF, InternLM2, arXiv 2403.17297): one reward model trained on
pairs from three preferences, each pair carrying its preference's system prompt, then the same
model scored with and without the condition on held-out requests.

- helpful:  comply > refuse on every request (harmful ones too);
- harmless: refuse > comply on harmful requests (the opposite order on the same kind of pair);
- format:   a bulleted answer > the same answer as a paragraph.

    .venv/bin/python examples/safety/cool.py --work runs/safety/cool   # SmolLM2-135M + LoRA (cool_rm.yaml)
    .venv/bin/python examples/safety/cool.py --eval-only runs/safety/cool_rm/final

The same reward model can be trained with `rlhflab train examples/safety/cool_rm.yaml` on the
files written by examples/safety/data.py. tests/integration/test_cool.py shows the flip on a tiny
random model in seconds.

Reports, per condition, the held-out pairwise accuracy with the condition's system prompt
(`reward_model` scorer with `system_prompt`) and without one, and the flip rate: the fraction of
held-out harmful requests whose (refusal, compliance) order is compliance first under "helpful"
and refusal first under "harmless".
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rlhflab.rewards.python_fn import import_file

HERE = Path(__file__).resolve().parent
D = import_file(HERE / "data.py", "safety_example_data")


def pair_scores(rm_dir: str | Path, rows: list[dict], system_prompt: str | None, device: str = "cpu"):
    """(chosen scores, rejected scores), each (n,), of a reward_model scorer under `system_prompt`."""
    from rlhflab.config_rl import ScorerConfig
    from rlhflab.rewards import build_scorer
    from rlhflab.rewards.base import Sample

    scorer = build_scorer((ScorerConfig(type="reward_model", path=str(rm_dir), system_prompt=system_prompt),), device)
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    values = scorer.score([Sample(p, r["chosen"]) for p, r in zip(prompts, rows)] +
                          [Sample(p, r["rejected"]) for p, r in zip(prompts, rows)]).values
    scorer.close()
    return values[: len(rows)], values[len(rows):]


def evaluate(rm_dir: str | Path, evals: dict[str, list[dict]], conditions: dict[str, str],
             device: str = "cpu") -> dict:
    """{condition: {"with": acc, "without": acc, "pairs": n}, "flip_rate": f} on held-out pairs."""
    out: dict = {}
    for c, rows in evals.items():
        cw, rw = pair_scores(rm_dir, rows, conditions[c], device)
        cn, rn = pair_scores(rm_dir, rows, None, device)
        out[c] = {"with": float((cw > rw).float().mean()), "without": float((cn > rn).float().mean()), "pairs": len(rows)}
    if "harmless" in evals and "helpful" in conditions:  # harmless rows: chosen = refusal, rejected = compliance
        rows = evals["harmless"]
        ref_h, comp_h = pair_scores(rm_dir, rows, conditions["harmless"], device)
        ref_u, comp_u = pair_scores(rm_dir, rows, conditions["helpful"], device)
        out["flip_rate"] = float(((ref_h > comp_h) & (comp_u > ref_u)).float().mean())
    return out


def print_table(res: dict) -> None:
    print(f"{'condition':<10} {'pairs':>5} {'with condition':>15} {'without':>8}")
    for c, r in res.items():
        if isinstance(r, dict):
            print(f"{c:<10} {r['pairs']:>5} {r['with']:>15.1%} {r['without']:>8.1%}")
    if "flip_rate" in res:
        print(f"flip rate (harmful requests: compliance first under helpful, refusal first under harmless): "
              f"{res['flip_rate']:.1%}")


def train(args: argparse.Namespace, work: Path, conditions: dict[str, str]) -> Path:
    """Write the mixed conditioned data and train the reward model; returns its final folder."""
    from rich.console import Console

    from rlhflab.config import load_config
    from rlhflab.data.conditions import mix_conditions
    from rlhflab.train.run import run

    train_sets, _ = D.cool_sets(n_train=args.pairs, seed=args.seed)
    train_file = D.write_jsonl(work / "cool_train.jsonl", mix_conditions(train_sets, conditions, seed=args.seed))
    over = [f"data.train={train_file}", f"output_dir={work / 'rm'}", f"seed={args.seed}"]
    if args.steps:
        over.append(f"max_steps={args.steps}")
    return run(load_config(HERE / "cool_rm.yaml", over), Console(stderr=True)).final_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: cool_rm.yaml's)")
    ap.add_argument("--pairs", type=int, default=600, help="training pairs, split evenly over the conditions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="keep the data and the run here (default: a temporary folder)")
    ap.add_argument("--eval-only", default=None, metavar="RM_DIR", help="evaluate a trained reward model folder")
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    conditions = D.CONDITIONS
    _, eval_sets = D.cool_sets(n_train=args.pairs, seed=args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        rm_dir = args.eval_only or train(args, work, conditions)
        res = evaluate(rm_dir, eval_sets, conditions)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print_table(res)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
