"""The reward-hacking demo: over-optimizing a learned proxy reward model on the synthetic task of
`rlhflab.eval.synthetic`, at a small and a large KL coefficient (docs/reward_hacking.md).

Per seed, all on CPU with tiny models built in code:
1. reference: a random-init tiny Llama SFT'd on 50/50 generator responses to every item;
2. proxy: a reward model (`algorithm: reward_model`, from the reference) on gold-labelled
   comparisons about drinks only, where "bitter" is the best word;
3. policy: PPO from the reference on the other items with the proxy as its reward and the gold
   reward as its `gold:` metric, once per KL coefficient. The run's own monitor
   (rlhflab.eval.hacking) gives the warning and summary.json's `reward_hacking` section.

At a small kl_coef the proxy keeps rising, the gold rises and then falls, and the warning fires;
at a large one the KL stays low, the gold does not fall and nothing fires.

    python -m rlhflab.eval.hacking_demo --seeds 0,1 --out curves.json --svg reward_hacking.svg
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rlhflab.eval import synthetic as task


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and optimizer settings of the three stages (the defaults are the documented demo)."""

    hidden: int = 64
    """Width of the tiny Llama (2 layers, 4 heads, ~0.1M parameters)."""
    sft_steps: int = 100
    """Reference SFT: optimizer steps of 32 rows at lr 1e-2 (cosine)."""
    sft_rows: int = 2000
    """Distinct SFT rows (generator responses to prompts about every item)."""
    proxy_pairs: int = 1000
    """Gold-labelled comparisons on drink prompts."""
    proxy_steps: int = 150
    """Reward-model steps of 16 pairs at lr 2e-3 (cosine); long enough that "bitter" ends on top."""
    rounds: int = 30
    """PPO rollout rounds per run."""
    epochs: int = 2
    """PPO epochs over each round's samples."""
    minibatches: int = 2
    """PPO optimizer steps per epoch."""
    prompts: int = 16
    """Prompts per round, num_generations samples each (temperature 1)."""
    num_generations: int = 4
    """Samples per prompt."""
    max_new_tokens: int = 16
    """Longest completion (a well-formed response is 10 tokens)."""
    lr: float = 1e-3
    """PPO's AdamW lr (eps 1e-3: with 1e-8 the near-certain format tokens get full-size steps)."""
    kl_coefs: tuple[float, ...] = (0.05, 3.0)
    """PPO's kl_coef (KL penalty in the reward, k1), one run each: ppo's default 0.05, and 3."""


QUICK = DemoSettings(rounds=20)
"""The shorter version run by the tests (on seed 0 the warning fires at round 15 of 20)."""


