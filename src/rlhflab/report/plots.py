"""Which plots a report draws from the logged metrics, for one run or several overlaid.

A chart names metric keys; a key that no run logged is left out, and a chart with no key left is
not drawn. With several runs each run has one color; a chart of several keys is then split into
one chart per key, so a line is always identified by its run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from rlhflab.report.load import RunData
from rlhflab.report.svg import PALETTE, Series, line_chart, stacked_bar_chart

BOOKKEEPING = {"step", "units", "examples", "skipped", "epoch"}
LOSS_TERMS = ("pg_loss", "policy_loss", "value_loss", "kl_loss", "nll", "retain_nll")
KL_KEYS = ("kl/k1", "kl/k2", "kl/k3", "approx_kl", "eval/kl")
TIME_TOTALS = ("time/step_s", "time/rollout_s")
"""Timers that contain other timers: not phases of the breakdown."""
PHASE_ORDER = ("time/sync_s", "time/generate_s", "time/score_s", "time/reference_s", "time/update_s")


@dataclass
class Chart:
    """One plot: `keys` against `x_key` (step unless stated)."""

    title: str
    keys: list[str]
    y_label: str = ""
    x_key: str = "step"
    x_label: str = "step"
    markers: bool = False


@dataclass
class PlotGroup:
    title: str
    charts: list[Chart] = field(default_factory=list)
    note: str = ""


def metric_rows(run: RunData) -> list[dict[str, Any]]:
    """metrics.jsonl rows, plus evals.jsonl metrics as `eval/gen/<name>` rows when metrics.jsonl
    does not carry them itself."""
    rows = list(run.metrics)
    before = run.summary.get("eval_before")
    if isinstance(before, dict) and before and not any(r.get("step") == 0 for r in rows):
        rows.insert(0, {"step": 0, **before})  # the evaluation before the first step
    if run.evals and not any(k.startswith("eval/gen/") for r in rows for k in r):
        for ev in run.evals:
            if isinstance(ev.get("step"), (int, float)):
                rows.append({"step": ev["step"], **{f"eval/gen/{k}": v for k, v in ev.get("metrics", {}).items()
                                                    if _num(v)}})
    return rows


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def numeric_keys(runs: list[RunData]) -> list[str]:
    """Every numeric metric key any run logged, in first-seen order."""
    seen: dict[str, None] = {}
    for run in runs:
        for row in metric_rows(run):
            for k, v in row.items():
                if _num(v) and k not in BOOKKEEPING:
                    seen.setdefault(k, None)
    return list(seen)


def _pick(keys: list[str], pattern: str, exclude: str = r"$^") -> list[str]:
    return [k for k in keys if re.fullmatch(pattern, k) and not re.search(exclude, k)]


def plot_groups(keys: list[str]) -> tuple[list[PlotGroup], list[str]]:
    """The report's plot groups for the logged `keys`, and the keys they leave for "other metrics"."""
    have = set(keys)
    used: set[str] = set()

    def chart(title: str, ks: list[str], y_label: str = "", need: tuple[str, ...] = (), min_keys: int = 1,
              **kw: Any) -> list[Chart]:
        ks = [k for k in dict.fromkeys(ks) if k in have]
        if any(k not in have for k in need) or len(ks) < min_keys:
            return []
        used.update(ks)
        return [Chart(title, ks, y_label, **kw)] if ks else []

    eval_accuracy = _pick(keys, r"eval/.*accuracy.*")
    groups = [
        PlotGroup("Loss", chart("loss", ["loss", "eval/loss"], "loss")
                  + chart("loss terms", _pick(keys, r"loss/.*") + list(LOSS_TERMS), "loss", min_keys=2)),
        PlotGroup("Reward", chart("reward", _pick(keys, r"reward/.*", r"/(std|accuracy)$") + ["gold/mean"]
                                  + _pick(keys, r"gold/.*", r"/(std|mean)$"), "reward")
                  + chart("cost", _pick(keys, r"cost/.*", r"/std$"), "cost")
                  + chart("Lagrange multiplier", ["lagrange"])),
        PlotGroup("KL to the reference", chart("KL", list(KL_KEYS), "nats")),
        PlotGroup("Entropy", chart("entropy", ["entropy", "eval/entropy"], "nats / token")),
        PlotGroup("Response length", chart("response length", _pick(keys, r"response_length/.*")
                                           + _pick(keys, r"eval/(gen/)?(response_)?length(/.*)?"), "tokens")),
        PlotGroup("Accuracy", chart("accuracy", _pick(keys, r"(?!eval/).*accuracy.*") + eval_accuracy, "accuracy")),
        PlotGroup("Over-optimization", chart("proxy and gold reward against KL", ["reward/mean", "gold/mean"], "reward",
                                             need=("reward/mean", "gold/mean", "kl/k1"), x_key="kl/k1",
                                             x_label="KL(policy || reference), k1", markers=True),
                  "the run's path in step order; the proxy rising while the gold falls as KL grows is reward hacking"),
    ]
    families: dict[str, list[str]] = {}  # eval/reward with eval/reward/<scorer>, eval/gen/x with eval/gen/x/...
    for k in keys:
        if k.startswith("eval/") and k not in used:
            families.setdefault("/".join(k.split("/")[:3 if k.startswith("eval/gen/") else 2]), []).append(k)
    groups.append(PlotGroup("Evaluation", [c for fam, ks in families.items() for c in chart(fam, ks)]))
    groups.append(PlotGroup("Optimization", chart("grad_norm", ["grad_norm"], "gradient L2 norm before clipping")
                            + chart("lr", ["lr"], "learning rate")))
    rest = [k for k in keys if k not in used and not k.startswith("time/")]
    return [g for g in groups if g.charts], rest


