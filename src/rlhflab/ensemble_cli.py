"""`rlhflab ensemble`: train, calibrate and score reward-model ensembles (docs/rewards.md,
"Ensembles and uncertainty").

    rlhflab ensemble train CONFIG.yaml --members N [--vary seed|bootstrap|split] [--models M ...] [key=value ...]
    rlhflab ensemble calibrate --ensemble runs/ens/ensemble.json [--data HELDOUT.jsonl] [--quantile 0.95]
    rlhflab ensemble score --ensemble runs/ens/ensemble.json --data FILE [--ood FILE ...] [--out scores.jsonl]

`train` runs the reward-model trainer (`rlhflab train`'s own `run`) once per member and writes
<output_dir>/ensemble.json; `calibrate` adds each member's held-out mean and the OOD threshold to
it; `score` writes mean / std / ood per response and, with --ood files, the AUROC of the spread.
The math lives in `rlhflab.rewards.ensemble` and `rlhflab.eval.stats`; this module reads files,
loads models and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhflab.errors import ConfigError, DataError

VARY = ("seed", "bootstrap", "split")
"""How members differ: seed = the same rows, seed + i (head and LoRA initialization, data order);
bootstrap = rows resampled with replacement (seed + i); split = disjoint shards of the rows."""


def add_parser(sub: Any) -> None:
    """Register `rlhflab ensemble {train, calibrate, score}` on the CLI's subparsers."""
    p = sub.add_parser("ensemble", help="reward-model ensembles: train N members, calibrate the OOD threshold, "
                                        "score with mean / spread (docs/rewards.md)")
    esub = p.add_subparsers(dest="ensemble_command", required=True)
    q = esub.add_parser("train", help="train N reward models from one config: rlhflab ensemble train CONFIG.yaml "
                                      "--members N [--vary seed|bootstrap|split] [key=value ...]",
                        usage="rlhflab ensemble train CONFIG.yaml --members N [--vary seed|bootstrap|split] "
                              "[--models MODEL ...] [key=value ...]  (CONFIG.yaml --help for details)")
    q.add_argument("config", help="a reward_model YAML config (see examples/reward_model.yaml)")
    q.add_argument("rest", nargs=argparse.REMAINDER, metavar="...",
                   help="--members N, --vary, --models and key=value overrides, in any order")
    q.set_defaults(func=cmd_train)

    q = esub.add_parser("calibrate", help="score held-out responses; write each member's mean and the OOD threshold "
                                          "(a quantile of the spreads) into the ensemble JSON")
    q.add_argument("--ensemble", required=True, metavar="ENSEMBLE.json")
    q.add_argument("--data", nargs="+", default=None, metavar="FILE",
                   help="held-out responses: pairwise (chosen and rejected) or prompt_completion files "
                        "(default: the ensemble's held-out split)")
    q.add_argument("--quantile", type=float, default=0.95, help="threshold = this quantile of the held-out spreads")
    _common(q)
    q.set_defaults(func=cmd_calibrate)

    q = esub.add_parser("score", help="mean, spread and OOD flag per response; with --ood, the AUROC of the spread")
    q.add_argument("--ensemble", required=True, metavar="ENSEMBLE.json")
    q.add_argument("--data", required=True, nargs="+", metavar="FILE", help="in-distribution responses")
    q.add_argument("--ood", nargs="+", default=[], metavar="FILE",
                   help="out-of-distribution responses, one set per file")
    q.add_argument("--out", default=None, metavar="scores.jsonl", help="write one JSON row per response")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    q.add_argument("--threshold", type=float, default=None, help="OOD threshold (default: the calibrated one)")
    q.add_argument("--uncertainty-coef", type=float, default=0.0, help="k of reward = mean - k * std")
    _common(q)
    q.set_defaults(func=cmd_score)


def _common(q: argparse.ArgumentParser) -> None:
    q.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    q.add_argument("--trust-remote-code", action="store_true")


