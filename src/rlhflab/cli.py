"""`rlhflab` command line.

Exit codes: 0 success; 2 a user error (config, data, paths) with one clear message and no
traceback; 1 an internal error or a halted run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rlhflab import __version__
from rlhflab.errors import UserError


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _quiet_libraries() -> None:
    """rlhflab shows its own progress; silence per-load bars and known-harmless warnings of dependencies."""
    import warnings

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cmd_train(args: argparse.Namespace) -> int:
    from rlhflab.config import load_config
    from rlhflab.train.run import run

    cfg = load_config(args.config, args.overrides)
    _quiet_libraries()
    run(cfg, _console())
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    from rlhflab.preflight import run_preflight

    _quiet_libraries()
    return run_preflight(args.config, args.overrides)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from rlhflab.quickstart import quickstart

    _quiet_libraries()
    kwargs = {"steps": args.steps} if args.steps is not None else {}
    quickstart(output_dir=args.output_dir, model=args.model, console=_console(), **kwargs)
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rlhflab.data.inspect import run_inspect

    run_inspect(args.file, format=args.format, model=args.model, console=Console())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rlhflab.report.html import write_report

    print(write_report(args.runs, args.out))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from rlhflab.merge import average_models

    average_models(args.average, args.out, weights=args.weights, overwrite=args.overwrite, console=_console())
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from rlhflab.errors import ConfigError
    from rlhflab.sampling import SampleConfig, load_rewards_config, parse_scorer_spec, print_summary, run_sample

    rewards = tuple(parse_scorer_spec(s) for s in args.reward or [])
    if args.rewards_config:
        rewards += load_rewards_config(args.rewards_config)
    if not rewards:
        raise ConfigError("give the reward: --reward SPEC (e.g. math, python:my_rewards.py:score, "
                          "reward_model:runs/rm/final) or --rewards-config FILE.yaml")
    if args.mode != "rso" and (args.k is not None or args.beta is not None):
        raise ConfigError("--k and --beta apply to --mode rso only")
    if args.mode != "best_of_n" and args.min_reward is not None:
        raise ConfigError("--min-reward applies to --mode best_of_n only")
    rso = {k: v for k, v in (("k", args.k), ("beta", args.beta)) if v is not None}
    cfg = SampleConfig(model=args.model, data=args.data, out=args.out, rewards=rewards, mode=args.mode, n=args.n,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       seed=args.seed, batch_size=args.batch_size, min_reward=args.min_reward,
                       overwrite=args.overwrite, **rso)
    console = _console()
    _quiet_libraries()
    print_summary(run_sample(cfg, console), cfg, console)
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from rlhflab.feedback.label import LabelConfig, print_summary, run_label

    judge = _judge_from_args(args, args.model, args.judge_mode)
    cfg = LabelConfig(model=args.model, data=args.data, out=args.out, judge=judge, k=args.k,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                      seed=args.seed, min_gap=args.min_gap, batch_size=args.batch_size, limit=args.limit,
                      overwrite=args.overwrite)
    console = _console()
    _quiet_libraries()
    print_summary(run_label(cfg, console), cfg, console)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rlhflab.eval.compare import CompareConfig, print_result, run_compare

    judge = _judge_from_args(args, args.model_b, None)
    cfg = CompareConfig(model_a=args.model_a, model_b=args.model_b, data=args.data, judge=judge, out=args.out,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                        limit=args.limit, batch_size=args.batch_size)
    console = _console()
    _quiet_libraries()
    print_result(run_compare(cfg, console), console)
    return 0


def _judge_from_args(args: argparse.Namespace, default_model: str, mode: str | None) -> Any:
    """The JudgeConfig of the flags `_add_judge_args` defines (over --judge-config, if given)."""
    from rlhflab.rewards.judge_config import judge_from_cli

    return judge_from_cli(args.judge_config, default_model, model=args.judge_model, mode=mode,
                          rationale=args.rationale, swap=False if args.no_swap else None, cache=args.judge_cache)


def _add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int, temperature: float, batch_size: int,
                         top_p: bool = True, temperature_help: str | None = None,
                         batch_help: str | None = "sequences generated together") -> None:
    """The sampling flags the generating commands share, with each command's defaults."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=temperature, help=temperature_help)
    if top_p:
        p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)


