"""`rlhflab cai sl` and `rlhflab cai rl`: Constitutional AI data from a prompts file
(docs/constitutional.md; the stages themselves are in `rlhflab.feedback.constitutional`).

Everything the user gives (the constitution, the prompts, the output path, the numbers, the judge
template, the model folders) is checked before any model loads; a problem is a UserError (exit 2)
naming the file, row, principle or flag.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhflab.config_rl import check_sampling, cli_flag
from rlhflab.errors import ConfigError, DataError
from rlhflab.feedback.constitutional import CAI_PAIRWISE

# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CaiConfig:
    """Settings of `rlhflab cai sl` / `rlhflab cai rl`, checked by `validate` before anything loads."""

    stage: str
    """sl: critique and revise, write SFT rows; rl: sample pairs, judge them, write pairwise rows."""
    constitution: str
    """The constitution YAML file (docs/constitutional.md)."""
    model: str
    """The model that answers, critiques and revises (sl) or samples the pairs (rl): a local
    Hugging Face folder or `smollm2-135m`."""
    data: str
    """Prompts: any file `load_examples(..., "prompt")` reads; each prompt must end with a user turn."""
    out: str
    """The .jsonl file to write (atomically)."""
    revisions: int = 2
    """sl: critique-revision rounds per prompt, each with a freshly drawn principle."""
    k: int = 2
    """rl: responses sampled per prompt; every pair of them is judged (k (k - 1) / 2 pairs)."""
    max_new_tokens: int = 96
    """Longest reply (response, critique, revision), in tokens."""
    temperature: float = 0.7
    """Sampling temperature (sl: 0 = greedy allowed; rl: > 0, the k samples must differ)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    seed: int = 0
    """Seeds the principle draws and the sampling: equal settings give an equal file."""
    batch_size: int = 16
    """Prompts per chunk: each model call of a chunk is one batch; the progress bar moves per chunk."""
    judge_model: str | None = None
    """rl: the feedback model; None = `model` (the paper's setting: the model labels its own samples)."""
    judge_template: str | None = None
    """rl: a pairwise judge template (file or text) with {principle}, {prompt}, {response_a},
    {response_b}; None = constitutional.CAI_PAIRWISE."""
    rationale: bool = False
    """rl: let the judge write a short rationale before its verdict (the paper's chain-of-thought feedback)."""
    keep_inconsistent: bool = False
    """rl: also write pairs whose verdict flips with the order (labelled by the order-averaged
    probability, `consistent: false`); default: skip them."""
    judge_batch_size: int = 8
    """rl: judge prompts per forward pass."""
    overwrite: bool = False
    """Replace `out` when it exists."""


def validate(cfg: CaiConfig) -> Any:
    """Check the settings, the constitution, the judge templates and the output path (the prompts
    are read in `read_prompts`). Returns the constitution."""
    from rlhflab.feedback.constitutional import load_constitution
    from rlhflab.sampling import check_out_path

    if cfg.stage not in ("sl", "rl"):
        raise ConfigError(f"unknown stage '{cfg.stage}'; expected sl or rl")
    constitution = load_constitution(cfg.constitution, cfg.stage)
    if cfg.stage == "sl" and cfg.revisions < 1:
        raise ConfigError(f"--revisions must be at least 1, got {cfg.revisions}")
    if cfg.stage == "rl" and cfg.k < 2:
        raise ConfigError(f"--k must be at least 2 (responses compared per prompt), got {cfg.k}")
    if cfg.judge_batch_size < 1:
        raise ConfigError("--judge-batch-size must be at least 1")
    check_sampling(cli_flag, cfg.max_new_tokens, cfg.batch_size, cfg.temperature, cfg.top_p, greedy_ok=cfg.stage == "sl",
                   why="for rl: the k greedy samples of a prompt would be identical")
    if cfg.stage == "rl":
        for j in judge_configs(cfg, constitution).values():
            from rlhflab.config_feedback import check_judge

            check_judge("--judge-template", j)
    check_out_path(cfg.out, cfg.data, cfg.overwrite)
    return constitution


def judge_configs(cfg: CaiConfig, constitution: Any) -> dict[str, Any]:
    """One pairwise JudgeConfig per principle: the template with its comparison question."""
    from rlhflab.config_feedback import JudgeConfig
    from rlhflab.feedback.constitutional import judge_template
    from rlhflab.rewards.judge_templates import load_template

    text = CAI_PAIRWISE
    if cfg.judge_template is not None:
        text = load_template(cfg.judge_template, "pairwise")
        if "{principle}" not in text:
            raise ConfigError(f"--judge-template {cfg.judge_template}: the template lacks {{principle}}, where the "
                              "principle's comparison question goes")
    return {p.name: JudgeConfig(model=cfg.judge_model or cfg.model, mode="pairwise", template=judge_template(p, text),
                                rationale=cfg.rationale, swap=True, inconsistent="tie",
                                batch_size=cfg.judge_batch_size)
            for p in constitution.principles}


