"""The self-rewarding loop (Yuan et al. 2024, arXiv 2401.10020), optionally with Con-J judge
training (Ye et al. 2024, arXiv 2410.03742); docs/self_rewarding.md.

    M_0 = the base model (`model`)
    for t = 1..k:
        prompts_t   = the iteration's slice of a seeded permutation of data.train
        y_1..y_N    ~ M_{t-1}(. | x)                          for each x in prompts_t
        r(x, y_j)   = E_{s ~ M_{t-1}(judge prompt(x, y_j))}[s]  (the policy judges itself, constrained to 0..5)
        pairs_t     = {(x, argmax_j r, argmin_j r) : max r - min r >= max(min_gap, > 0)}
                      (+ Con-J judge-training pairs, when con_j is on)
        M_t         = DPO(init = M_{t-1}, reference = M_{t-1}, data = pairs_t, steps_per_iteration steps)

Each iteration t keeps <output_dir>/iteration_t/: pairs.jsonl (the DPO data), con_j.jsonl (every
Con-J row built), judge.json (counts, judge scores, agreements, Con-J counts, the DPO step's
numbers) and the DPO run directory itself (config.yaml, metrics.jsonl, checkpoints/, final/ = M_t).
<output_dir>/self_rewarding.json sums up all iterations. `resume=true` skips iterations whose
final/ and judge.json exist and continues a DPO run whose pairs were already written.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rlhflab.atomic import write_text_atomic
from rlhflab.config import RunConfig, dump_config, validate
from rlhflab.errors import DataError, UserError

Messages = list[dict[str, str]]


# --------------------------------------------------------------------------- plan (no model)


def iteration_prompts(n: int, per_iteration: int | None, iteration: int, seed: int) -> list[int]:
    """Indices of iteration `iteration`'s (1-based) prompts among n: consecutive slices of one
    permutation seeded by `seed`, so iterations see fresh prompts while they last (then wrap)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    m = n if per_iteration is None else min(per_iteration, n)
    start = (iteration - 1) * m
    return [order[(start + j) % n] for j in range(m)]


def iteration_config(cfg: RunConfig, iteration: int, policy: str, resume: bool = False) -> RunConfig:
    """The DPO run of one iteration: the current policy is both the initial weights and the
    reference; the data is the iteration's pairs; everything else (optim, lora, seed, batch sizes,
    lengths) comes from the self-rewarding config."""
    sr = cfg.self_rewarding
    d = iteration_dir(cfg, iteration)
    data = replace(cfg.data, train=str(d / "pairs.jsonl"), eval=None, eval_fraction=0.0, format="auto")
    return replace(cfg, algorithm="dpo", model=policy, ref_model=policy, data=data, output_dir=str(d),
                   max_steps=sr.steps_per_iteration or cfg.max_steps, dpo=sr.dpo, self_rewarding=None,
                   resume=resume, overwrite=not resume)


def iteration_dir(cfg: RunConfig, iteration: int) -> Path:
    return Path(cfg.output_dir) / f"iteration_{iteration}"


def _read_prompts(cfg: RunConfig, console: Any) -> list[Any]:
    from rlhflab.data.load import concat_loaded, load_files

    loaded = concat_loaded(load_files(cfg.data.train, "prompt", cfg.data.format))
    for w in loaded.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    return loaded.examples


def _check_gold_columns(cfg: RunConfig, prompts: list[Any]) -> None:
    from rlhflab.rewards import required_columns

    for column, scorers in required_columns(cfg.self_rewarding.gold).items():
        for ex in prompts:
            if column not in ex.extra:
                raise DataError(str(ex.source or cfg.data.train), ex.row, column,
                                f"self_rewarding.gold scorer(s) {scorers} read the column '{column}', which this row lacks")