def _points(run: RunData, rows: list[dict[str, Any]], key: str, x_key: str) -> tuple[list[float], list[Any]]:
    xs, ys = [], []
    for row in rows:
        if key in row and _num(row.get(x_key)):
            xs.append(float(row[x_key]))
            ys.append(row[key] if _num(row[key]) else None)
    return xs, ys


MAX_POINTS = 1000
"""Longer series are drawn as MAX_POINTS means of consecutive points (keeps long runs' pages small)."""


def thin(x: list[float], y: list[Any], max_points: int = MAX_POINTS) -> tuple[list[float], list[Any]]:
    """At most `max_points` points: each the mean x and mean finite y of consecutive points (None
    when a bucket has no finite y). Shorter series are returned as they are."""
    n = len(x)
    if n <= max_points:
        return x, y
    xs, ys = [], []
    for b in range(max_points):
        lo, hi = n * b // max_points, n * (b + 1) // max_points
        fin = [v for v in y[lo:hi] if v is not None and math.isfinite(v)]
        xs.append(sum(x[lo:hi]) / (hi - lo))
        ys.append(sum(fin) / len(fin) if fin else None)
    return xs, ys


def render_chart(chart: Chart, runs: list[RunData], rows: list[list[dict[str, Any]]], width: int = 560,
                 height: int = 300) -> list[str]:
    """SVG text of `chart`: one chart for a single run; with several runs one per key."""
    multi = len(runs) > 1
    out = []
    aliases = _same_curves(chart, runs, rows)
    keys = [k for k in chart.keys if k in aliases]
    key_sets = [[k] for k in keys] if multi and len(keys) > 1 else [keys]
    for ks in key_sets:
        series, drawn = [], []
        for r, (run, rr) in enumerate(zip(runs, rows)):
            for j, key in enumerate(ks):
                x, y = _points(run, rr, key, chart.x_key)
                if not any(v is not None and math.isfinite(v) for v in y):
                    continue
                x, y = thin(x, y)  # in step order, also when x is another metric
                name = run.name if multi else " = ".join(aliases[key])
                color = PALETTE[r % len(PALETTE)] if multi else PALETTE[j % len(PALETTE)]
                sparse = (chart.markers or key.startswith("eval/")) and len(x) <= 200 or len(x) <= 20
                series.append(Series(name, x, y, color=color, markers=sparse))
                drawn.append(key)
        if series:
            title = chart.title
            if multi or len(series) == 1:  # no legend names the key: the title does
                title = _title(chart.title, aliases[drawn[0]])
            out.append(line_chart(series, title, chart.x_label, chart.y_label, width, height))
    return out