def _setup() -> Any:
    from rlhflab.cli import _console, _quiet_libraries

    _quiet_libraries()
    return _console()


# --------------------------------------------------------------------------- train


@dataclass
class Plan:
    """What `ensemble train` will do, fully validated before anything is written or loaded."""

    members: list[Any]
    """Each member's RunConfig: seed + i, output_dir/member_i, its model and data."""
    files: dict[Path, list[dict[str, Any]]]
    """Data files to write first: the common train / held-out split and each member's rows."""
    heldout: Any
    """The held-out data the members are evaluated on (a path, a list of paths, or None)."""


def member_rows(rows: list[dict[str, Any]], n: int, vary: str, seed: int) -> list[list[dict[str, Any]]] | None:
    """Each member's training rows: None for `seed` (all members use the same rows); `bootstrap`:
    len(rows) draws with replacement, member i seeded with seed + i; `split`: one random
    permutation (seed), member i takes positions i, i + n, i + 2n, ... (disjoint shards whose
    sizes differ by at most one)."""
    import torch

    if vary == "seed":
        return None
    if vary == "bootstrap":
        out = []
        for i in range(n):
            g = torch.Generator().manual_seed(seed + i)
            out.append([rows[j] for j in torch.randint(len(rows), (len(rows),), generator=g).tolist()])
        return out
    if vary == "split":
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
        return [[rows[j] for j in order[i::n]] for i in range(n)]
    raise ConfigError(f"--vary must be one of {', '.join(VARY)}, got {vary!r}")