def _prepare_out_dir(cfg: RunConfig) -> Path:
    """Refuse to clobber an earlier loop unless resume or overwrite is set; overwrite clears it."""
    out = Path(cfg.output_dir)
    old = sorted(out.glob("iteration_*")) + [p for p in [out / "self_rewarding.json"] if p.exists()]
    if old and not cfg.resume:
        if not cfg.overwrite:
            raise UserError(f"output_dir '{out}' already holds a self-rewarding run. Pass resume=true to continue "
                            "it, overwrite=true to start over there, or choose another output_dir.")
        for p in old:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _done(d: Path) -> bool:
    return (d / "final").is_dir() and (d / "judge.json").is_file()


def _labeled(d: Path) -> bool:
    return (d / "pairs.jsonl").is_file() and (d / "judge.json").is_file()


# --------------------------------------------------------------------------- the loop


def run_self_rewarding(cfg: RunConfig, console: Any) -> Any:
    """Validate everything, then run the iterations; returns a train.run.RunResult whose
    final_dir is the last iteration's policy and whose history holds every DPO step (with its
    `iteration`)."""
    from rlhflab.algorithms import get_algorithm
    from rlhflab.models import resolve_model_path
    from rlhflab.train.run import RunResult

    t0 = time.perf_counter()
    sr = cfg.self_rewarding
    prompts = _read_prompts(cfg, console)
    _check_gold_columns(cfg, prompts)
    first = iteration_config(cfg, 1, cfg.model)
    validate(first)
    get_algorithm(first).batch_plan()  # a bad batch plan fails now, not after the first labeling
    resolve_model_path(cfg.model)
    out = _prepare_out_dir(cfg)
    dump_config(cfg, out / "config.yaml")
    gold = _build_gold(cfg)
    records: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    policy = cfg.model
    for i in range(1, sr.iterations + 1):
        d = iteration_dir(cfg, i)
        console.rule(f"[bold]self-rewarding iteration {i}/{sr.iterations}[/]: policy {policy}")
        if cfg.resume and _done(d):
            stats = json.loads((d / "judge.json").read_text(encoding="utf-8"))
            console.print(f"resume: iteration {i} is complete ({d / 'final'}); skipped")
        else:
            resume_dpo = cfg.resume and _labeled(d)
            if resume_dpo:
                stats = json.loads((d / "judge.json").read_text(encoding="utf-8"))
                console.print(f"resume: iteration {i}'s pairs exist; continuing its DPO run")
            else:
                stats = _label_iteration(cfg, i, policy, prompts, gold, console)
            stats["dpo"] = _train_iteration(cfg, i, policy, resume_dpo, console)
            _write_json(d / "judge.json", stats)
        history += [{"iteration": i, **row} for row in _metrics(d)]
        records.append(stats)
        policy = str(d / "final")
    if gold is not None:
        gold.close()
    summary = {"iterations": records, "final": policy, "seconds": round(time.perf_counter() - t0, 1)}
    _write_json(out / "self_rewarding.json", summary)
    _print_summary(console, records, summary)
    return RunResult(out, history, Path(policy), {})


def _build_gold(cfg: RunConfig) -> Any:
    if not cfg.self_rewarding.gold:
        return None
    from rlhflab.rewards import build_scorer
    from rlhflab.train.run import pick_device

    return build_scorer(cfg.self_rewarding.gold, str(pick_device(cfg.device)), cfg.trust_remote_code)


def _load_policy(cfg: RunConfig, policy: str, iteration: int) -> tuple[Any, Any]:
    """The policy as a ChatModel (frozen, eval mode) and as its own Judge."""
    from rlhflab.algorithms.reference import model_identity
    from rlhflab.feedback.generate import ChatModel
    from rlhflab.models import resolve_model_path
    from rlhflab.rewards.judge import Judge
    from rlhflab.train.run import pick_device

    sr = cfg.self_rewarding
    path = resolve_model_path(policy)
    device = str(pick_device(cfg.device))
    chat = ChatModel.load(str(path), device, sr.generation_batch_size, cfg.trust_remote_code)
    if cfg.data.chat_template:
        chat = ChatModel(chat.model, chat.tokenizer, sr.generation_batch_size, cfg.data.chat_template)
    judge = Judge(sr.judge, device, model=chat.model, tokenizer=chat.tokenizer,
                  identity=f"iteration-{iteration}|{model_identity(path)}")
    return chat, judge


