"""`rlhflab report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page (inline CSS and SVG, no
JavaScript, nothing fetched) with a run's config, batch plan, plots, evaluations, warnings and
sample generations; several runs are overlaid on the same plots, one color per run.
docs/report.md lists what is shown and the files it is read from.
"""

from __future__ import annotations

import os
import re
from html import escape
from pathlib import Path

from rlhflab.atomic import write_text_atomic
from rlhflab.report import sections as sec
from rlhflab.report.load import RunData, load_run
from rlhflab.report.plots import (Chart, curve_chart, metric_rows, numeric_keys, plot_groups, render_chart,
                                  time_chart, time_totals)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:24px;margin:8px 0 12px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:16px 0 6px}h4{font-size:14px;margin:12px 0 4px}
nav{font-size:13px;margin:0 0 8px}nav a{margin-right:12px;color:#1f77b4;text-decoration:none}
table{border-collapse:collapse;margin:4px 16px 8px 0;font-size:13px;background:white}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
td{font-variant-numeric:tabular-nums}thead th{background:#f0f0f0}
table.facts th{background:#f6f6f6;font-weight:600;white-space:nowrap}
table.warnings td:last-child{color:#8a4b00}
.row{display:flex;flex-wrap:wrap;align-items:flex-start}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{border:1px solid #e4e4e4;background:white;display:block}
figure{margin:0}figcaption{color:#666;font-size:12.5px;max-width:560px;padding:2px 4px}
.note{color:#666;font-size:13px;margin:2px 0 8px}.dim{color:#888}
.notes{background:#fff8e1;border:1px solid #f0d98c;padding:6px 12px;margin:8px 0}.notes ul{margin:4px 0}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
pre{background:#f5f5f5;border:1px solid #e4e4e4;padding:6px 8px;white-space:pre-wrap;word-break:break-word;
margin:2px 0 6px;font-size:12.5px;max-height:420px;overflow:auto}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:10px}
.sample{background:white;border:1px solid #e4e4e4;padding:6px 10px}.sample .label{font-size:12px;color:#666}
.scores{font-size:12.5px;color:#225}
.swatch{display:inline-block;width:11px;height:11px;margin-right:6px;border-radius:2px;vertical-align:baseline}
"""


def plots_html(runs: list[RunData]) -> tuple[str, str]:
    """The plot groups, and the collapsed small charts of every other metric."""
    rows = [metric_rows(r) for r in runs]
    groups, rest = plot_groups(numeric_keys(runs))
    figures = []
    for g in groups:
        note = f"<figcaption>{sec.esc(g.note)}</figcaption>" if g.note else ""
        figures += [f"<figure>{svg}{note}</figure>" for c in g.charts for svg in render_chart(c, runs, rows)]
    main = f"<div class='charts'>{''.join(figures)}</div>" if figures else ""
    small = [svg for k in rest for svg in render_chart(Chart(k, [k]), runs, rows, width=370, height=220)]
    other = (f"<details><summary>{len(rest)} more metrics</summary><div class='charts'>{''.join(small)}</div></details>"
             if small else "")
    return main, other


def time_html(runs: list[RunData]) -> str:
    charts = [c for i, r in enumerate(runs)
              if (c := time_chart(r, "seconds per step by phase" + (f": {r.name}" if len(runs) > 1 else "")))]
    if not charts:
        return ""
    totals = [time_totals(r) for r in runs]
    phases = list(dict.fromkeys(p for t in totals for p in t))
    rows = []
    for p in phases:
        row: list = [p]
        for t in totals:
            all_s = sum(t.values())
            row += [t.get(p, 0.0), f"{100 * t.get(p, 0.0) / all_s:.1f}%" if all_s else ""]
        rows.append(row)
    rows.append(["all steps", *[v for t in totals for v in (sum(t.values()), "100%")]])
    heads = ["phase"] + [h for r in runs for h in ((f"{r.name} s", "share") if len(runs) > 1 else ("seconds", "share"))]
    return (f"<div class='charts'>{''.join(charts)}</div><h4>Totals over the logged steps</h4>"
            '<p class="note">other = time/step_s minus the timed phases (for offline runs: collating the batch); '
            "evaluation and checkpoint time is not in the steps.</p>" + sec.table(heads, rows))


def curves_html(runs: list[RunData]) -> str:
    def one(run: RunData) -> str:
        svgs = [curve_chart(c) for c in run.curves]
        return f"<div class='charts'>{''.join(svgs)}</div>" if svgs else ""

    return sec.per_run(runs, one)


def render_report(runs: list[RunData]) -> str:
    """The whole page for `runs` (one or several)."""
    plots, other = plots_html(runs)
    parts = [
        ("config", "Config", sec.config_section(runs)),
        ("plan", "Batch plan and model", sec.plan_section(runs)),
        ("plots", "Training curves", plots or "<p>no metrics logged yet</p>"),
        ("time", "Time per phase", time_html(runs)),
        ("evals", "Evaluation", sec.eval_section(runs)),
        ("warnings", "Warnings", sec.warnings_section(runs)),
        ("samples", "Sample generations", sec.samples_section(runs)),
        ("curves", "Extra curves", curves_html(runs)),
        ("other", "Other metrics", other),
    ]
    nav = "".join(f'<a href="#{a}">{sec.esc(t)}</a>' for a, t, body in parts if body)
    body = "".join(sec.section(a, t, b) for a, t, b in parts)
    title = runs[0].name if len(runs) == 1 else " vs ".join(r.name for r in runs)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>rlhflab report: {escape(title)}</title><style>{CSS}</style></head><body><main>"
            f"{sec.header(runs)}<nav>{nav}</nav>{sec.notes(runs)}{body}"
            f'<p class="note">written by rlhflab report</p></main></body></html>\n')


def unique_names(paths: list[Path]) -> list[str]:
    """Labels for runs: the folder name, or more of the path where names repeat."""
    parts = [p.resolve().parts for p in paths]
    depth = 1
    while depth < max(len(p) for p in parts):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
        depth += 1
    return [str(p) for p in paths]


def default_out(paths: list[Path]) -> Path:
    """RUN_DIR/report.html for one run; for several, compare_<a>_vs_<b>....html in their common parent."""
    if len(paths) == 1:
        return paths[0] / "report.html"
    parent = Path(os.path.commonpath([str(p.resolve()) for p in paths]))
    stem = "_vs_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", p.resolve().name) for p in paths)
    return parent / f"compare_{stem[:120]}.html"


def write_report(run_dirs: list[str | os.PathLike], out: str | os.PathLike | None = None) -> Path:
    """Render the report of one or several runs to `out` (default: `default_out`); returns its path.
    UserError when a folder is not a run."""
    from rlhflab.errors import UserError

    if not run_dirs:
        raise UserError("give at least one run directory")
    paths = [Path(p) for p in run_dirs]
    runs = [load_run(p, name) for p, name in zip(paths, unique_names(paths))]
    target = Path(out) if out is not None else default_out(paths)
    if target.exists() and target.is_dir():
        raise UserError(f"--out {target} is a directory; give a file name such as {target / 'report.html'}")
    if not target.parent.is_dir():
        raise UserError(f"cannot write the report: the folder {target.parent} does not exist")
    write_text_atomic(target, render_report(runs))
    return target