def heldout_split(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows): the same rule as the trainer's `data.eval_fraction` split
    (max(1, round(n * fraction)) rows chosen by a permutation seeded with `seed`), done once for
    the whole ensemble so no member trains on the held-out rows."""
    import torch

    n_eval = max(1, round(len(rows) * fraction))
    if n_eval >= len(rows):
        raise ConfigError(f"data.eval_fraction {fraction} leaves no training rows out of {len(rows)}")
    held = set(torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:n_eval].tolist())
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _read_rows(paths: Any, fmt: str) -> list[dict[str, Any]]:
    """The rows of one file or a list of files, each checked as preference pairs (DataError naming
    the file, row and field)."""
    from rlhflab.data import examples_from_records, read_records

    rows = []
    for p in [paths] if isinstance(paths, str) else list(paths):
        records = read_records(p)
        examples_from_records(records, str(p), "pairwise", fmt)
        rows += [r.data for r in records]
    return rows


def plan_members(cfg: Any, n: int, vary: str, models: list[str] | None) -> Plan:
    """Validated member configs and the data files to write for them. When the config holds out
    `data.eval_fraction` of its training rows, the split is made once here (output_dir/train.jsonl
    and heldout.jsonl) so that no member trains on another member's held-out rows. Reads only the
    data files."""
    from rlhflab.config import config_from_dict, to_dict
    from rlhflab.train.run import _check_out_dir

    if n < 2:
        raise ConfigError(f"--members must be at least 2 (an ensemble of one has no spread), got {n}")
    if cfg.algorithm != "reward_model":
        raise ConfigError(f"an ensemble trains reward models: the config's algorithm must be reward_model, "
                          f"not {cfg.algorithm}")
    if models is not None and len(models) != n:
        raise ConfigError(f"--models gives {len(models)} models for --members {n}; give one per member "
                          "(key=value overrides written after --models count as models: put them before it)")
    _check_models(models)
    out = Path(cfg.output_dir)
    split = cfg.data.eval is None and cfg.data.eval_fraction > 0
    rows = _read_rows(cfg.data.train, cfg.data.format) if split or vary != "seed" else None
    files: dict[Path, list[dict[str, Any]]] = {}
    train, heldout = cfg.data.train, cfg.data.eval
    if split:
        rows, files[out / "heldout.jsonl"] = heldout_split(rows, cfg.data.eval_fraction, cfg.seed)
        train, heldout = str(out / "train.jsonl"), str(out / "heldout.jsonl")
    if vary == "split" and len(rows) < n:
        raise ConfigError(f"--vary split needs at least one row per member: {len(rows)} rows for {n} members")
    per_member = member_rows(rows, n, vary, cfg.seed) if rows is not None else None
    if split and per_member is None:
        files[out / "train.jsonl"] = rows
    members = []
    for i in range(n):
        tree = to_dict(cfg)
        tree.update(seed=cfg.seed + i, output_dir=str(out / f"member_{i}"), model=models[i] if models else cfg.model)
        tree["data"].update(train=train, eval=heldout, eval_fraction=0.0 if split else cfg.data.eval_fraction)
        if per_member is not None:
            tree["data"]["train"] = str(out / f"member_{i}" / "train.jsonl")
            files[Path(tree["data"]["train"])] = per_member[i]
        members.append(config_from_dict(tree))
        _check_out_dir(members[-1])
    return Plan(members, files, heldout)


def _check_models(models: list[str] | None) -> None:
    from rlhflab.models import EMBEDDED, resolve_model_path

    for m in dict.fromkeys(models or []):
        if m != EMBEDDED:
            resolve_model_path(m)  # a UserError for a missing or broken folder


def train_ensemble(config: str, overrides: list[str], n: int, vary: str, models: list[str] | None,
                   console: Any) -> Path:
    """Validate everything, then train the members one after another; returns ensemble.json."""
    from rlhflab.config import load_config
    from rlhflab.sampling import write_jsonl_atomic
    from rlhflab.train.run import run

    cfg = load_config(config, overrides)
    plan = plan_members(cfg, n, vary, models)
    out = Path(cfg.output_dir)
    for path, rows in plan.files.items():
        write_jsonl_atomic(path, rows)
    t0, finals = time.perf_counter(), []
    for i, member in enumerate(plan.members):
        console.rule(f"member {i + 1}/{n}: seed {member.seed}, model {member.model}, data {member.data.train}")
        result = run(member, console)
        if result.final_dir is None:
            raise RuntimeError(f"member {i} stopped before max_steps")
        finals.append(result.final_dir)
    path = out / "ensemble.json"
    from rlhflab.rewards.ensemble import ENSEMBLE_FORMAT, write_ensemble_file

    ev = plan.heldout
    write_ensemble_file(path, {
        "format": ENSEMBLE_FORMAT, "members": [_rel(f, out) for f in finals], "vary": vary,
        "seeds": [m.seed for m in plan.members], "models": [m.model for m in plan.members],
        "train": [_rel(m.data.train, out) for m in plan.members],
        "heldout": None if ev is None else [_rel(e, out) for e in ([ev] if isinstance(ev, str) else ev)],
        "chat_template": cfg.data.chat_template, "config": str(config), "overrides": list(overrides),
        "seconds": round(time.perf_counter() - t0, 1)})
    console.print(f"[bold green]ensemble[/] of {n} reward models in {time.perf_counter() - t0:.1f} s: {path}")
    return path


def _rel(p: Any, base: Path) -> Any:
    """A path as written into the ensemble JSON: relative to its folder (lists element-wise)."""
    if not isinstance(p, (str, Path)):
        return [_rel(x, base) for x in p]
    return os.path.relpath(Path(p).resolve(), base.resolve())


def train_arguments(rest: list[str]) -> argparse.Namespace:
    """The options of `ensemble train` after CONFIG.yaml, options and key=value overrides in any
    order (argparse's intermixed parsing; a bad option exits with code 2 and the usage)."""
    p = argparse.ArgumentParser(prog="rlhflab ensemble train CONFIG.yaml",
                                description="Train N reward models from one reward_model config; member i runs "
                                            "with seed + i into <output_dir>/member_i, then <output_dir>/ensemble.json "
                                            "lists their final/ folders.")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as max_steps=20 output_dir=runs/ens")
    p.add_argument("--members", type=int, required=True, help="how many reward models (>= 2)")
    p.add_argument("--vary", choices=VARY, default="seed",
                   help="seed: same rows, seed + i; bootstrap: rows resampled with replacement; split: disjoint shards")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="one initial model per member (default: the config's `model` for all)")
    return p.parse_intermixed_args(rest)