def _title(title: str, names: list[str]) -> str:
    """'KL (kl/k1)', 'eval/reward (= eval/reward/math)' or just the title when it is the key."""
    if names[0] == title:
        return f"{title} (= {' = '.join(names[1:])})" if len(names) > 1 else title
    return f"{title} ({' = '.join(names)})"


def _same_curves(chart: Chart, runs: list[RunData], rows: list[list[dict[str, Any]]]) -> dict[str, list[str]]:
    """The chart's keys to draw, each with the later keys whose points equal its own in every run
    (reward/mean and reward/<scorer> of a single scorer): those are named, not drawn again."""
    points = {k: [_points(run, rr, k, chart.x_key) for run, rr in zip(runs, rows)] for k in chart.keys}
    out: dict[str, list[str]] = {}
    for k in chart.keys:
        same = next((first for first in out if points[first] == points[k]), None)
        if same is None:
            out[k] = [k]
        else:
            out[same].append(k)
    return out


# ---------------------------------------------------------------------- time breakdown
def time_phases(rows: list[dict[str, Any]]) -> list[str]:
    """The per-phase timers (time/*_s but not the totals): those of PHASE_ORDER first, in pipeline
    order, then any other in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for k in row:
            if k.startswith("time/") and k.endswith("_s") and k not in TIME_TOTALS:
                seen.setdefault(k, None)
    known = [k for k in PHASE_ORDER if k in seen]
    return known + [k for k in seen if k not in known]


def time_breakdown(run: RunData) -> tuple[list[float], dict[str, list[float]]]:
    """Per step: seconds of each phase, and `other` = time/step_s minus the phases (when positive).
    Offline steps have no phase timers but update_s; what precedes the update is data collation."""
    rows = [r for r in run.metrics if _num(r.get("step"))]
    phases = time_phases(rows)
    steps = [float(r["step"]) for r in rows]
    table: dict[str, list[float]] = {p.removeprefix("time/").removesuffix("_s"): [] for p in phases}
    table["other"] = []
    for r in rows:
        parts = [float(r[p]) if _num(r.get(p)) and math.isfinite(r[p]) else 0.0 for p in phases]
        for p, v in zip(phases, parts):
            table[p.removeprefix("time/").removesuffix("_s")].append(v)
        total = r.get("time/step_s")
        table["other"].append(max(float(total) - sum(parts), 0.0) if _num(total) and math.isfinite(total) else 0.0)
    if not any(table["other"]):
        del table["other"]
    return steps, table


def time_chart(run: RunData, title: str, width: int = 560, height: int = 300) -> str | None:
    steps, table = time_breakdown(run)
    if not steps or not any(any(v) for v in table.values()):
        return None
    parts = [Series(name, steps, values) for name, values in table.items()]
    return stacked_bar_chart(steps, parts, title, "step", "seconds", width, height)


def time_totals(run: RunData) -> dict[str, float]:
    """Total seconds per phase over the logged steps."""
    _, table = time_breakdown(run)
    return {name: sum(values) for name, values in table.items()}


# ---------------------------------------------------------------------- extra curves (curves.json)
def curve_chart(curve: dict[str, Any], width: int = 560, height: int = 300) -> str:
    """A curves.json entry (docs/report.md) as a line chart."""
    series = []
    for s in curve.get("series", []):
        xs = [float(v) if _num(v) else math.nan for v in s["x"]]
        ys = [float(v) if _num(v) else None for v in s["y"]]
        series.append(Series(str(s.get("name", "")), xs, ys, markers=len(xs) <= 20, dashed=bool(s.get("dashed"))))
    return line_chart(series, str(curve.get("title", "")), str(curve.get("x_label", "")), str(curve.get("y_label", "")),
                      width, height, log_x=bool(curve.get("log_x")), log_y=bool(curve.get("log_y")))
