"""`rlhflab eval MODEL [MODEL ...]`: generate on held-out prompts and measure (docs/evaluation.md).

    rlhflab eval runs/quickstart
    rlhflab eval runs/quickstart/final --data heldout.jsonl --reward math --max-new-tokens 16 --reference smollm2-135m

A MODEL is a Hugging Face folder, the embedded `smollm2-135m`, or a run directory (its final/
model, evaluated by default with the run's eval data, chat template, rewards and generation
length, against the run's reference, with results in RUN_DIR/eval/). This module imports nothing
heavy at load time.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlhflab.config_eval import EvalConfig
from rlhflab.errors import ConfigError, UserError

TABLE_METRICS = ("length/mean", "length/truncated", "kl", "kl/k1")


def add_parser(sub: Any) -> None:
    from rlhflab.cli import _add_judge_args

    p = sub.add_parser("eval", help="generate on held-out prompts and measure: rewards, accuracy, lengths, KL and "
                                    "win rate against a reference (docs/evaluation.md)")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="Hugging Face folders, smollm2-135m, or run directories (their final/ model and settings)")
    p.add_argument("--data", action="append", metavar="FILE",
                   help="prompts (a `prompt` column plus what the scorers read); default: a run directory's data.eval")
    p.add_argument("--reward", action="append", metavar="SPEC",
                   help="a scorer, repeatable: math | code | python:file.py:fn | reward_model:/path (options after a "
                        "comma, as in rlhflab sample); default: a run directory's rewards")
    p.add_argument("--rewards-config", metavar="FILE.yaml", help="scorers as a YAML list (any scorer type)")
    p.add_argument("--reference", metavar="MODEL", default=None,
                   help="the model KL and win rates are measured against, or 'none' (default: a run directory's "
                        "ref_model or initial model; otherwise none)")
    _add_judge_args(p, "the reference")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's generation length, else 128")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--n", type=int, default=None, help="completions per prompt (default 1; > 1 needs --temperature)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", metavar="TEXT", help="a stop string, repeatable")
    p.add_argument("--batch-size", type=int, default=None, help="sequences generated together (default: the run's, else 64)")
    p.add_argument("--limit", type=int, default=None, help="the first N prompts only")
    p.add_argument("--no-kl", action="store_true", help="skip the KL to the reference")
    p.add_argument("--kl-batch-size", type=int, default=None, help="completions per KL forward pass (default 16)")
    p.add_argument("--chat-template", default=None, help="a Jinja chat template (file or text) for every model")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model folders to run their own code")
    p.add_argument("--out", default=None, help="folder for eval.json and generations.jsonl (default: RUN_DIR/eval "
                                               "for a run directory; otherwise nothing is written)")
    p.set_defaults(func=cmd_eval)


# --------------------------------------------------------------------------- models and run directories


def is_run_dir(path: Path) -> bool:
    """A training run directory: config.yaml and no config.json (a model folder has config.json)."""
    return path.is_dir() and (path / "config.yaml").is_file() and not (path / "config.json").is_file()


def load_run(path: Path) -> Any:
    """The RunConfig of a run directory."""
    from rlhflab.config import load_config

    return load_config(path / "config.yaml")


def model_folder(name: str) -> str:
    """The model folder to load for `name`: a run directory's final/, else `name` itself."""
    path = Path(name)
    if not is_run_dir(path):
        return name
    final = path / "final"
    if not (final / "config.json").is_file():
        raise UserError(f"run directory {name} has no final/ model (the run has not finished); evaluate a "
                        "finished run, or its best/ folder, or a model folder")
    return str(final)


# --------------------------------------------------------------------------- settings


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from rlhflab.sampling import load_rewards_config, parse_scorer_spec

    given = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k", "n", "seed",
                                           "batch_size", "limit", "kl_batch_size") if getattr(args, k) is not None}
    if args.data:
        given["data"] = args.data[0] if len(args.data) == 1 else tuple(args.data)
    if args.stop:
        given["stop"] = tuple(args.stop)
    if args.no_kl:
        given["kl"] = False
    rewards = tuple(parse_scorer_spec(s) for s in args.reward or [])
    if args.rewards_config:
        rewards += load_rewards_config(args.rewards_config)
    if rewards:
        given["rewards"] = rewards
    return given


def _judge(args: argparse.Namespace, reference: str | None) -> Any:
    from rlhflab.cli import _judge_from_args

    if args.judge_model is None and args.judge_config is None:
        if args.rationale or args.no_swap or args.judge_cache:
            raise ConfigError("--rationale, --no-swap and --judge-cache need a judge: --judge-model or --judge-config")
        return None
    if reference is None:
        raise ConfigError("a judge decides win rates against the reference; give --reference MODEL")
    return _judge_from_args(args, reference, None)