def cmd_train(args: argparse.Namespace) -> int:
    opts = train_arguments(args.rest)
    console = _setup()
    train_ensemble(args.config, opts.overrides, opts.members, opts.vary, opts.models, console)
    return 0


# --------------------------------------------------------------------------- reading responses


@dataclass
class Responses:
    """The responses of one file as samples, with where each came from."""

    path: str
    samples: list[Any]
    """rlhflab.rewards.Sample, one per response."""
    where: list[tuple[int, str]]
    """(row, which response: chosen | rejected | completion) per sample."""


def read_responses(path: str) -> Responses:
    """Every response of a data file: both sides of a pairwise / transcript / safety row, the
    completion of a prompt_completion / unpaired / scored row, the last assistant turn of a
    messages row. DataError (file, row, field) on a bad row or a prompt-only file."""
    from rlhflab.data import load_examples
    from rlhflab.data.examples import PairExample, PromptExample, SFTExample
    from rlhflab.rewards.base import Sample

    loaded = load_examples(path, None)
    out = Responses(str(path), [], [])

    def add(prompt: list[dict], completion: list[dict], row: int, which: str) -> None:
        context = prompt + completion[:-1]
        out.samples.append(Sample(context, completion[-1]["content"], {"prompt": context}))
        out.where.append((row, which))

    for ex in loaded.examples:
        if isinstance(ex, PromptExample):
            raise DataError(str(path), ex.row, None, f"format '{loaded.format}' holds prompts only; there is no "
                            "response to score", "give pairwise (prompt, chosen, rejected) or prompt_completion rows")
        if isinstance(ex, PairExample):
            add(ex.prompt, ex.chosen, ex.row, "chosen")
            add(ex.prompt, ex.rejected, ex.row, "rejected")
        elif isinstance(ex, SFTExample):
            last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
            add(ex.messages[:last], ex.messages[last:last + 1], ex.row, "completion")
        else:
            add(ex.prompt, ex.completion, ex.row, "completion")
    return out


# --------------------------------------------------------------------------- calibrate and score


def _scorer(args: argparse.Namespace, **kwargs: Any) -> Any:
    from rlhflab.rewards.ensemble import EnsembleScorer
    from rlhflab.train.run import pick_device

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = str(pick_device(args.device))
    return EnsembleScorer.from_file(args.ensemble, args.batch_size, device, args.trust_remote_code, **kwargs)