def _label_iteration(cfg: RunConfig, i: int, policy: str, prompts: list[Any], gold: Any, console: Any) -> dict[str, Any]:
    """Sample, self-judge, build pairs (and Con-J rows); write pairs.jsonl, con_j.jsonl, judge.json."""
    from rlhflab.feedback.label import label_prompts
    from rlhflab.sampling import write_jsonl_atomic
    from rlhflab.train.run import seed_everything

    sr = cfg.self_rewarding
    d = iteration_dir(cfg, i)
    shutil.rmtree(d, ignore_errors=True)  # a partial iteration is redone from its start
    d.mkdir(parents=True)
    subset = [prompts[j] for j in iteration_prompts(len(prompts), sr.prompts_per_iteration, i, cfg.seed)]
    seed_everything(cfg.seed + i)
    t = time.perf_counter()
    chat, judge = _load_policy(cfg, policy, i)
    from rlhflab.rewards.judge_templates import BUILTIN

    template = sr.judge.template if sr.judge.template in BUILTIN else "custom"
    console.print(f"sampling {len(subset)} prompts x {sr.num_candidates} candidates, judged by the policy itself "
                  f"({sr.judge.mode}, template {template})")
    rows, lstats = _label(cfg, chat, judge, subset, i, console, label_prompts)
    stats = _label_stats(i, policy, subset, rows, lstats)
    console.print(f"pairs: {len(rows)} kept of {len(subset)} prompts; judge score chosen {stats['judge']['mean_chosen']} "
                  f"vs rejected {stats['judge']['mean_rejected']} ({lstats.seconds:.1f} s)")
    extras = {id(ex.prompt): ex.extra for ex in subset}
    stats["agreement"] = {"previous_judge": _previous_agreement(cfg, i, judge, console),
                          "gold": _gold_agreement(gold, rows, extras, console)}
    train_rows = [_pair_row(r) for r in rows]
    stats["con_j"] = None
    if sr.con_j:
        conj, stats["con_j"] = _con_j(cfg, i, chat, judge, rows, console)
        write_jsonl_atomic(d / "con_j.jsonl", conj)
        train_rows += _mix(conj, len(rows), sr.con_j_mix, cfg.seed + i)
        stats["con_j"]["rows_used"] = len(train_rows) - len(rows)
    stats["train_rows"] = len(train_rows)
    stats["seconds_labeling"] = round(time.perf_counter() - t, 1)
    del chat, judge
    gc.collect()
    if not train_rows:
        raise DataError(str(d / "pairs.jsonl"), None, None, f"iteration {i}: the judge separated no prompt's best and "
                        f"worst candidates ({lstats.skipped_small_gap} below min_gap, {lstats.skipped_identical} "
                        "identical)", "use more prompts or candidates, a higher temperature, or a lower min_gap")
    write_jsonl_atomic(d / "pairs.jsonl", train_rows)
    stats["dpo"] = None
    _write_json(d / "judge.json", stats)
    return stats


