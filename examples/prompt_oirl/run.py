"""Prompt-OIRL on CPU: a reward model learned offline as a cheap proxy for expensive feedback.

Claim (Sun, Hüyük & van der Schaar, arXiv 2309.06553; the "reward model as a proxy" argument of
Sun, arXiv 2310.06147): the prompt that works best depends on the query; a reward model learned
offline from logged (query, prompt, was-it-correct) records can pick a prompt per query without
calling the expensive model, and beat the best single prompt.

Stages (`--help` for the knobs; docs/reproductions.md for the numbers):
1. Queries: procedurally generated arithmetic of six kinds (tasks.py), split into logged
   ('train') and held-out ('test') queries. Prompts: K instruction templates (tasks.PROMPTS).
2. Logs: the expensive model (default: the embedded SmolLM2-135M-Instruct) answers every
   (query, prompt) once, greedily; rlhflab's math verifier marks the reply correct or not. The
   records are cached in OUT/records.jsonl (a rerun generates only what is missing).
3. Reward model (rm.py): P(correct | query, prompt) from mean-pooled embeddings of the query and
   the prompt, fit on the logged queries only.
4. Held-out comparison (evaluate.py): per-query RM selection vs the best single prompt (chosen on
   the logs), a random prompt, the best prompt per query kind, a vote over all K replies, and the
   oracle; the RM's AUROC and calibration; accuracy against the amount of logged data.

    python examples/prompt_oirl/run.py                       # cached logs: about a minute
    python examples/prompt_oirl/run.py --train 30 --test 30 --out /tmp/oirl   # fresh, small

Outputs in OUT: records.jsonl (the logged data), results.json, curves.json (plots for
`rlhflab report`), and the SVG named by --plot. tests/integration/test_prompt_oirl.py loads this
file by path.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table

from rlhflab.rewards.python_fn import import_file

HERE = Path(__file__).resolve().parent
tasks = import_file(HERE / "tasks.py", "prompt_oirl_tasks")
logs = import_file(HERE / "logs.py", "prompt_oirl_logs")
rm = import_file(HERE / "rm.py", "prompt_oirl_rm")
ev = import_file(HERE / "evaluate.py", "prompt_oirl_evaluate")

METHOD_NAMES = {
    "rm_select": "RM selection (argmax_p RM(q, p))",
    "best_single": "best single prompt (on the logs)",
    "random_prompt": "random prompt (expected)",
    "per_kind_best": "best prompt per query kind (uses kind labels)",
    "vote_all": "majority vote over all K replies",
    "oracle": "oracle (any prompt correct)",
}


def embed(model: Any, tokenizer: Any, splits: dict[str, list[Any]], prompts: tuple[Any, ...]) -> dict[str, torch.Tensor]:
    """Mean-pooled embeddings of every query of each split and of every prompt, keyed by split / 'prompts'."""
    out = {split: rm.mean_pooled(model, tokenizer, [q.text for q in qs]) for split, qs in splits.items()}
    out["prompts"] = rm.mean_pooled(model, tokenizer, [p.text() for p in prompts])
    return out


def data_size_curve(emb: dict[str, torch.Tensor], correct_tr: torch.Tensor, correct_te: torch.Tensor,
                    fractions: list[float], draws: int, cfg: Any) -> list[dict[str, Any]]:
    """Test accuracy of RM selection and of the best single prompt when only a random `fraction`
    of the logged queries (with all their prompts) is available; `draws` seeded subsets each."""
    rows = []
    n = correct_tr.shape[0]
    for frac in fractions:
        size = max(5, round(frac * n))
        rm_acc, single_acc = [], []
        for d in range(draws):
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + d))[:size].sort().values
            model = rm.fit_reward_model(emb["train"][idx], emb["prompts"], correct_tr[idx], _with_seed(cfg, d))
            rm_acc.append(float(ev.outcome(correct_te, model.probs(emb["test"]).argmax(1)).mean()))
            single_acc.append(float(correct_te[:, ev.best_single(correct_tr[idx])].float().mean()))
        rows.append({"fraction": frac, "logged_queries": size, "logged_records": size * correct_tr.shape[1],
                     "rm_select": _mean_sd(rm_acc), "best_single": _mean_sd(single_acc), "draws": draws})
    return rows


def cross_validate(emb: dict[str, torch.Tensor], correct_tr: torch.Tensor, folds: int, cfg: Any) -> dict[str, Any]:
    """RM selection minus the best single prompt on the logged data alone: `folds` random splits
    of the logged queries into 1/3 held out and 2/3 to fit on (the held-out queries never enter)."""
    n, gains = correct_tr.shape[0], []
    for f in range(folds):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(2000 + f))
        val, fit = perm[:n // 3], perm[n // 3:]
        model = rm.fit_reward_model(emb["train"][fit], emb["prompts"], correct_tr[fit], _with_seed(cfg, f))
        picked = ev.outcome(correct_tr[val], model.probs(emb["train"][val]).argmax(1)).mean()
        gains.append(float(picked - correct_tr[val][:, ev.best_single(correct_tr[fit])].float().mean()))
    return {"folds": folds, "held_out_queries": n // 3, "rm_minus_best_single": _mean_sd(gains)}


def _with_seed(cfg: Any, seed: int) -> Any:
    from dataclasses import replace

    return replace(cfg, seed=seed)


def _mean_sd(xs: list[float]) -> dict[str, float]:
    t = torch.tensor(xs, dtype=torch.float64)
    return {"mean": round(float(t.mean()), 4), "sd": round(float(t.std()) if len(xs) > 1 else 0.0, 4),
            "values": [round(x, 4) for x in xs]}


def per_prompt_table(queries: list[dict[str, Any]], correct: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """Accuracy of each prompt overall and per query kind."""
    kinds = sorted({q["kind"] for q in queries})
    out = {"all": dict(zip(names, [round(float(v), 4) for v in correct.float().mean(0)]))}
    for k in kinds:
        rows = correct[[i for i, q in enumerate(queries) if q["kind"] == k]].float().mean(0)
        out[k] = dict(zip(names, [round(float(v), 4) for v in rows]))
    return out


def analyse(records: list[dict[str, Any]], emb: dict[str, torch.Tensor], names: list[str], fractions: list[float],
            draws: int, cv_folds: int, cfg: Any) -> dict[str, Any]:
    """Everything in results.json except the run's settings and timings."""
    q_tr, correct_tr, _ = ev.label_matrix(records, "train", names)
    q_te, correct_te, extracted_te = ev.label_matrix(records, "test", names)
    model = rm.fit_reward_model(emb["train"], emb["prompts"], correct_tr, cfg)
    probs = model.probs(emb["test"])  # (Nq_test, K), no call to the expensive model
    result = ev.compare(q_te, correct_te, extracted_te, correct_tr, q_tr, probs, seed=cfg.seed)
    result["best_single"] = names[result.pop("best_single_index")]
    result["per_kind_best"] = {k: names[v] for k, v in result.pop("per_kind_best_index").items()}
    result["rm_pick_counts"] = dict(zip(names, result["rm_pick_counts"]))
    prior = correct_tr.float().mean(0).expand_as(probs)  # each prompt's logged accuracy, whatever the query
    result["reward_model"] = {"choice": model.choice, "auroc": ev.rm_auroc(probs, correct_te),
                              "within_query_auroc": ev.within_query_auroc(probs, correct_te),
                              "calibration": ev.calibration(probs, correct_te),
                              "prompt_prior": {"auroc": ev.rm_auroc(prior, correct_te),
                                               "within_query_auroc": ev.within_query_auroc(prior, correct_te),
                                               "brier": ev.calibration(prior, correct_te)["brier"]}}
    result["prompt_accuracy"] = {"train": per_prompt_table(q_tr, correct_tr, names),
                                 "test": per_prompt_table(q_te, correct_te, names)}
    result["data_size"] = data_size_curve(emb, correct_tr, correct_te, fractions, draws, cfg)
    result["logged_cross_validation"] = cross_validate(emb, correct_tr, cv_folds, cfg)
    return result