def _base(model: str | Path, train: Path, out: Path, seed: int, steps: int, batch: int, lr: float,
          schedule: str = "cosine") -> dict[str, Any]:
    return {"model": str(model), "data": {"train": str(train), "max_length": 64}, "output_dir": str(out), "seed": seed,
            "max_steps": steps, "batch_size": batch, "micro_batch_size": batch,
            "optim": {"lr": lr, "eps": 1e-3, "schedule": schedule, "warmup_steps": 0 if schedule == "constant" else
                      max(1, steps // 10)},
            "checkpoint_every": 0, "tensorboard": False, "overwrite": True}


def _train(cfg: dict[str, Any]) -> Any:
    from rich.console import Console

    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    return run(config_from_dict(cfg), Console(quiet=True))


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    from rlhflab.sampling import write_jsonl_atomic

    write_jsonl_atomic(path, rows)
    return path


def build_reference(work: Path, seed: int, s: DemoSettings) -> Path:
    """Stage 1: the SFT reference's Hugging Face folder."""
    from rlhflab.testing import tiny_model_dir

    base = tiny_model_dir(work / "base", task.tokenizer(), seed=seed, hidden=s.hidden, layers=2, heads=4)
    data = _write(work / "sft.jsonl", task.sft_rows(s.sft_rows, seed))
    res = _train({**_base(base, data, work / "reference", seed, s.sft_steps, 32, 1e-2), "algorithm": "sft"})
    return Path(res.final_dir)


def train_proxy(work: Path, reference: Path, seed: int, s: DemoSettings) -> Path:
    """Stage 2: the proxy reward model's folder (a scalar head on the reference)."""
    data = _write(work / "proxy_pairs.jsonl", task.proxy_pairs(s.proxy_pairs, seed + 1))
    res = _train({**_base(reference, data, work / "proxy", seed, s.proxy_steps, 16, 2e-3), "algorithm": "reward_model"})
    return Path(res.final_dir)


def proxy_diagnostics(proxy: Path, seed: int, n: int = 512) -> dict[str, Any]:
    """What the proxy learned: its score of `it was W, W and W.` about a hotel for every word, and
    its pairwise accuracy against the gold labels on fresh drink comparisons (its training
    distribution) and on comparisons about the policy's items."""
    from rlhflab.rewards.base import Sample
    from rlhflab.rewards.reward_model import RewardModelScorer

    scorer = RewardModelScorer(proxy, batch_size=256)

    def scores(pairs: list[tuple[str, str]]) -> list[float]:
        return scorer.score([Sample([{"role": "user", "content": p}], t) for p, t in pairs]).values.tolist()

    words = task.GOOD + task.BAD
    values = scores([(task.prompt_for("hotel"), f"it was {w}, {w} and {w}.") for w in words])
    out: dict[str, Any] = {"word_scores": dict(zip(words, values))}
    for name, items in (("accuracy_drinks", task.DRINKS), ("accuracy_items", task.ITEMS)):
        pairs = task.proxy_pairs(n, seed + 7919, items)
        chosen = scores([(p["prompt"], p["chosen"]) for p in pairs])
        rejected = scores([(p["prompt"], p["rejected"]) for p in pairs])
        out[name] = sum(c > r for c, r in zip(chosen, rejected)) / n
    return out


def run_policy(work: Path, reference: Path, proxy: Path, kl_coef: float, seed: int, s: DemoSettings) -> dict[str, Any]:
    """Stage 3: one PPO run on the proxy; its per-round curves, summary section and warnings."""
    from rlhflab.eval.hacking import HackingSeries

    prompts = _write(work / "prompts.jsonl", task.policy_prompts())
    section = {"rewards": [{"type": "reward_model", "path": str(proxy)}],
               "gold": [{"type": "python", "function": "rlhflab.eval.synthetic:gold"}],
               "kl_coef": kl_coef, "epochs": s.epochs, "minibatches": s.minibatches,
               "generation": {"num_generations": s.num_generations, "max_new_tokens": s.max_new_tokens}}
    steps = s.rounds * s.epochs * s.minibatches
    cfg = _base(reference, prompts, work / f"ppo-kl{kl_coef:g}", seed, steps, s.prompts, s.lr, "constant")
    cfg.update(algorithm="ppo", micro_batch_size=s.prompts * s.num_generations // s.minibatches, ppo=section)
    t0 = time.perf_counter()
    res = _train(cfg)
    secs = time.perf_counter() - t0
    summary = json.loads((res.out_dir / "summary.json").read_text())
    series = HackingSeries.from_rows(res.history)
    return {"kl_coef": kl_coef, "run_dir": str(res.out_dir), "seconds": secs, "steps": series.steps,
            "proxy": series.proxy, "gold": series.gold, "kl": series.kl,
            "reward_hacking": summary.get("reward_hacking"), "warnings": summary.get("warnings", [])}


def run_seed(work: Path, seed: int, s: DemoSettings = DemoSettings(), progress: Any = None) -> dict[str, Any]:
    """The three stages of one seed in `work` (created): the proxy's diagnostics (`proxy_model`),
    one `run_policy` result per kl_coef (`runs`) and the model folders. `progress(description)` is
    called as each stage starts."""
    work.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    say(f"seed {seed}: SFT reference")
    reference = build_reference(work, seed, s)
    say(f"seed {seed}: proxy reward model")
    proxy = train_proxy(work, reference, seed, s)
    diag = proxy_diagnostics(proxy, seed)
    runs = []
    for kl in s.kl_coefs:
        say(f"seed {seed}: PPO kl_coef {kl:g}")
        runs.append(run_policy(work, reference, proxy, kl, seed, s))
    return {"seed": seed, "proxy_model": diag, "runs": runs, "seconds": time.perf_counter() - t0,
            "reference_dir": str(reference), "proxy_dir": str(proxy)}


# ----------------------------------------------------------------------------- reporting
def table(results: list[dict[str, Any]]) -> str:
    """Markdown: per seed and kl_coef, proxy / gold / KL at the start, the gold peak and the end
    (3-round averages), and the warning."""
    lines = ["| seed | kl_coef | proxy: start / gold peak / end | gold: start / peak / end | KL: peak / end "
             "| warning (step) | Gao fit: peak KL (R^2) |", "|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res["runs"]:
            h = r["reward_hacking"]
            a, p, e = h["start"], h["gold_peak"], h["end"]
            fit = h["fit"]
            fit_s = "-" if not fit or fit["peak_kl"] is None else f"{fit['peak_kl']:.2f} ({fit['r2']:.2f})"
            warn = f"yes ({h['warning']['step']})" if h["warned"] else "no"
            lines.append(f"| {res['seed']} | {r['kl_coef']:g} | {a['proxy']:+.2f} / {p['proxy']:+.2f} / {e['proxy']:+.2f} | "
                         f"{a['gold']:+.2f} / {p['gold']:+.2f} / {e['gold']:+.2f} | {p['kl']:.2f} / {e['kl']:.2f} | "
                         f"{warn} | {fit_s} |")
    return "\n".join(lines)


def proxy_table(results: list[dict[str, Any]]) -> str:
    words = task.GOOD + task.BAD
    lines = ["| seed | " + " | ".join(words) + " | accuracy: drinks | accuracy: other items |",
             "|---|" + "---|" * (len(words) + 2)]
    for res in results:
        d = res["proxy_model"]
        lines.append(f"| {res['seed']} | " + " | ".join(f"{d['word_scores'][w]:+.2f}" for w in words) +
                     f" | {d['accuracy_drinks']:.3f} | {d['accuracy_items']:.3f} |")
    return "\n".join(lines)


def plot_svg(result: dict[str, Any], smooth: int = 3) -> str:
    """Gold and proxy against d = sqrt(KL) (Gao et al.'s axis; `smooth`-round moving averages, a
    negative KL estimate counted as 0) for every kl_coef of one seed, with the fitted eq. 2 curve
    of each run that warned."""
    import math

    from rlhflab.eval.hacking import HackingSeries
    from rlhflab.report.svg import Series, line_chart

    series = []
    for i, r in enumerate(result["runs"]):
        sm = HackingSeries(r["steps"], r["proxy"], r["gold"], r["kl"]).smoothed(smooth)
        d = [math.sqrt(max(k, 0.0)) for k in sm.kl]
        color = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e")[i % 4]
        name = f"kl_coef {r['kl_coef']:g}"
        series.append(Series(f"gold, {name}", d, sm.gold, color=color, markers=True))
        series.append(Series(f"proxy, {name}", d, sm.proxy, color=color, dashed=True))
        fit = (r.get("reward_hacking") or {}).get("fit")
        if fit and r["reward_hacking"]["warned"]:
            xs = [max(d) * j / 40 for j in range(41)]
            ys = [fit["gold_0"] + x * (fit["alpha"] - fit["beta"] * (math.log(x) if x > 0 else 0.0)) for x in xs]
            series.append(Series(f"gold fit d(alpha - beta ln d), {name}", xs, ys, color="#7f7f7f", dashed=True))
    return line_chart(series, title=f"Proxy and gold reward against sqrt(KL) (seed {result['seed']}, {smooth}-round "
                      "averages)", x_label="d = sqrt(KL(policy || reference)), KL in nats (kl/k1)", y_label="reward",
                      width=640, height=360)


def _numbers(kind: type) -> Any:
    """An argparse type: a comma-separated list of non-negative `kind` values."""

    def parse(text: str) -> Any:
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of {kind.__name__} values")
        if not values or any(v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"'{text}': give one or more values >= 0")
        return values

    return parse


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number >= 1")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rlhflab.eval.hacking_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=_numbers(int), default=[0],
                   help="comma-separated seeds; each builds its own reference and proxy")
    p.add_argument("--kl-coefs", type=_numbers(float), default=None,
                   help="comma-separated PPO kl_coef values, each >= 0 (default: 0.05,3)")
    p.add_argument("--rounds", type=_positive, default=None, help="PPO rollout rounds per run (default 30)")
    p.add_argument("--quick", action="store_true", help="the smaller settings of the tests (QUICK)")
    p.add_argument("--work", default=None, help="folder for the runs (default: a new temporary folder)")
    p.add_argument("--out", default=None, help="write the settings, curves and summaries as JSON here")
    p.add_argument("--svg", default=None, help="write the first seed's proxy and gold vs KL chart here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rlhflab.cli import _quiet_libraries

    args = parse_args(argv)
    torch.set_num_threads(1)  # tiny models: one thread is as fast and leaves the other cores alone
    _quiet_libraries()
    s = QUICK if args.quick else DemoSettings()
    if args.kl_coefs:
        s = replace(s, kl_coefs=tuple(args.kl_coefs))
    if args.rounds:
        s = replace(s, rounds=args.rounds)
    seeds = args.seeds
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="reward-hacking-"))
    results = []
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        job = bar.add_task("reward-hacking demo", total=len(seeds) * (2 + len(s.kl_coefs)))

        stages = [0]

        def say(msg: str) -> None:  # a stage starts: the previous one is done
            bar.update(job, completed=stages[0], description=msg)
            stages[0] += 1

        for seed in seeds:
            results.append(run_seed(work / f"seed-{seed}", seed, s, say))
        bar.update(job, completed=len(seeds) * (2 + len(s.kl_coefs)), description="done")
    print("## What the proxy learned\n\n" + proxy_table(results) + "\n\n## PPO on the proxy\n\n" + table(results))
    for res in results:
        for r in res["runs"]:
            for w in r["warnings"]:
                print(f"\nseed {res['seed']}, kl_coef {r['kl_coef']:g}: {w}")
    portable = [{**{k: v for k, v in res.items() if not k.endswith("_dir")},
                 "runs": [{k: v for k, v in r.items() if k != "run_dir"} for r in res["runs"]]} for res in results]
    out = {"settings": asdict(s), "seeds": seeds, "results": portable}
    for path, text in ((args.out, lambda: json.dumps(out, indent=1)), (args.svg, lambda: plot_svg(results[0]))):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text())
    return out


if __name__ == "__main__":
    main()