def _label(cfg: RunConfig, chat: Any, judge: Any, subset: list[Any], i: int, console: Any,
           label_prompts: Any) -> tuple[list[dict[str, Any]], Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    sr = cfg.self_rewarding
    progress = Progress(TextColumn(f"iteration {i}: generate + self-judge"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console)
    with progress:
        task = progress.add_task("label", total=len(subset))
        return label_prompts(chat, judge, [ex.prompt for ex in subset], sr.num_candidates, sr.max_new_tokens,
                             sr.temperature, sr.top_p, cfg.seed * 1000 + i, sr.min_gap,
                             lambda n: progress.advance(task, n))


def _label_stats(i: int, policy: str, subset: list[Any], rows: list[dict[str, Any]], lstats: Any) -> dict[str, Any]:
    def mean(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    return {
        "iteration": i, "policy": policy, "prompts": len(subset), "pairs": len(rows),
        "skipped": {"small_gap": lstats.skipped_small_gap, "inconsistent": lstats.skipped_inconsistent,
                    "identical": lstats.skipped_identical},
        "judge": {"mean_chosen": mean(lstats.mean_best), "mean_rejected": mean(lstats.mean_worst),
                  "judge_calls": lstats.judge_calls, "consistency": mean(lstats.consistency),
                  "position_bias": mean(lstats.position_bias)},
    }


def _pair_row(r: dict[str, Any]) -> dict[str, Any]:
    """A label_prompts row as DPO data: the pair, the judge's scores, where it came from."""
    keep = ("prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "candidate_scores")
    return {**{k: r[k] for k in keep if k in r}, "source": "response"}


def _mix(conj: list[dict[str, Any]], n_pairs: int, mix: float, seed: int) -> list[dict[str, Any]]:
    """At most floor(mix * n_pairs) Con-J rows, a seeded subsample when there are more."""
    cap = int(math.floor(mix * n_pairs + 1e-9))
    if len(conj) <= cap:
        return list(conj)
    keep = sorted(torch.randperm(len(conj), generator=torch.Generator().manual_seed(seed)).tolist()[:cap])
    return [conj[j] for j in keep]


# --------------------------------------------------------------------------- agreement, Con-J


def _prefers_chosen(judge: Any, rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """The judge's (chosen, rejected) numbers of each row: pointwise scores, or pairwise
    (p, 1 - p) with p = P(chosen better)."""
    prompts = [r["prompt"] for r in rows]
    if judge.cfg.mode == "pointwise":
        c = judge.pointwise(prompts, [r["chosen"] for r in rows])
        w = judge.pointwise(prompts, [r["rejected"] for r in rows])
        return [v.score for v in c], [v.score for v in w]
    v = judge.pairwise(prompts, [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    return [x.p_a for x in v], [1.0 - x.p_a for x in v]


def agreement(chosen: list[float], rejected: list[float]) -> dict[str, Any]:
    """How often the scores prefer the chosen: agreement = #{c > r} / n, ties = #{c == r}."""
    n = len(chosen)
    wins = sum(c > r for c, r in zip(chosen, rejected))
    ties = sum(c == r for c, r in zip(chosen, rejected))
    return {"pairs": n, "agreement": round(wins / n, 4) if n else None, "ties": ties,
            "mean_chosen": round(sum(chosen) / n, 4) if n else None,
            "mean_rejected": round(sum(rejected) / n, 4) if n else None}


def _previous_agreement(cfg: RunConfig, i: int, judge: Any, console: Any) -> dict[str, Any] | None:
    """This iteration's judge on the previous iteration's response pairs (whose chosen the
    previous judge preferred): the fraction it also prefers."""
    path = iteration_dir(cfg, i - 1) / "pairs.jsonl"
    if i == 1 or not path.is_file():
        return None
    rows = [r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r.get("source") == "response"]
    if not rows:
        return None
    out = agreement(*_prefers_chosen(judge, rows))
    console.print(f"judge agreement with iteration {i - 1}'s judge on its {out['pairs']} pairs: {out['agreement']}")
    return out


def _gold_agreement(gold: Any, rows: list[dict[str, Any]], extras: dict[int, dict[str, Any]],
                    console: Any) -> dict[str, Any] | None:
    """The gold scorers on each kept pair: the fraction whose chosen has the higher gold score."""
    if gold is None or not rows:
        return None
    from rlhflab.rewards import Sample

    samples = [Sample(prompt=r["prompt"], completion=r[side], row={**extras.get(id(r["prompt"]), {}), "prompt": r["prompt"]},
                      group=k) for k, r in enumerate(rows) for side in ("chosen", "rejected")]
    values = gold.score(samples).values.tolist()
    out = agreement(values[0::2], values[1::2])
    console.print(f"gold agreement: the gold prefers the chosen in {out['agreement']} of {out['pairs']} pairs "
                  f"({out['ties']} ties)")
    return out


def _con_j(cfg: RunConfig, i: int, chat: Any, judge: Any, rows: list[dict[str, Any]],
           console: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Con-J rows from the iteration's response pairs, judged pairwise by the same policy."""
    from rlhflab.config_feedback import JudgeConfig
    from rlhflab.feedback.con_j import con_j_rows
    from rlhflab.rewards.judge import Judge

    sr = cfg.self_rewarding
    t = time.perf_counter()
    jc = JudgeConfig(model="", mode="pairwise", template="pairwise", system_prompt=sr.judge.system_prompt,
                     labels=sr.judge.labels, rationale=True, max_rationale_tokens=sr.con_j_max_tokens,
                     escape=sr.judge.escape, max_length=sr.judge.max_length, batch_size=sr.judge.batch_size)
    pair_judge = Judge(jc, model=chat.model, tokenizer=chat.tokenizer, identity=judge.identity)
    if sr.con_j_max_pairs is not None and len(rows) > sr.con_j_max_pairs:
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed + i)).tolist()
        rows = [rows[j] for j in sorted(keep[:sr.con_j_max_pairs])]
    console.print(f"Con-J: {sr.con_j_samples} judgments x 2 orders for each of {len(rows)} pairs")
    conj, stats = con_j_rows(chat, pair_judge, rows, sr.con_j_samples, sr.con_j_max_tokens, sr.con_j_temperature,
                             seed=cfg.seed * 1000 + 500 + i)
    out = stats.as_dict()
    out["seconds"] = round(time.perf_counter() - t, 1)
    console.print(f"Con-J: {stats.agreeing}/{stats.pairs} pairs position-consistent, {stats.rows} judge-training rows "
                  f"({stats.skipped_one_sided} without both kinds of judgment); the first-shown response won "
                  f"{stats.first_shown}/{stats.with_verdict} judgments")
    return conj, out


# --------------------------------------------------------------------------- DPO, outputs


def _train_iteration(cfg: RunConfig, i: int, policy: str, resume: bool, console: Any) -> dict[str, Any]:
    """One DPO run on the iteration's pairs; its final/ is the next policy."""
    from rlhflab.train.run import run

    dpo_cfg = iteration_config(cfg, i, policy, resume)
    validate(dpo_cfg)
    console.print(f"DPO: {dpo_cfg.max_steps} steps on {dpo_cfg.data.train}, reference = the iteration's policy")
    t = time.perf_counter()
    run(dpo_cfg, console)
    rows = _metrics(iteration_dir(cfg, i))
    if not rows:
        return {"steps": 0, "seconds": round(time.perf_counter() - t, 1)}

    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        return round(sum(vals) / len(vals), 4) if vals else None

    last = rows[-1]
    return {"steps": len(rows), "first_loss": round(rows[0]["loss"], 4), "last_loss": round(last["loss"], 4),
            "mean_reward_accuracy": mean("reward/accuracy"), "last_reward_accuracy": last.get("reward/accuracy"),
            "last_reward_margin": last.get("reward/margin"), "seconds": round(time.perf_counter() - t, 1)}


def _metrics(d: Path) -> list[dict[str, Any]]:
    path = d / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False))


def _print_summary(console: Any, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    console.print(f"[bold green]done[/]: {len(records)} self-rewarding iteration(s) in {summary['seconds']} s")
    for s in records:
        dpo = s.get("dpo") or {}
        prev = (s.get("agreement") or {}).get("previous_judge") or {}
        gold = (s.get("agreement") or {}).get("gold") or {}
        conj = s.get("con_j") or {}
        parts = [f"{s['pairs']} pairs", f"judge {s['judge']['mean_chosen']} vs {s['judge']['mean_rejected']}"]
        if prev:
            parts.append(f"agrees with previous judge {prev['agreement']}")
        if gold:
            parts.append(f"gold agreement {gold['agreement']}")
        if conj:
            parts.append(f"Con-J rows {conj.get('rows_used')}/{conj.get('rows')}")
        if dpo.get("steps"):
            parts.append(f"DPO loss {dpo['first_loss']} -> {dpo['last_loss']}, accuracy {dpo['mean_reward_accuracy']}")
        console.print(f"  iteration {s['iteration']}: " + "; ".join(parts))
    console.print(f"  final policy: {summary['final']}")
