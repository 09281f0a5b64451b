"""The HTML sections of a report, each a function of the loaded runs returning an HTML string
('' when there is nothing to show). Every text that comes from a file is escaped here."""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

from rlhflab.report.load import RunData, status, wall_seconds
from rlhflab.report.runlog import prompt_text
from rlhflab.report.svg import PALETTE

MAX_EVAL_COLUMNS = 12


CONTROL_PICTURES = {c: 0x2400 + c for c in range(32) if chr(c) not in "\t\n\r"} | {0x7F: 0x2421}
"""Control characters (models emit them) shown as their Unicode pictures (U+2400...), not raw bytes."""


def esc(v: Any) -> str:
    """HTML-escaped text, control characters made visible."""
    return escape(str(v), quote=True).translate(CONTROL_PICTURES)


def fmt(v: Any) -> str:
    """Numbers to 4 significant digits (1,234 from a thousand on; integers as they are), anything
    else as text, escaped."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return esc(v)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s % 60:02d} s" if m else f"{seconds:.1f} s"


def table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else fmt(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Raw(str):
    """HTML already escaped, put into a table cell as it is."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists of scalars stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out


def swatch(i: int) -> _Raw:
    return _Raw(f'<span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></span>')


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>' if body else ""


def per_run(runs: list[RunData], render: Any) -> str:
    """`render(run)` for each run; with several runs each under its name."""
    if len(runs) == 1:
        return render(runs[0])
    parts = [(i, r, render(r)) for i, r in enumerate(runs)]
    return "".join(f"<h3>{swatch(i)}{esc(r.name)}</h3>{body}" for i, r, body in parts if body)