def settings_from_args(args: argparse.Namespace) -> tuple[EvalConfig, Any, tuple[str, str] | None, Path | None, bool]:
    """(resolved EvalConfig, DataConfig, reference (name, folder) or None, out folder or None,
    trust_remote_code), all checked before any model loads."""
    from rlhflab.config import DataConfig
    from rlhflab.config_eval import check_eval, resolve_defaults, resolve_for_run

    runs = [Path(m) for m in args.models if is_run_dir(Path(m))]
    run = load_run(runs[0]) if runs else None
    ev = EvalConfig()
    if run is not None:
        ev = resolve_for_run(run.evaluation or EvalConfig(), run)
    ev = resolve_defaults(replace(ev, **_overrides(args)))
    reference = _reference(args.reference, run)
    ev = replace(ev, judge=_judge(args, reference[1] if reference else None))
    check_eval(ev, "--")
    if ev.data is None:
        raise ConfigError("--data is required: a prompt file (or give a run directory, whose data.eval is used)")
    data_cfg = run.data if run is not None else DataConfig()
    if args.chat_template:
        data_cfg = replace(data_cfg, chat_template=args.chat_template)
    out = Path(args.out) if args.out else (runs[0] / "eval" if runs else None)
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    trust = bool(args.trust_remote_code or (run is not None and run.trust_remote_code))
    return ev, data_cfg, reference, out, trust


def _reference(flag: str | None, run: Any) -> tuple[str, str] | None:
    if flag is not None:
        return None if flag.lower() == "none" else (flag, model_folder(flag))
    if run is None:
        return None
    name = run.ref_model or run.model
    return name, model_folder(name)


# --------------------------------------------------------------------------- the command


def cmd_eval(args: argparse.Namespace) -> int:
    from rlhflab.cli import _console, _quiet_libraries
    from rlhflab.eval.runner import run_eval, write_outputs

    models = [(name, model_folder(name)) for name in args.models]
    ev, data_cfg, reference, out, trust = settings_from_args(args)
    console = _console()
    _quiet_libraries()
    result = run_eval(models, reference, ev, data_cfg, console, trust)
    print_table(result, console)
    for note in result.notes:
        console.print(f"note: {note}")
    if out is not None:
        write_outputs(result, out, {"chat_template": data_cfg.chat_template})
        console.print(f"wrote {out / 'eval.json'} and {out / 'generations.jsonl'}")
    else:
        console.print("nothing written (pass --out DIR for eval.json and generations.jsonl)")
    return 0


def table_columns(result: Any) -> list[str]:
    """The metrics shown in the console table (all of them are in eval.json)."""
    from rlhflab.rewards import scorer_names

    names = scorer_names(result.settings.rewards)
    runs = ([result.reference] if result.reference else []) + result.models
    cols = (["reward"] if len(names) > 1 else []) + names + ["accuracy"]
    cols += [k for k in runs[0].result.metrics if k.startswith(("accuracy/", "pass@"))]
    return [c for c in cols + list(TABLE_METRICS) if any(c in m.result.metrics for m in runs)]


def print_table(result: Any, console: Any) -> None:
    """One column per model (the reference first), one row per metric."""
    from rich.table import Table

    s = result.settings
    how = "greedy" if s.temperature == 0 else f"T={s.temperature:g}, top_p={s.top_p:g}, seed {s.seed}"
    t = Table(title=f"{len(result.kept)} prompts x {s.n} ({how}, max {s.max_new_tokens} new tokens) from "
                    f"{result.prompts.path}")
    runs = ([result.reference] if result.reference else []) + result.models
    t.add_column("metric")
    for m in runs:
        t.add_column(f"{m.name}\n(reference)" if m is result.reference else m.name, justify="right")
    for c in table_columns(result):
        t.add_row(c, *[_fmt(m.result.metrics.get(c)) for m in runs])
    if any(m.win for m in result.models):
        t.add_row("win rate [95% CI]", *[f"{m.win['win_rate']:.3f} [{m.win['ci_low']:.3f}, {m.win['ci_high']:.3f}]"
                                         if m.win else "" for m in runs])
        t.add_row("wins / losses / ties", *[f"{m.win['wins']} / {m.win['losses']} / {m.win['ties']}" if m.win else ""
                                            for m in runs])
    console.print(t)
    for m in result.models:
        if m.win:
            console.print(f"win rate of {m.name} over the reference by {m.win['by']}")


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