def _add_judge_args(p: argparse.ArgumentParser, default_model: str) -> None:
    """The judge flags of the commands that judge (read by `judge_from_cli`)."""
    p.add_argument("--judge-model", default=None, help=f"the judge model (default: {default_model})")
    p.add_argument("--judge-config", metavar="FILE.yaml", default=None,
                   help="judge settings as YAML (any field of the judge section: mode, template, scale, labels, ...)")
    p.add_argument("--rationale", action="store_true", default=None, help="the judge writes a rationale first")
    p.add_argument("--no-swap", action="store_true", help="pairwise: judge one order only (no position check)")
    p.add_argument("--judge-cache", metavar="FILE.jsonl", default=None, help="cache verdicts across runs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhflab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rlhflab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with a YAML config: rlhflab train CONFIG.yaml [key=value ...]")
    p.add_argument("config", help="YAML config file (see examples/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as optim.lr=1e-5 max_steps=20")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("preflight", help="check a run before it starts (config, data, process group, bandwidth, devices, "
                                         "memory plan, disk): rlhflab preflight CONFIG.yaml [key=value ...], alone or "
                                         "under torchrun like the run (docs/distributed.md)")
    p.add_argument("config", help="the run's YAML config file")
    p.add_argument("overrides", nargs="*", help="the run's dotted overrides such as micro_batch_size=4")
    p.set_defaults(func=cmd_preflight)

    p = sub.add_parser("quickstart", help="GRPO + LoRA on the embedded SmolLM2-135M-Instruct: two-digit addition, "
                                          "held-out accuracy before and after (CPU, under 10 minutes)")
    p.add_argument("--output-dir", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the documented setting)")
    p.add_argument("--model", default="smollm2-135m")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("data", help="data tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("inspect", help="detected format, counts, lengths, one example with its loss mask")
    q.add_argument("file")
    q.add_argument("--format", default="auto")
    q.add_argument("--model", default=None, help="tokenize with this model's tokenizer (e.g. smollm2-135m)")
    q.set_defaults(func=cmd_data_inspect)

    p = sub.add_parser("merge", help="average models of rounds or checkpoints: rlhflab merge --average A B ... --out DIR")
    p.add_argument("--average", nargs="+", required=True, metavar="MODEL",
                   help="Hugging Face folders (safetensors), rlhflab run directories or checkpoints/step-N folders")
    p.add_argument("--out", required=True, help="new folder for the averaged model")
    p.add_argument("--weights", nargs="+", default=None, metavar="W",
                   help="one weight per model, >= 0, normalized to sum to 1 (default: equal)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("sample", help="sample n completions per prompt, score them, write best-of-n SFT rows or RSO "
                                      "preference pairs (docs/sampling.md)")
    p.add_argument("--model", required=True, help="the policy: a local Hugging Face folder or smollm2-135m")
    p.add_argument("--data", required=True, help="prompts (JSONL, JSON, Parquet, CSV, datasets folder)")
    p.add_argument("--out", required=True, help="the .jsonl file to write")
    p.add_argument("--reward", action="append", metavar="SPEC",
                   help="a scorer, repeatable: math | math:answer_field=solution | python:file.py:fn | "
                        "reward_model:/path/to/rm | code (key=value options after a comma)")
    p.add_argument("--rewards-config", metavar="FILE.yaml", help="scorers as a YAML list (any scorer type, rules too)")
    p.add_argument("--mode", required=True, choices=("best_of_n", "rso"))
    p.add_argument("--n", type=int, default=8, help="samples per prompt (default 8)")
    p.add_argument("--k", type=int, default=None, help="rso: samples accepted per prompt (default 4)")
    p.add_argument("--beta", type=float, default=None, help="rso: beta of pi* ~ pi exp(r/beta) (default 0.5)")
    _add_generation_args(p, max_new_tokens=64, temperature=1.0, batch_size=64)
    p.add_argument("--min-reward", type=float, default=None, help="best_of_n: drop prompts whose best reward is lower")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_sample)

    from rlhflab.rbr_cli import add_parser as add_rbr_parser

    add_rbr_parser(sub)  # rlhflab rbr fit

    from rlhflab.feedback.constitutional_cli import add_parser as add_cai_parser

    add_cai_parser(sub)  # rlhflab cai sl | rl

    p = sub.add_parser("label", help="sample k responses per prompt, judge them with an LLM judge, write preference "
                                     "pairs (docs/judges.md)")
    p.add_argument("--model", required=True, help="the policy: a local Hugging Face folder or smollm2-135m")
    p.add_argument("--data", required=True, help="prompts (JSONL, JSON, Parquet, CSV, datasets folder)")
    p.add_argument("--out", required=True, help="the pairwise .jsonl file to write")
    _add_judge_args(p, "the policy's own")
    p.add_argument("--judge-mode", choices=("pointwise", "pairwise"), default=None,
                   help="pointwise scores or pairwise comparisons (default: pairwise)")
    p.add_argument("--k", type=int, default=4, help="responses per prompt (default 4)")
    p.add_argument("--min-gap", type=float, default=0.0, help="keep pairs the judge separates by at least this")
    _add_generation_args(p, max_new_tokens=128, temperature=1.0, batch_size=32)
    p.add_argument("--limit", type=int, default=None, help="label only the first N prompts")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("compare", help="an LLM judge's win rate of model A over model B on prompts, with a 95%% "
                                       "bootstrap interval (docs/judges.md)")
    p.add_argument("--model-a", required=True, help="the candidate model (folder or smollm2-135m)")
    p.add_argument("--model-b", required=True, help="the baseline model")
    p.add_argument("--data", required=True, help="held-out prompts")
    p.add_argument("--out", required=True, help="folder for compare.json and verdicts.jsonl")
    _add_judge_args(p, "model B")
    _add_generation_args(p, max_new_tokens=128, temperature=0.0, batch_size=32, top_p=False,
                         temperature_help="0 = greedy answers (default)", batch_help=None)
    p.add_argument("--limit", type=int, default=None, help="the first N prompts only")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="a self-contained HTML report of a run, or of several runs on shared plots "
                                      "(docs/report.md)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (the output_dir of rlhflab train)")
    p.add_argument("--out", default=None, metavar="FILE.html",
                   help="where to write it (default: RUN_DIR/report.html for one run; for several, "
                        "compare_<run>_vs_<run>.html in their common parent folder)")
    p.set_defaults(func=cmd_report)

    from rlhflab.eval.eval_cli import add_parser as add_eval_parser

    add_eval_parser(sub)  # rlhflab eval MODEL ... (docs/evaluation.md)

    from rlhflab.ensemble_cli import add_parser as add_ensemble_parser

    add_ensemble_parser(sub)  # rlhflab ensemble train | calibrate | score
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"{_rank_prefix()}error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_rank_prefix()}interrupted; the newest checkpoint is intact", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        from rlhflab.train.distributed import CollectiveTimeout
        from rlhflab.train.loop import NonFiniteError

        if isinstance(e, (NonFiniteError, CollectiveTimeout)):  # the message says it all (rank and phase included)
            print(f"{_rank_prefix()}error: {e}", file=sys.stderr)
            return 1
        raise


def _rank_prefix() -> str:
    """'rank R: ' in a multi-process run (torchrun / accelerate), so each worker's message is attributed."""
    import os

    return f"rank {os.environ['RANK']}: " if os.environ.get("RANK") and os.environ.get("WORLD_SIZE", "1") != "1" else ""


if __name__ == "__main__":
    sys.exit(main())