def curves(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The plots, in the curves.json format of `rlhflab report`."""
    rows = result["data_size"]
    x = [r["logged_queries"] for r in rows]
    flat = lambda name: [result["methods"][name]["accuracy"]] * len(x)  # noqa: E731
    series = [{"name": "RM selection (mean over draws)", "x": x, "y": [r["rm_select"]["mean"] for r in rows]},
              {"name": "best single prompt (mean over draws)", "x": x, "y": [r["best_single"]["mean"] for r in rows]},
              {"name": "oracle (any prompt correct)", "x": x, "y": flat("oracle"), "dashed": True},
              {"name": "random prompt", "x": x, "y": flat("random_prompt"), "dashed": True}]
    acc = {"title": "Prompt-OIRL: held-out accuracy vs logged data", "x_label": "logged queries (x K prompts each)",
           "y_label": "held-out accuracy", "log_x": False, "series": series}
    bins = result["reward_model"]["calibration"]["bins"]
    cal = {"title": "reward model calibration (held-out)", "x_label": "predicted P(correct)", "y_label": "fraction correct",
           "log_x": False, "series": [{"name": "RM", "x": [b["mean_p"] for b in bins], "y": [b["frac_correct"] for b in bins]},
                                      {"name": "perfect calibration", "x": [0, 1], "y": [0, 1], "dashed": True}]}
    return [acc, cal]


def write_svg(chart: dict[str, Any], path: Path) -> None:
    from rlhflab.report.svg import Series, line_chart

    series = [Series(s["name"], s["x"], s["y"], dashed=s.get("dashed", False), markers=not s.get("dashed", False))
              for s in chart["series"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(line_chart(series, chart["title"], chart["x_label"], chart["y_label"], log_x=chart["log_x"]) + "\n")


def print_table(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"held-out accuracy ({result['n_test']} queries); best single prompt = {result['best_single']}")
    for col in ("policy", "accuracy", "95% CI", "expensive calls / query"):
        table.add_column(col)
    for name, m in result["methods"].items():
        table.add_row(METHOD_NAMES[name], f"{m['accuracy']:.1%}", f"[{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]",
                      str(m["calls_per_query"]))
    console.print(table)
    d, r = result["rm_minus_best_single"], result["reward_model"]
    cv = result["logged_cross_validation"]["rm_minus_best_single"]
    console.print(f"RM - best single: {d['mean']:+.1%} [{d['ci95'][0]:+.1%}, {d['ci95'][1]:+.1%}] held out, "
                  f"{cv['mean']:+.1%} (sd {cv['sd']:.1%}) in cross-validation on the logs; RM AUROC {r['auroc']} "
                  f"(prompt prior {r['prompt_prior']['auroc']}), within-query AUROC {r['within_query_auroc']}, "
                  f"ECE {r['calibration']['ece']}, Brier {r['calibration']['brier']} (prior {r['prompt_prior']['brier']})")
    for row in result["data_size"]:
        console.print(f"  {row['logged_queries']:4d} logged queries: RM {row['rm_select']['mean']:.1%} "
                      f"(sd {row['rm_select']['sd']:.1%}), best single {row['best_single']['mean']:.1%}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results"), help="output folder (records.jsonl is the cache of replies)")
    ap.add_argument("--model", default="smollm2-135m", help="the expensive model: smollm2-135m or a local HF folder")
    ap.add_argument("--train", type=int, default=150, help="logged queries (each answered with every prompt)")
    ap.add_argument("--test", type=int, default=120, help="held-out queries (used only to evaluate)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the queries and of the reward model")
    ap.add_argument("--fractions", default="0.25,0.5,1.0", help="shares of the logged queries for the data-size curve")
    ap.add_argument("--draws", type=int, default=5, help="random subsets per share in the data-size curve")
    ap.add_argument("--cv-folds", type=int, default=10, help="random splits of the logged queries for the cross-validation")
    ap.add_argument("--ensemble", type=int, default=5, help="reward-model seeds averaged (refit on all logs)")
    ap.add_argument("--batch-size", type=int, default=30, help="replies generated per batch")
    ap.add_argument("--plot", default=str(HERE.parents[1] / "docs" / "img" / "prompt_oirl.svg"),
                    help="where to write the accuracy-vs-logged-data SVG ('' = not at all)")
    args = ap.parse_args(argv)
    if args.train < 10 or args.test < 1:
        ap.error("--train must be at least 10 and --test at least 1")
    try:
        args.fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        ap.error(f"--fractions {args.fractions!r}: give comma-separated numbers in (0, 1], e.g. 0.25,0.5,1.0")
    if not all(0 < f <= 1 for f in args.fractions) or min(args.draws, args.ensemble, args.cv_folds) < 1:
        ap.error("--fractions must lie in (0, 1]; --draws, --ensemble and --cv-folds must be at least 1")
    return args


def main(argv: list[str] | None = None, console: Console | None = None) -> dict[str, Any]:
    from rlhflab.feedback.generate import ChatModel

    args = parse_args(argv)
    console = console or Console(stderr=True)
    t0 = time.perf_counter()
    out = Path(args.out)
    splits = tasks.make_splits(args.train, args.test, args.seed)
    names = [p.name for p in tasks.PROMPTS]
    chat = ChatModel.load(args.model, batch_size=args.batch_size)
    todo = logs.missing_chunks(args.model, splits, tasks.PROMPTS, out / "records.jsonl", args.batch_size)
    console.print(f"{len(splits['train'])} logged + {len(splits['test'])} held-out queries x {len(names)} prompts; "
                  f"{todo} batches of replies to generate ({out / 'records.jsonl'})")
    records = logs.generate_logs(chat, args.model, splits, tasks.PROMPTS, out / "records.jsonl", args.batch_size)
    t_logs = time.perf_counter() - t0
    emb = embed(chat.model, chat.tokenizer, splits, tasks.PROMPTS)
    result = {"model": args.model, "n_train": args.train, "n_test": args.test, "seed": args.seed, "prompts": names}
    cfg = rm.RMConfig(seed=args.seed, ensemble=args.ensemble)
    result |= analyse(records, emb, names, args.fractions, args.draws, args.cv_folds, cfg)
    result["seconds"] = {"logs": round(t_logs, 1), "total": round(time.perf_counter() - t0, 1)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    settings = {"example": "prompt_oirl", **{k: v for k, v in vars(args).items() if k not in ("out", "plot")},
                "prompts": names, "reward_model": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}}
    # config.yaml records the settings; it is also what makes OUT a folder `rlhflab report` reads
    (out / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    charts = curves(result)
    (out / "curves.json").write_text(json.dumps(charts, indent=2) + "\n")
    if args.plot:
        write_svg(charts[0], Path(args.plot))
    print_table(result, console)
    console.print(f"wrote {out / 'results.json'}, {out / 'curves.json'}" + (f", {args.plot}" if args.plot else ""))
    return result


if __name__ == "__main__":
    from rlhflab.errors import UserError

    try:
        main()
    except UserError as e:
        Console(stderr=True).print(f"[red]error:[/] {e}")
        sys.exit(2)