def calibrate_ensemble(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    """Score the held-out responses, write the calibration into the ensemble JSON, return it."""
    import torch

    from rlhflab.rewards.ensemble import calibrate, read_ensemble_file, write_ensemble_file

    file = read_ensemble_file(args.ensemble)
    if not 0 < args.quantile <= 1:
        raise ConfigError(f"--quantile must be in (0, 1], got {args.quantile}")
    data = args.data or [str(file.resolve(p)) for p in file.data.get("heldout") or []]
    if not data:
        raise ConfigError(f"{file.path} records no held-out split; give the held-out responses with --data FILE")
    sets = [read_responses(p) for p in data]  # every row checked before any model loads
    scorer = _scorer(args)
    scores = torch.cat([scorer.member_scores(s.samples) for s in sets], dim=1)  # (M, N) raw, no offsets
    cal = {"data": data, **calibrate(scores, args.quantile)}
    file.data["calibration"] = cal
    write_ensemble_file(file.path, file.data)
    s = cal["spread"]
    console.print(f"calibrated on {s['n']} held-out responses of {', '.join(data)}")
    console.print(f"  member offsets (held-out means): {', '.join(f'{b:+.4f}' for b in cal['offsets'])}")
    console.print(f"  spread (std over members): mean {s['mean']:.4f}, median {s['median']:.4f}, max {s['max']:.4f}")
    console.print(f"  OOD threshold = q{args.quantile:g} of the held-out spreads = {cal['threshold']:.4f}; "
                  f"written to {file.path}")
    return cal


def cmd_calibrate(args: argparse.Namespace) -> int:
    calibrate_ensemble(args, _setup())
    return 0


def set_summary(name: str, path: str, std: Any, flags: Any, id_std: Any = None) -> dict[str, Any]:
    """One row of the score table: n, spread mean / median, flag rate (None without a threshold)
    and, for an OOD set, the AUROC of the spread against the in-distribution set."""
    from rlhflab.eval.stats import auroc

    row = {"set": name, "file": path, "n": int(std.numel()), "spread_mean": float(std.mean()),
           "spread_median": float(std.median()), "flag_rate": None if flags is None else float(flags.double().mean())}
    if id_std is not None:
        row["auroc"] = auroc(std, id_std)
    return row


def score_ensemble(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    """Score --data and every --ood file; write --out; return the summary."""
    import torch

    from rlhflab.rewards.ensemble import read_ensemble_file
    from rlhflab.sampling import write_jsonl_atomic

    read_ensemble_file(args.ensemble)
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise ConfigError(f"--out {args.out} exists; pass --overwrite to replace it")
    if args.threshold is not None and not args.threshold >= 0:
        raise ConfigError(f"--threshold must be >= 0, got {args.threshold}")
    sets = [("data", read_responses(p)) for p in args.data] + [("ood", read_responses(p)) for p in args.ood]
    scorer = _scorer(args, uncertainty_coef=args.uncertainty_coef, ood_threshold=args.threshold)
    results, rows, summary = [], [], []
    for name, r in sets:
        members = scorer.member_scores(r.samples)  # (M, N)
        results.append((name, r, members, scorer.combine(members)))
    id_std = torch.cat([s.parts["std"] for name, _, _, s in results if name == "data"])  # (N_data,)
    for name, r, members, s in results:
        flags = s.parts.get("ood")
        summary.append(set_summary(name, r.path, s.parts["std"], flags, id_std if name == "ood" else None))
        for j, (row, which) in enumerate(r.where):
            rows.append({"set": name, "file": r.path, "row": row, "response": which, "reward": float(s.values[j]),
                         "mean": float(s.parts["mean"][j]), "std": float(s.parts["std"][j]),
                         "ood": None if flags is None else bool(flags[j]), "members": members[:, j].tolist()})
    if args.out:
        write_jsonl_atomic(Path(args.out), rows)
    result = {"ensemble": args.ensemble, "threshold": scorer.ood_threshold, "sets": summary}
    _print_table(console, result)
    return result


def _print_table(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    t = result["threshold"]
    table = Table(title=f"ensemble spread (OOD threshold {'none' if t is None else f'{t:.4f}'})")
    for col in ("set", "file", "n", "spread mean", "spread median", "flag rate", "AUROC vs data"):
        table.add_column(col, justify="left" if col in ("set", "file") else "right")
    for s in result["sets"]:
        table.add_row(s["set"], s["file"], str(s["n"]), f"{s['spread_mean']:.4f}", f"{s['spread_median']:.4f}",
                      "-" if s["flag_rate"] is None else f"{s['flag_rate']:.1%}",
                      f"{s['auroc']:.3f}" if "auroc" in s else "-")
    console.print(table)


def cmd_score(args: argparse.Namespace) -> int:
    result = score_ensemble(args, _setup())
    print(json.dumps(result, indent=2))
    return 0


__all__ = ["VARY", "Plan", "Responses", "add_parser", "calibrate_ensemble", "heldout_split", "member_rows",
           "plan_members", "read_responses", "score_ensemble", "set_summary", "train_ensemble"]