# ---------------------------------------------------------------------- header
def header_facts(run: RunData) -> list[tuple[str, Any]]:
    info, cfg = run.info, run.config
    facts = [("algorithm", cfg.get("algorithm") or info.get("algorithm") or run.summary.get("algorithm", "?")),
             ("model", cfg.get("model") or info.get("model", "?")),
             ("status", status(run)), ("wall time", duration(wall_seconds(run))),
             ("steps logged", run.last_step), ("directory", str(run.path))]
    if info.get("started"):
        facts.append(("started", info["started"]))
    if info.get("versions"):
        facts.append(("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items())))
    if info.get("command"):
        facts.append(("command", info["command"]))
    return facts


def header(runs: list[RunData]) -> str:
    if len(runs) == 1:
        run = runs[0]
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in header_facts(run))
        return f'<h1>{esc(run.name)}</h1><table class="facts">{rows}</table>'
    columns = ("algorithm", "model", "status", "wall time", "steps logged", "directory")
    rows = [[_Raw(swatch(i) + esc(r.name)), *[v for k, v in header_facts(r) if k in columns]]
            for i, r in enumerate(runs)]
    return f"<h1>Comparison of {len(runs)} runs</h1>" + table(["run", *columns], rows)


def notes(runs: list[RunData]) -> str:
    items = [(r.name, n) for r in runs for n in r.notes]
    if not items:
        return ""
    lis = "".join(f"<li>{esc(name + ': ' if len(runs) > 1 else '')}{esc(n)}</li>" for name, n in items)
    return f'<div class="notes"><b>Read with notes</b><ul>{lis}</ul></div>'


# ---------------------------------------------------------------------- config and plan
def config_section(runs: list[RunData]) -> str:
    def one(run: RunData) -> str:
        if not run.config_text:
            return "<p>no config.yaml</p>"
        return f"<details><summary>config.yaml</summary><pre>{esc(run.config_text)}</pre></details>"

    body = ""
    if len(runs) > 1:
        rows = config_differences([r.config for r in runs])
        body = "<h3>Differences</h3>" + (table(["key", *[r.name for r in runs]], rows) if rows
                                          else "<p>the configs are identical</p>")
    return body + per_run(runs, one)


def config_differences(configs: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows [dotted key, value in each config] where the configs differ; a section that only some
    configs have (another algorithm's settings) is one row `name.*` saying how many settings it holds."""
    flat = [flatten(c) for c in configs]
    partial = {k for k in {k for c in configs for k, v in c.items() if isinstance(v, dict)}
               if any(k not in c for c in configs)}
    rows, done = [], set()
    for key in dict.fromkeys(k for f in flat for k in f):
        top = key.split(".")[0]
        if top in partial:
            if top not in done:
                done.add(top)
                rows.append([f"{top}.*", *[f"({len(flatten(c[top]))} settings)" if top in c else "(absent)"
                                           for c in configs]])
            continue
        values = [f.get(key, _ABSENT) for f in flat]
        if len({repr(v) for v in values}) > 1:
            rows.append([key, *["(absent)" if v is _ABSENT else v for v in values]])
    return rows


_ABSENT = object()


def plan_section(runs: list[RunData]) -> str:
    def one(run: RunData) -> str:
        plan, info = run.info.get("plan"), run.info
        if not isinstance(plan, dict):
            cfg = run.config
            known = [(k, cfg[k]) for k in ("batch_size", "micro_batch_size", "max_steps") if k in cfg]
            return ("<p>run.json is absent (the run predates it); from the config:</p>"
                    + table(["setting", "value"], [list(kv) for kv in known])) if known else ""
        rows = [[k.replace("_", " "), plan[k]] for k in ("batch_size", "micro_batch_size", "accumulation", "world_size",
                                                        "items", "eval_items", "max_steps", "epochs", "tokens_per_step")
                if plan.get(k) is not None]
        model = [["parameters", info["parameters"]]] if "parameters" in info else []
        model += [[k.replace("_", " "), info[k]] for k in ("trainable_parameters", "device", "dtype", "param_dtype")
                  if k in info]
        return (f"<p><code>{esc(plan.get('text', ''))}</code> (unit: {esc(plan.get('unit', '?'))})</p>"
                + f'<div class="row">{table(["batch plan", "value"], rows)}{table(["model", "value"], model)}</div>')

    return per_run(runs, one)


# ---------------------------------------------------------------------- evaluation
def eval_section(runs: list[RunData]) -> str:
    def one(run: RunData) -> str:
        out = []
        before, after = run.summary.get("eval_before", {}), run.summary.get("eval_after", {})
        if isinstance(before, dict) and isinstance(after, dict) and (before or after):
            keys = list(dict.fromkeys([*before, *after]))
            rows = [[k, before.get(k, ""), after.get(k, ""),
                     after[k] - before[k] if _both_numbers(before.get(k), after.get(k)) else ""] for k in keys]
            out.append("<h4>Before and after training</h4>" + table(["metric", "before", "after", "change"], rows))
        if run.evals:
            keys = list(dict.fromkeys(k for e in run.evals for k in (e.get("metrics") or {})))[:MAX_EVAL_COLUMNS]
            rows = [[e.get("step", ""), *[(e.get("metrics") or {}).get(k, "") for k in keys]] for e in run.evals]
            out.append("<h4>During training (evals.jsonl)</h4>" + table(["step", *keys], rows))
        if run.best:
            out.append("<p>best checkpoint: " + ", ".join(f"{esc(k)} {fmt(v)}" for k, v in run.best.items()) + "</p>")
        if run.eval_json:
            out.append("<h4>rlhflab eval (eval/eval.json)</h4>" + eval_json_table(run.eval_json))
        hacking = run.summary.get("reward_hacking")
        if isinstance(hacking, dict) and hacking:
            out.append("<h4>Reward hacking monitor (proxy vs gold)</h4>" + hacking_table(hacking))
        return "".join(out)

    return per_run(runs, one)


def hacking_table(h: dict[str, Any]) -> str:
    """summary.json's reward_hacking section (docs/reward_hacking.md): the start, gold-peak and end
    points, whether it warned, and every field in a collapsed table."""
    points = [(name, h[key]) for name, key in (("start", "start"), ("gold peak", "gold_peak"), ("end", "end"))
              if isinstance(h.get(key), dict)]
    rows = [[name, *[p.get(k, "") for k in ("step", "proxy", "gold", "kl")]] for name, p in points]
    out = table(["point", "step", "proxy", "gold", "KL"], rows)
    if "warned" in h:
        step = (h.get("warning") or {}).get("step") if isinstance(h.get("warning"), dict) else None
        out += f"<p>over-optimization warning: {'yes, at step ' + fmt(step) if h['warned'] else 'no'}</p>"
    rows = [[k, v if not isinstance(v, (list, dict)) else json.dumps(v)] for k, v in flatten(h).items()]
    return out + f"<details><summary>all fields</summary>{table(['field', 'value'], rows)}</details>"


def eval_json_table(doc: dict[str, Any]) -> str:
    """`rlhflab eval`'s eval.json: one column per model (the reference first), one row per metric
    and win-rate field; any other document as key / value rows."""
    models = [m for m in [doc.get("reference"), *(doc.get("models") or [])] if isinstance(m, dict)]
    if not models:
        return table(["key", "value"], [[k, v] for k, v in flatten(doc).items() if not isinstance(v, (list, dict))])
    cols = [{**flatten(m.get("metrics") or {}), **(flatten({"win_rate": m["win_rate"]}) if m.get("win_rate") else {})}
            for m in models]
    keys = list(dict.fromkeys(k for c in cols for k in c))
    names = [f"{m.get('name', '?')}{' (reference)' if m is doc.get('reference') else ''}" for m in models]
    rows = [[k, *[c.get(k, "") if not isinstance(c.get(k), (list, dict)) else json.dumps(c[k]) for c in cols]]
            for k in keys]
    settings = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
    where = f"<p>{fmt(settings.get('prompts', '?'))} prompts from {fmt(settings.get('data', '?'))}</p>"
    where = where if settings else ""
    return where + table(["metric", *names], rows)


def _both_numbers(a: Any, b: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))


def warnings_section(runs: list[RunData]) -> str:
    def one(run: RunData) -> str:
        if not run.warnings:
            return ""
        return table(["step", "warning"], [["" if s is None else s, m] for s, m in run.warnings], "warnings")

    body = per_run(runs, one)
    return body or "<p>no warnings were raised</p>"


# ---------------------------------------------------------------------- samples
def samples_section(runs: list[RunData]) -> str:
    def one(run: RunData) -> str:
        groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
        for s in run.samples:
            groups.setdefault((s.get("source", "rollout"), s.get("step")), []).append(s)
        keys = sorted(groups, key=lambda k: (k[0] != "rollout", k[1] if isinstance(k[1], (int, float)) else 0))
        out = []
        for i, (source, step) in enumerate(keys):
            what = "training rollouts" if source == "rollout" else "evaluation"
            opened = " open" if i in (0, len(keys) - 1) else ""
            cards = "".join(_sample_card(s) for s in groups[(source, step)])
            out.append(f"<details{opened}><summary>step {fmt(step)}: {what} ({len(groups[(source, step)])})</summary>"
                       f'<div class="samples">{cards}</div></details>')
        return "".join(out)

    return per_run(runs, one)


def _sample_card(s: dict[str, Any]) -> str:
    scores = s.get("scores") if isinstance(s.get("scores"), dict) else {}
    score_text = ", ".join(f"{esc(k)} {fmt(v)}" for k, v in scores.items())
    finish = f' <span class="dim">({esc(s["finish_reason"])})</span>' if s.get("finish_reason") else ""
    prompt = s.get("prompt", "")
    prompt = prompt_text(prompt) if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt) else prompt
    return (f'<div class="sample"><div class="label">prompt</div><pre>{esc(prompt)}</pre>'
            f'<div class="label">completion{finish}</div><pre>{esc(s.get("completion", ""))}</pre>'
            + (f'<div class="scores">{score_text}</div>' if score_text else "") + "</div>")
