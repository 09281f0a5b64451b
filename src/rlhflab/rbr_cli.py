"""`rlhflab rbr fit`: fit the weights of a Rule-Based Reward on a weight-fitting set (docs/rewards.md,
"Safety rewards"; Mu et al. 2024, arXiv 2411.01111).

    rlhflab rbr fit --config RBR.yaml --data WEIGHT_FIT.jsonl --out weights.json [--eval HELD_OUT.jsonl]

The config holds the scorers as under `rewards:` of a training config (a YAML list, a mapping with
`rewards:`, or a whole training config, whose `<algorithm>.rewards` is read): exactly one of type
`rbr`, whose weights are fitted, and any others (e.g. a helpfulness `reward_model`), whose weighted
sum is the fixed base reward. Every row of the data has a `prompt` (a string or messages) and its
completions ranked best first, as `completions: [best, ..., worst]` (an item may be a list of
equally good completions) or as `ideal: best` with `others: [...]` (all ranked below the ideal,
unordered among themselves); a `category` column when a proposition has `applies_to`; other
columns are passed to the scorers. Every pair of completions of different ranks in a row is a
ranked pair. This module imports nothing heavy at load time (the parser is built on every call).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlhflab.errors import ConfigError, DataError


@dataclass
class FitRow:
    """One prompt of the weight-fitting set with its completions ranked best first."""

    row: int
    """1-based line (JSONL) or record index."""
    prompt: list[dict[str, str]]
    """The prompt's chat messages."""
    ranks: list[list[str]]
    """Groups of equally good completions, best group first."""
    data: dict[str, Any]
    """The full row (passed to the scorers as `Sample.row`)."""


# --------------------------------------------------------------------------- data


def _completion(path: str, row: int, field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, row, field, f"expected a non-empty string (a completion), got {value!r:.60}")
    return value


def _ranked(path: str, row: int, data: dict[str, Any]) -> list[list[str]]:
    has_list, has_ideal = "completions" in data, "ideal" in data or "others" in data
    if has_list and has_ideal:
        raise DataError(path, row, "completions", "give either `completions` or `ideal` + `others`, not both")
    if has_list:
        items = data["completions"]
        if not isinstance(items, list) or not items:
            raise DataError(path, row, "completions", "expected a non-empty list of completions, best first")
        ranks = []
        for i, item in enumerate(items):
            group = item if isinstance(item, list) else [item]
            if not group:
                raise DataError(path, row, f"completions[{i}]", "an empty group of equally ranked completions")
            ranks.append([_completion(path, row, f"completions[{i}]", c) for c in group])
        return ranks
    if has_ideal:
        if "ideal" not in data:
            raise DataError(path, row, "ideal", "`others` needs `ideal`, the best completion")
        others = data.get("others", [])
        if not isinstance(others, list):
            raise DataError(path, row, "others", "expected a list of completions ranked below the ideal one")
        rest = [_completion(path, row, f"others[{i}]", c) for i, c in enumerate(others)]
        return [[_completion(path, row, "ideal", data["ideal"])]] + ([rest] if rest else [])
    raise DataError(path, row, "completions", "missing column 'completions' (a list, best first) or 'ideal' + 'others'",
                    'A row looks like {"prompt": "...", "completions": ["best", "worse", "worst"]}.')


def read_fit_rows(path: str | Path, need_category: bool = False) -> list[FitRow]:
    """Every row of a weight-fitting file, validated (DataError naming the file, row and field)."""
    from rlhflab.data.io import read_records
    from rlhflab.data.normalize import messages

    path = str(path)
    out = []
    for rec in read_records(path):
        if "prompt" not in rec.data:
            raise DataError(path, rec.row, "prompt", "missing column 'prompt' (a string or a list of messages)")
        prompt = messages(path, rec.row, "prompt", rec.data["prompt"], "user")
        ranks = _ranked(path, rec.row, rec.data)
        flat = [c for group in ranks for c in group]
        dup = next((c for i, c in enumerate(flat) if c in flat[:i]), None)
        if dup is not None:
            raise DataError(path, rec.row, "completions", f"the completion {dup[:40]!r} is listed twice")
        if need_category and rec.data.get("category") is None:
            raise DataError(path, rec.row, "category", "a proposition has `applies_to`, which reads this row's "
                            "'category' column (e.g. harmful | benign); add it to every row")
        out.append(FitRow(rec.row, prompt, ranks, rec.data))
    return out


def ranked_pairs(ranks: list[list[str]]) -> list[tuple[int, int]]:
    """(better, worse) indices into the flattened completions, for every two of different ranks."""
    index, start = [], 0
    for group in ranks:
        index.append(list(range(start, start + len(group))))
        start += len(group)
    return [(b, w) for i, hi in enumerate(index) for lo in index[i + 1:] for b in hi for w in lo]


