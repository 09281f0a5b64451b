"""Compounding error: behaviour cloning (SFT) against RLHF on the lane task, error against horizon.

The claim (Sun 2023, arXiv 2310.06147, takeaway 2): RLHF beats SFT because imitation / inverse RL
beats behaviour cloning by alleviating compounding error. A cloned policy trained only on expert
states drifts, once it slips, into states the expert never showed, so its expected number of
mistakes grows faster than linearly with the horizon (Ross & Bagnell 2010: O(eps T^2) against
O(eps T) for a learner trained on its own states). RLHF learns a reward model from comparisons,
then optimizes the policy on its own samples.

The task is examples/compounding_error/task.py (a slow walk that must stay in a lane). Per seed,
with rlhflab's own trainers and tiny random-init Llamas built in code (nothing downloaded):

1. BC: `algorithm: sft` on expert demonstrations (BC["demos"] walks).
2. BC-long (control): the same SFT with 3x the steps, to see what more cloning alone buys.
3. The reward model: `algorithm: reward_model` (Bradley-Terry) on comparisons ranked by the task's
   judgment: pairs of perturbed demonstrations, plus the BC policy's own samples.
4. RLHF: `algorithm: ppo` from the BC model, the reward model as a `type: reward_model` scorer,
   a KL penalty to the BC reference; the judgment is logged as `gold/mean`, never optimized.
5. Evaluation: SAMPLES walks per lane from each policy at temperature 1 (no top-k / top-p),
   judged step by step: error against H, per-step error rate, slip and persistence rates, the
   fitted exponent of error ~ H^k, and a probe that forces a slip and measures the way back.

    python examples/compounding_error/run.py --seeds 0,1 --out runs/compounding_error

The output folder holds results.json, curves.json (for `rlhflab report`) and the figure; `--work`
keeps the run folders (bc/, bc_long/, rm/, rlhf/ per seed). One CPU thread; the functions are
importable (tests/integration/test_compounding_error.py loads this file by path).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rlhflab.rewards.python_fn import import_file

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no load report for the reward model's new head
torch.set_num_threads(1)  # tiny models: one thread is as fast and leaves the other cores alone

TASK_FILE = Path(__file__).resolve().parent / "task.py"
T = import_file(TASK_FILE, "compounding_error_task")
"""The task, its judgment and statistics (examples/compounding_error/task.py)."""
MODEL = {"hidden": 64, "layers": 2, "heads": 4}
"""Every model (policy, reward model) is rlhflab.testing.tiny_causal_lm with these sizes (~0.1M
parameters, byte-level tokenizer: one token per letter)."""
BC = {"steps": 150, "batch_size": 32, "lr": 1e-2, "demos": 2000, "max_length": 66, "long_factor": 3}
"""SFT: 150 steps of 32 demonstrations (2.4 passes over 2000); max_length 66 keeps the 26 prompt
tokens and the first 40 letters of each demonstration. BC-long runs long_factor x the steps."""
RM = {"steps": 300, "batch_size": 32, "lr": 3e-3, "perturbed_pairs": 4000, "policy_samples": 128, "eval_fraction": 0.1}
"""Reward model: a fresh tiny Llama (on held-out pairs it was more accurate than one started from
the BC model in our trials), 300 steps of 32 pairs; policy_samples BC walks per lane join the
comparisons; eval_fraction of the pairs is held out (eval/accuracy)."""
PPO = {"steps": 240, "prompts": 8, "generations": 8, "epochs": 2, "minibatches": 2, "kl_coef": 0.2, "lr": 1e-3,
       "adam_eps": 1e-3}
"""RLHF: 240 optimizer steps = 60 rollouts of 8 prompts x 8 walks (H_MAX tokens each), 2 epochs x 2
minibatches per rollout, KL penalty 0.2 (k1, in the reward) to the BC model, constant lr 1e-3 with
Adam eps 1e-3 (eps 1e-8 turns the vanishing gradients of near-certain tokens into full steps)."""
HS = (4, 8, 16, 32)
"""Horizons of the table and of the exponent fit (log-spaced)."""
SAMPLES = 128
"""Evaluation walks per lane and policy (x 8 lanes), starts in proportion to T.STATIONARY."""
PROBE = 32
"""Probe continuations per lane and edge."""


# ----------------------------------------------------------------------------- training
def quiet() -> Any:
    from rich.console import Console

    return Console(quiet=True)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    from rlhflab.sampling import write_jsonl_atomic

    write_jsonl_atomic(path, rows)
    return path


def base_config(model: Path, data: dict[str, Any], out: Path, steps: int, batch: int, lr: float, seed: int,
                eps: float = 1e-8, schedule: str = "cosine") -> dict[str, Any]:
    return {"model": str(model), "data": data, "output_dir": str(out), "seed": seed, "max_steps": steps,
            "batch_size": batch, "micro_batch_size": batch, "checkpoint_every": 0, "tensorboard": False,
            "overwrite": True, "optim": {"lr": lr, "eps": eps, "schedule": schedule,
                                         "warmup_steps": max(1, steps // 10) if schedule == "cosine" else 0}}


def train(cfg: dict[str, Any]) -> tuple[Any, float]:
    """Run one `rlhflab train` config (as a dict); (RunResult, seconds)."""
    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    t0 = time.perf_counter()
    res = run(config_from_dict(cfg), quiet())
    return res, time.perf_counter() - t0


def fresh_model(out: Path, seed: int) -> Path:
    from rlhflab.testing import tiny_model_dir, tiny_tokenizer

    return tiny_model_dir(out, tiny_tokenizer(), seed=seed, **MODEL)


def train_bc(work: Path, seed: int, steps: int) -> tuple[Path, float]:
    """SFT on BC["demos"] expert walks from a fresh model; (final folder, seconds)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(BC["demos"]):
        c = rng.choice(T.CENTRES)
        start = T.random_start(c, rng)
        rows.append({"prompt": T.prompt_for(c, start), "completion": T.expert_walk(c, start, rng)})
    data = {"train": str(write_rows(work / "demos.jsonl", rows)), "max_length": BC["max_length"]}
    cfg = base_config(fresh_model(work / "base", seed), data, work / f"bc-{steps}", steps, BC["batch_size"],
                      BC["lr"], seed)
    res, secs = train({**cfg, "algorithm": "sft"})
    return Path(res.final_dir), secs