def read_prompts(path: str) -> tuple[list[list[dict[str, str]]], list[Any], list[str]]:
    """(prompt messages, the prompts as the file had them, warnings); every prompt must end with
    a user turn (the model answers it)."""
    from rlhflab.data import examples_from_records, read_records

    records = read_records(path)
    loaded = examples_from_records(records, path, "prompt", "auto")
    original = {rec.row: rec.data.get("prompt") for rec in records}
    prompts, originals = [], []
    for ex in loaded.examples:
        turns = [m for m in ex.prompt if m["role"] != "system"]
        if not turns or turns[-1]["role"] != "user":
            raise DataError(path, ex.row, "prompt", "the prompt must end with a user turn (the model answers it), "
                                                    f"not {turns[-1]['role'] if turns else 'only system messages'}")
        prompts.append(ex.prompt)
        originals.append(original.get(ex.row) if original.get(ex.row) is not None else ex.prompt)
    return prompts, originals, loaded.warnings


# --------------------------------------------------------------------------- running


@dataclass
class CaiSummary:
    """What `run_cai` did (printed by the CLI)."""

    counts: Any
    """constitutional.SLCounts or RLCounts."""
    seconds: float
    """Wall-clock time of the whole command (loading included)."""
    generate_seconds: float
    """Time spent in the stage itself (generation and judging)."""


def run_cai(cfg: CaiConfig, console: Any) -> CaiSummary:
    """Validate everything, load the model(s), run the stage over the prompts with a progress bar,
    write the rows atomically."""
    import torch

    from rlhflab.feedback import constitutional as cai
    from rlhflab.feedback.generate import ChatModel
    from rlhflab.models import EMBEDDED, resolve_model_path
    from rlhflab.sampling import write_jsonl_atomic

    t0 = time.perf_counter()
    constitution = validate(cfg)
    prompts, originals, warnings = read_prompts(cfg.data)
    for name in {cfg.model, cfg.judge_model or cfg.model} if cfg.stage == "rl" else {cfg.model}:
        if name != EMBEDDED:
            resolve_model_path(name)  # a missing folder is reported before anything loads
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    chat = ChatModel.load(cfg.model, device, batch_size=max(cfg.batch_size * (cfg.k if cfg.stage == "rl" else 1), 1))
    sampling = cai.Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed)
    judges = _judges(cfg, constitution, chat, device) if cfg.stage == "rl" else {}
    t1 = time.perf_counter()
    with _progress(console, f"cai {cfg.stage}: prompts", len(prompts)) as advance:
        if cfg.stage == "sl":
            rows, counts = cai.sl_rows(chat, constitution, prompts, originals, cfg.revisions, sampling,
                                       cfg.batch_size, advance)
        else:
            rows, counts = cai.rl_rows(chat, judges, constitution, prompts, originals, cfg.k, sampling,
                                       cfg.keep_inconsistent, cfg.batch_size, advance)
    t2 = time.perf_counter()
    if not rows:
        raise ConfigError(_nothing(cfg, counts))
    write_jsonl_atomic(Path(cfg.out), rows)
    return CaiSummary(counts, time.perf_counter() - t0, t2 - t1)


def _judges(cfg: CaiConfig, constitution: Any, chat: Any, device: str) -> dict[str, Any]:
    """One Judge per principle sharing one loaded model (the policy's own, when the judge is it)."""
    from rlhflab.rewards.judge import Judge

    judges: dict[str, Any] = {}
    first = None
    for name, jc in judge_configs(cfg, constitution).items():
        if first is None:
            first = judges[name] = Judge.reusing(jc, device, chat, cfg.model)
        else:
            judges[name] = Judge(jc, device, model=first.model, tokenizer=first.tokenizer, identity=first.identity)
    return judges


class _progress:
    """A rich progress bar over prompts; the context value is `advance(k)`."""

    def __init__(self, console: Any, label: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=console, transient=False)
        self.task = self.bar.add_task(label, total=total)

    def __enter__(self):
        self.bar.__enter__()
        return lambda k: self.bar.advance(self.task, k)

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)


def _nothing(cfg: CaiConfig, counts: Any) -> str:
    if cfg.stage == "sl":
        return f"no row to write: every response of every prompt was empty; {cfg.out} was not written"
    return (f"no pair to write: of {counts.pairs} judged pairs, {counts.ties} were ties and {counts.inconsistent} "
            f"flipped with the order ({counts.skipped_same} pairs of equal or empty samples were not judged); "
            f"{cfg.out} was not written (raise --k, use a stronger --judge-model, or pass --keep-inconsistent)")