# --------------------------------------------------------------------------- scorers


def load_scorer_configs(path: str | Path) -> tuple[Any, tuple[Any, ...]]:
    """(the rbr ScorerConfig, the other ScorerConfigs) from a scorer list, a `rewards:` mapping or a
    training config; checked as a training config's scorers are (its rbr_weights may not exist yet)."""
    from rlhflab.config_rl import _check_scorers
    from rlhflab.sampling import load_rewards_config

    p = Path(path)
    configs = load_rewards_config(p, "--config")
    rbr = [c for c in configs if c.type == "rbr"]
    if len(rbr) != 1:
        raise ConfigError(f"{p}: expected exactly one scorer of type rbr (its weights are fitted), found {len(rbr)}")
    try:
        _check_scorers("rewards", tuple(replace(c, rbr_weights=None) for c in configs), True)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    for i, c in enumerate(configs):
        if c.normalize != "none":
            raise ConfigError(f"{p}: rewards[{i}] has normalize: {c.normalize}; a normalized score depends on the "
                              "other samples of its batch, so the fit needs normalize: none on every scorer")
    if rbr[0].weight == 0:
        raise ConfigError(f"{p}: the rbr scorer has weight 0; nothing to fit")
    return rbr[0], tuple(c for c in configs if c.type != "rbr")


@dataclass
class Scored:
    """Features and base rewards of one data file's completions, and its ranked pairs."""

    features: Any  # (N, P) float64, multiplied by the rbr scorer's weight in the sum
    base: Any  # (N,) float64
    better: Any  # (M,) long indices into the N completions
    worse: Any  # (M,) long
    rows: int
    rows_without_pairs: int


def score_rows(rows: list[FitRow], rbr: Any, base: Any, rbr_weight: float) -> Scored:
    """Score every completion once (base scorers and propositions) and list the ranked pairs."""
    import torch

    from rlhflab.rewards.base import Sample

    samples, better, worse, lonely = [], [], [], 0
    for g, r in enumerate(rows):
        pairs = ranked_pairs(r.ranks)
        lonely += not pairs
        offset = len(samples)
        better += [offset + b for b, _ in pairs]
        worse += [offset + w for _, w in pairs]
        samples += [Sample(r.prompt, c, {**r.data, "prompt": r.prompt}, group=g) for group in r.ranks for c in group]
    F = rbr.features(samples).double() * rbr_weight
    B = base.score(samples).values.double() if base is not None else torch.zeros(len(samples), dtype=torch.float64)
    return Scored(F, B, torch.tensor(better, dtype=torch.long), torch.tensor(worse, dtype=torch.long),
                  len(rows), lonely)


def _accuracies(s: Scored, w: Any) -> dict[str, float]:
    from rlhflab.rewards.rbr import ranking_accuracy

    rbr = s.features @ w
    b, o = s.better, s.worse
    return {"base": ranking_accuracy(s.base[b], s.base[o]),
            "base+rbr": ranking_accuracy(s.base[b] + rbr[b], s.base[o] + rbr[o]),
            "rbr": ranking_accuracy(rbr[b], rbr[o])}


# --------------------------------------------------------------------------- the command


def fit_command(config: str, data: str, out: str, eval_data: str | None = None, loss: str = "hinge",
                margin: float = 1.0, l2: float = 1e-3, device: str = "cpu", overwrite: bool = False,
                console: Any = None) -> dict[str, Any]:
    """Fit, write `out`, print the report; returns what was written under "fit"."""
    from rlhflab.rewards import build_scorer
    from rlhflab.rewards.rbr import build_rbr, centered_bias, fit_rbr_weights, save_rbr_weights

    if loss not in ("hinge", "logistic"):
        raise ConfigError(f"--loss must be hinge or logistic, got {loss!r}")
    if l2 < 0 or (loss == "hinge" and l2 == 0):
        raise ConfigError(f"--l2 must be > 0 for the hinge loss and >= 0 for the logistic one, got {l2}")
    if Path(out).exists() and not overwrite:
        raise ConfigError(f"--out {out} exists; pass --overwrite to replace it")
    rbr_cfg, base_cfgs = load_scorer_configs(config)
    need_category = any(p.applies_to for p in rbr_cfg.propositions)
    train_rows = read_fit_rows(data, need_category)
    eval_rows = read_fit_rows(eval_data, need_category) if eval_data else None
    names = [p.name for p in rbr_cfg.propositions]

    rbr = build_rbr(replace(rbr_cfg, rbr_weights=None), device)
    base = build_scorer(base_cfgs, device) if base_cfgs else None
    try:
        train = score_rows(train_rows, rbr, base, rbr_cfg.weight)
        held = score_rows(eval_rows, rbr, base, rbr_cfg.weight) if eval_rows else None
    finally:
        rbr.close()
        if base is not None:
            base.close()
    if len(train.better) == 0:
        raise DataError(data, None, "completions", "no ranked pairs: every row has completions of one rank only")
    fit = fit_rbr_weights(train.features[train.better], train.features[train.worse], train.base[train.better],
                          train.base[train.worse], loss=loss, margin=margin, l2=l2)
    w = fit.weights
    bias = centered_bias(w, train.features / rbr_cfg.weight)
    report = {"data": str(data), "loss": loss, "margin": margin, "l2": l2, "objective": fit.objective,
              "base": [c.name or c.type for c in base_cfgs], "rbr_scorer_weight": rbr_cfg.weight,
              "rows": train.rows, "rows_without_pairs": train.rows_without_pairs, "pairs": len(train.better),
              "accuracy": _accuracies(train, w)}
    if held is not None:
        report["eval"] = {"data": str(eval_data), "rows": held.rows, "pairs": len(held.better),
                          "accuracy": _accuracies(held, w) if len(held.better) else {}}
    save_rbr_weights(out, {n: float(v) for n, v in zip(names, w)}, bias, report)
    if console is not None:
        print_report(console, names, w, bias, train, held, report, out)
    return report