def train_rm(work: Path, seed: int, bc: Path, steps: int,
             pairs: int = RM["perturbed_pairs"]) -> tuple[Path, float, dict[str, float]]:
    """Comparisons (perturbed demonstrations + BC samples, ranked by the judgment) -> reward model."""
    rng = random.Random(seed + 1)
    rows = T.comparisons(pairs, sample_walks(bc, RM["policy_samples"], seed + 1000), rng)
    n_eval = int(len(rows) * RM["eval_fraction"])
    data = {"train": str(write_rows(work / "pairs.jsonl", rows[n_eval:])),
            "eval": str(write_rows(work / "pairs_eval.jsonl", rows[:n_eval])), "max_length": 64}
    base = fresh_model(work / "rm_base", seed + 1)
    cfg = base_config(base, data, work / "rm", steps, RM["batch_size"], RM["lr"], seed)
    res, secs = train({**cfg, "algorithm": "reward_model"})
    last = res.history[-1]
    return Path(res.final_dir), secs, {"pairs": len(rows), "eval_accuracy": last.get("eval/accuracy", float("nan")),
                                        "train_accuracy": last.get("accuracy", float("nan"))}


def train_rlhf(work: Path, seed: int, bc: Path, rm: Path, steps: int) -> tuple[Path, float, dict[str, Any]]:
    """PPO from the BC model with the reward model as the reward; (final, seconds, rollout curves)."""
    prompts = write_rows(work / "prompts.jsonl", [{"prompt": T.prompt_for(c, s)} for c in T.CENTRES
                                                  for s in T.lane_of(c)])
    p = PPO
    section = {"rewards": [{"type": "reward_model", "path": str(rm)}],
               "gold": [{"type": "python", "function": f"{TASK_FILE}:gold"}],
               "kl_coef": p["kl_coef"], "epochs": p["epochs"], "minibatches": p["minibatches"],
               "generation": {"num_generations": p["generations"], "max_new_tokens": T.H_MAX}}
    n = p["prompts"]
    cfg = base_config(bc, {"train": str(prompts), "max_length": 64}, work / "rlhf", steps, n, p["lr"], seed,
                      eps=p["adam_eps"], schedule="constant")
    cfg.update(algorithm="ppo", ppo=section, micro_batch_size=n * p["generations"] // p["minibatches"])
    res, secs = train(cfg)
    rows = [h for h in res.history if "reward/mean" in h]
    curves = {k: [float(h[src]) for h in rows] for k, src in
              (("reward", "reward/mean"), ("gold", "gold/mean"), ("kl", "kl/k1"))}
    return Path(res.final_dir), secs, curves


# ----------------------------------------------------------------------------- evaluation
def sample(model_dir: Path, prompts: list[tuple[str, str, str, int]], seed: int, steps: int = T.H_MAX) -> list[T.Walk]:
    """For each (centre, start, prefix, n): n walks of `steps` letters after the forced `prefix`
    (not part of the returned text), temperature 1 over the full distribution, after
    torch.manual_seed(seed); one batch per prompt (no padding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhflab.data.template import tokenize_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(seed)
    out = []
    for centre, start, prefix, n in prompts:
        ids = tokenize_prompt(tok, [{"role": "user", "content": T.prompt_for(centre, start)}])
        batch = torch.tensor([ids + tok(prefix, add_special_tokens=False)["input_ids"]] * n)
        with torch.no_grad():
            gen = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=steps, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        out += [(centre, start, t) for t in tok.batch_decode(gen[:, batch.shape[1]:], skip_special_tokens=True)]
    return out


def sample_walks(model_dir: Path, per_lane: int, seed: int) -> list[T.Walk]:
    """`per_lane` walks per lane (a multiple of sum(STATIONARY) = 8), their starts in proportion to
    the expert's stationary distribution."""
    k, rem = divmod(per_lane, sum(T.STATIONARY))
    if rem:
        raise ValueError(f"per_lane={per_lane} must be a multiple of {sum(T.STATIONARY)}")
    return sample(model_dir, [(c, s, "", k * w) for c in T.CENTRES for s, w in zip(T.lane_of(c), T.STATIONARY)], seed)


def evaluate(model_dir: Path, seed: int, per_lane: int = SAMPLES) -> dict[str, Any]:
    """Error against the horizon and its components for one policy."""
    walks = sample_walks(model_dir, per_lane, seed)
    errors = [T.step_errors(*w) for w in walks]
    curve, rate = T.error_curve(errors), T.per_step_rate(errors)
    quarter = T.H_MAX // 4
    growth = statistics.fmean(rate[-quarter:]) / max(statistics.fmean(rate[:quarter]), 1e-12)
    return {"curve": curve, "per_step": rate, "late_over_early": growth, **T.transitions(errors),
            "moves": T.move_fraction([t for _, s, t in walks]), "error_at": {h: curve[h - 1] for h in HS},
            "exponent": T.fit_exponent(HS, [curve[h - 1] for h in HS]),
            "examples": [w[2] for w in walks[::per_lane][:4]]}


def probe_recovery(model_dir: Path, seed: int, per_lane: int = PROBE, steps: int = 16) -> dict[str, float]:
    """Force a slip: start on an edge of the lane and put the first letter one step outside it
    (both edges); sample `steps` more letters and count how many stay off target before the first
    on-target one (capped at `steps`) and how often the very next one is back."""
    prompts = []
    for c in T.CENTRES:
        lane, ci = T.lane_of(c), T.ALPHABET.index(c)
        prompts += [(c, lane[-1], T.ALPHABET[ci + T.HALF_WIDTH + 1], per_lane),
                    (c, lane[0], T.ALPHABET[ci - T.HALF_WIDTH - 1], per_lane)]
    runs = []
    for (c, start, prefix, _), (_, _, text) in zip([p for p in prompts for _ in range(per_lane)],
                                                  sample(model_dir, prompts, seed, steps)):
        tail = T.step_errors(c, start, prefix + text, 1 + steps)[1:]
        runs.append(next((k for k, e in enumerate(tail) if not e), len(tail)))
    return {"steps_off_after_slip": sum(runs) / len(runs), "back_next_step": sum(r == 0 for r in runs) / len(runs),
            "never_back": sum(r == steps for r in runs) / len(runs)}


# ----------------------------------------------------------------------------- one seed
def run_seed(work: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train BC, BC-long, the reward model and RLHF for `seed`; evaluate the three policies."""
    work.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    bc, timing["bc"] = train_bc(work, seed, args.bc_steps)
    policies = {"BC": bc}
    if args.bc_long:
        policies["BC-long"], timing["bc_long"] = train_bc(work, seed, args.bc_steps * BC["long_factor"])
    rm, timing["rm"], rm_info = train_rm(work, seed, bc, args.rm_steps, args.rm_pairs)
    policies["RLHF"], timing["rlhf"], rollouts = train_rlhf(work, seed, bc, rm, args.ppo_steps)
    t0 = time.perf_counter()
    results = {name: {**evaluate(d, seed + 300, args.samples), "probe": probe_recovery(d, seed + 500, args.probe)}
               for name, d in policies.items()}
    timing["eval"] = time.perf_counter() - t0
    return {"seed": seed, "policies": results, "reward_model": rm_info, "rollouts": rollouts, "seconds": timing}


# ----------------------------------------------------------------------------- summary
def mean_sd(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def claim(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per seed: BC's fitted exponent above RLHF's, and BC's error at H_MAX above RLHF's."""
    per_seed = []
    for s in seeds:
        bc, rl = s["policies"]["BC"], s["policies"]["RLHF"]
        per_seed.append({"seed": s["seed"], "bc_exponent": bc["exponent"], "rlhf_exponent": rl["exponent"],
                         "steeper": bc["exponent"] > rl["exponent"],
                         "bc_more_errors": bc["error_at"][T.H_MAX] > rl["error_at"][T.H_MAX]})
    holds = all(p["steeper"] and p["bc_more_errors"] for p in per_seed)
    return {"per_seed": per_seed, "holds_on_every_seed": holds}


def summary_rows(seeds: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """policy -> metric -> (mean, sd over seeds)."""
    names = list(seeds[0]["policies"])
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name in names:
        runs = [s["policies"][name] for s in seeds]
        row = {f"H={h}": mean_sd([r["error_at"][h] for r in runs]) for h in HS}
        for key in ("exponent", "late_over_early", "slip", "stay_off", "excursion", "moves"):
            row[key] = mean_sd([r[key] for r in runs])
        for key in ("steps_off_after_slip", "back_next_step"):
            row[key] = mean_sd([r["probe"][key] for r in runs])
        out[name] = row
    return out


def table(summary: dict[str, dict[str, tuple[float, float]]]) -> str:
    cols = [f"H={h}" for h in HS] + ["exponent", "late_over_early", "slip", "stay_off", "moves", "steps_off_after_slip"]
    heads = [f"off-target steps, {c}" if c.startswith("H=") else c for c in cols]
    lines = ["| policy | " + " | ".join(heads) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in summary.items():
        cells = [f"{row[c][0]:.3f} ± {row[c][1]:.3f}" if c.startswith("H=") or c == "slip"
                 else f"{row[c][0]:.2f} ± {row[c][1]:.2f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves(seeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Charts in the `rlhflab report` curves.json format (means over seeds)."""
    names = list(seeds[0]["policies"])
    hs = list(range(1, T.H_MAX + 1))

    def mean_of(key: str, name: str) -> list[float]:
        return [statistics.fmean(s["policies"][name][key][i] for s in seeds) for i in range(T.H_MAX)]

    rollouts = [{"name": f"seed {s['seed']}", "x": list(range(1, len(s["rollouts"]["gold"]) + 1)),
                 "y": s["rollouts"]["gold"]} for s in seeds]
    return [
        {"title": "Off-target steps against the horizon", "x_label": "horizon H (steps)",
         "y_label": "expected off-target steps in the first H", "log_x": False,
         "series": [{"name": n, "x": hs, "y": mean_of("curve", n), "dashed": n == "BC-long"} for n in names]},
        {"title": "Per-step error rate", "x_label": "step t", "y_label": "P(step t off target)", "log_x": False,
         "series": [{"name": n, "x": hs, "y": mean_of("per_step", n), "dashed": n == "BC-long"} for n in names]},
        {"title": "RLHF rollouts: judged error (never optimized)", "x_label": "rollout",
         "y_label": "gold/mean = -off-target steps", "log_x": False, "series": rollouts},
    ]


def figure(charts: list[dict[str, Any]]) -> str:
    """The first two charts side by side in one SVG (docs/img/compounding_error.svg)."""
    from rlhflab.report.svg import Series, line_chart

    parts = []
    for chart in charts[:2]:
        series = [Series(s["name"], s["x"], s["y"], dashed=s.get("dashed", False)) for s in chart["series"]]
        parts.append(line_chart(series, chart["title"], chart["x_label"], chart["y_label"], width=480, height=300))
    height = max(int(p.split('height="')[1].split('"')[0]) for p in parts)
    body = "".join(p.replace("<svg ", f'<svg x="{480 * i}" y="0" ', 1) for i, p in enumerate(parts))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{480 * len(parts)}" height="{height}" '
            f'viewBox="0 0 {480 * len(parts)} {height}">{body}</svg>\n')


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds; each trains every model anew")
    p.add_argument("--out", default=None, help="output folder: results.json, curves.json, compounding_error.svg")
    p.add_argument("--work", default=None, help="keep the run folders here (default: a temporary folder)")
    p.add_argument("--svg", default=None, help="also write the figure here (e.g. docs/img/compounding_error.svg)")
    p.add_argument("--bc-steps", type=int, default=BC["steps"])
    p.add_argument("--rm-steps", type=int, default=RM["steps"])
    p.add_argument("--ppo-steps", type=int, default=PPO["steps"], help="a multiple of epochs x minibatches (4)")
    p.add_argument("--rm-pairs", type=int, default=RM["perturbed_pairs"],
                   help="ranked pairs of perturbed demonstrations")
    p.add_argument("--samples", type=int, default=SAMPLES,
                   help="evaluation walks per lane and policy (a multiple of 8)")
    p.add_argument("--probe", type=int, default=PROBE, help="probe walks per lane and edge")
    p.add_argument("--no-bc-long", dest="bc_long", action="store_false", help="skip the BC-long control")
    return p.parse_args(argv)


def write_outputs(out: Path, settings: dict[str, Any], result: dict[str, Any], charts: list[dict[str, Any]]) -> None:
    """results.json, curves.json, the figure, and config.yaml (the settings; it is also what makes
    the folder one that `rlhflab report` reads), each written atomically."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    files = {"config.yaml": yaml.safe_dump(settings, sort_keys=False), "results.json": json.dumps(result, indent=2),
             "curves.json": json.dumps(charts, indent=2), "compounding_error.svg": figure(charts)}
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per model save / load otherwise
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="compounding-error-"))
    os.environ.setdefault("RLHFLAB_CACHE", str(work / "cache"))
    t0 = time.perf_counter()
    per_seed = []
    for seed in seeds:
        per_seed.append(run_seed(work / f"seed-{seed}", seed, args))
        print(f"[seed {seed}] done, {per_seed[-1]['seconds']}", file=sys.stderr)
    total = time.perf_counter() - t0
    summary, verdict, charts = summary_rows(per_seed), claim(per_seed), curves(per_seed)
    print(table(summary))
    print(f"\nclaim (BC's exponent above RLHF's and more errors at H={T.H_MAX}, every seed): "
          f"{verdict['holds_on_every_seed']}  {verdict['per_seed']}\ntotal {total:.0f} s")
    settings = {"example": "compounding_error", "argv": sys.argv[1:] if argv is None else argv, "seeds": seeds,
                "task": {"half_width": T.HALF_WIDTH, "centres": T.CENTRES, "stay_p": T.STAY_P, "h_max": T.H_MAX,
                         "demo_steps": T.DEMO_STEPS},
                "model": MODEL, "bc": {**BC, "steps": args.bc_steps, "long": args.bc_long},
                "rm": {**RM, "steps": args.rm_steps, "perturbed_pairs": args.rm_pairs},
                "ppo": {**PPO, "steps": args.ppo_steps}, "samples": args.samples, "probe": args.probe}
    result = {**settings, "summary": {n: {k: list(v) for k, v in row.items()} for n, row in summary.items()},
              "claim": verdict, "per_seed": per_seed, "total_seconds": total}
    if args.out:
        write_outputs(Path(args.out), settings, result, charts)
    if args.svg:
        Path(args.svg).write_text(figure(charts))
    return result


if __name__ == "__main__":
    main()