def print_summary(s: CaiSummary, cfg: CaiConfig, console: Any) -> None:
    c = s.counts
    per = ", ".join(f"{k} {v}" for k, v in sorted(c.principles.items())) or "none"
    if cfg.stage == "sl":
        console.print(f"[bold]rlhflab cai sl[/]: {c.prompts} prompts, {cfg.revisions} revision rounds each; "
                      f"{c.changed} of {c.rows} final responses differ from the initial one; "
                      f"{c.empty_revisions} empty revisions kept the previous response; "
                      f"{c.dropped_empty} prompts dropped (all responses empty)")
        console.print(f"rounds per principle: {per}")
        console.print(f"wrote {c.rows} SFT rows to {cfg.out} in {s.seconds:.1f} s "
                      f"({s.generate_seconds:.1f} s generating)")
        return
    kept = "kept" if cfg.keep_inconsistent else "skipped"
    console.print(f"[bold]rlhflab cai rl[/]: {c.prompts} prompts, {c.samples} samples, {c.pairs} pairs judged "
                  f"({c.skipped_same} pairs of equal or empty samples not judged); {c.ties} ties, "
                  f"{c.inconsistent} inconsistent ({kept}); judge position bias {c.position_bias:+.3f}")
    console.print(f"pairs per principle: {per}")
    console.print(f"wrote {c.rows} pairs to {cfg.out} in {s.seconds:.1f} s ({s.generate_seconds:.1f} s sampling "
                  "and judging)")


# --------------------------------------------------------------------------- the command line


def cmd_cai(args: argparse.Namespace) -> int:
    from rlhflab.cli import _console, _quiet_libraries

    rl = args.cai_command == "rl"
    cfg = CaiConfig(stage=args.cai_command, constitution=args.constitution, model=args.model, data=args.data,
                    out=args.out, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature if args.temperature is not None else (1.0 if rl else 0.7),
                    top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, overwrite=args.overwrite,
                    **({"k": args.k, "judge_model": args.judge_model, "judge_template": args.judge_template,
                        "rationale": args.rationale, "keep_inconsistent": args.keep_inconsistent,
                        "judge_batch_size": args.judge_batch_size} if rl else {"revisions": args.revisions}))
    console = _console()
    _quiet_libraries()
    print_summary(run_cai(cfg, console), cfg, console)
    return 0


def add_parser(sub: Any) -> None:
    """Register `rlhflab cai sl|rl` on the top-level subparsers."""
    p = sub.add_parser("cai", help="Constitutional AI data: critique-and-revise SFT rows (sl) or AI preference "
                                   "pairs judged by principle (rl) (docs/constitutional.md)")
    csub = p.add_subparsers(dest="cai_command", required=True)
    for stage, help_text in (("sl", "per prompt: respond, then critique and revise against drawn principles; "
                                    "writes prompt_completion rows with the trace"),
                             ("rl", "per prompt: sample k responses, judge every pair by a drawn principle in both "
                                    "orders; writes pairwise rows")):
        q = csub.add_parser(stage, help=help_text)
        q.add_argument("--constitution", required=True, help="the constitution YAML file")
        q.add_argument("--model", required=True, help="a local Hugging Face folder or smollm2-135m")
        q.add_argument("--data", required=True, help="prompts (JSONL, JSON, Parquet, CSV, datasets folder)")
        q.add_argument("--out", required=True, help="the .jsonl file to write")
        q.add_argument("--max-new-tokens", type=int, default=96)
        q.add_argument("--temperature", type=float, default=None,
                       help="sampling temperature (default 0.7 for sl, 1.0 for rl)")
        q.add_argument("--top-p", type=float, default=1.0)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--batch-size", type=int, default=16, help="prompts per chunk (one batch per model call)")
        q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
        if stage == "sl":
            q.add_argument("--revisions", type=int, default=2, help="critique-revision rounds per prompt (default 2)")
        else:
            q.add_argument("--k", type=int, default=2, help="responses per prompt; every pair is judged (default 2)")
            q.add_argument("--judge-model", default=None, help="the feedback model (default: --model)")
            q.add_argument("--judge-template", default=None,
                           help="a pairwise judge template file with {principle} (default: the built-in)")
            q.add_argument("--rationale", action="store_true", help="the judge writes a rationale before its verdict")
            q.add_argument("--keep-inconsistent", action="store_true",
                           help="also write pairs whose verdict flips with the order (consistent: false)")
            q.add_argument("--judge-batch-size", type=int, default=8)
        q.set_defaults(func=cmd_cai)