def print_report(console: Any, names: list[str], w: Any, bias: float, train: Scored, held: Scored | None,
                 report: dict[str, Any], out: str) -> None:
    """The fitted weights (with each feature's mean on the best and the other completions) and the
    ranking accuracy of the base alone, the RBR alone and their sum."""
    from rich.table import Table

    best = train.features[train.better].mean(0) / report["rbr_scorer_weight"]
    worse = train.features[train.worse].mean(0) / report["rbr_scorer_weight"]
    t = Table(title="fitted RBR weights")
    for col in ("proposition", "weight", "mean phi (better)", "mean phi (worse)"):
        t.add_column(col, justify="left" if col == "proposition" else "right")
    for k, n in enumerate(names):
        t.add_row(n, f"{float(w[k]):+.3f}", f"{float(best[k]):.3f}", f"{float(worse[k]):.3f}")
    t.add_row("(bias)", f"{bias:+.3f}", "", "")
    console.print(t)
    a = Table(title=f"ranking accuracy over ranked pairs ({report['loss']} loss, l2 {report['l2']:g})")
    for col in ("set", "pairs", "base alone", "rbr alone", "base + rbr"):
        a.add_column(col, justify="left" if col == "set" else "right")
    for label, s, acc in (("fit", train, report["accuracy"]), ("eval", held, report.get("eval", {}).get("accuracy"))):
        if s is not None and acc:
            a.add_row(label, str(len(s.better)), f"{acc['base']:.1%}", f"{acc['rbr']:.1%}", f"{acc['base+rbr']:.1%}")
    console.print(a)
    if train.rows_without_pairs:
        console.print(f"[yellow]{train.rows_without_pairs} of {train.rows} rows have completions of one rank only "
                      "and give no pair[/yellow]")
    console.print(f"wrote {out}")


def add_parser(sub: Any) -> None:
    """Register `rbr fit` under the `rlhflab` subcommands `sub`."""
    p = sub.add_parser("rbr", help="Rule-Based Rewards: fit the proposition weights (docs/rewards.md)")
    rsub = p.add_subparsers(dest="rbr_command", required=True)
    q = rsub.add_parser("fit", help="fit an rbr scorer's weights so that base + RBR ranks each prompt's completions "
                                    "as the data does: rlhflab rbr fit --config RBR.yaml --data FIT.jsonl --out W.json")
    q.add_argument("--config", required=True, help="scorers (a list, a `rewards:` mapping or a training config) "
                                                   "with exactly one of type rbr; the others are the base reward")
    q.add_argument("--data", required=True, help="weight-fitting rows: prompt + completions (best first) or ideal + others")
    q.add_argument("--out", required=True, help="the weights file to write (JSON; the rbr scorer's rbr_weights)")
    q.add_argument("--eval", default=None, help="held-out rows in the same format: accuracy reported, not fitted")
    q.add_argument("--loss", default="hinge", choices=("hinge", "logistic"))
    q.add_argument("--margin", type=float, default=1.0, help="wanted gap R(better) - R(worse) (default 1)")
    q.add_argument("--l2", type=float, default=1e-3, help="L2 penalty on the weights (default 1e-3)")
    q.add_argument("--device", default="cpu", help="for reward models and the judge (default cpu)")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    q.set_defaults(func=_cmd_fit)


def _cmd_fit(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rlhflab.cli import _quiet_libraries

    _quiet_libraries()
    fit_command(args.config, args.data, args.out, eval_data=args.eval, loss=args.loss, margin=args.margin,
                l2=args.l2, device=args.device, overwrite=args.overwrite, console=Console(stderr=True))
    return 0
