"""Read a run directory for the report, tolerating runs that are still writing or were killed.

Every file is optional except that a run has `config.yaml` or `metrics.jsonl` (or, for an example's
results folder, `curves.json`). A truncated last line of a JSONL file (the run is writing it, or
was killed mid-line) is skipped with a note; an unreadable optional file becomes a note on the
page instead of an error.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhflab.errors import UserError

NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "NaN": math.nan, "Infinity": math.inf,
             "-Infinity": -math.inf}


@dataclass
class RunData:
    """Everything the report shows about one run; absent files leave their field empty."""

    path: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    config_text: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[tuple[int | None, str]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    eval_json: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    curves: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Problems found while reading (truncated lines, unreadable files), shown on the page."""

    @property
    def last_step(self) -> int:
        return max((int(r["step"]) for r in self.metrics if isinstance(r.get("step"), (int, float))), default=0)

    @property
    def max_steps(self) -> int | None:
        v = self.config.get("max_steps", self.info.get("plan", {}).get("max_steps"))
        return int(v) if isinstance(v, (int, float)) else None


def read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; a bad last line (truncated) or bad middle line is skipped
    with a note naming the file and line. A missing file gives []."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        notes.append(f"{path.name}: cannot read ({e})")
        return []
    rows = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=lambda c: NONFINITE[c])
        except json.JSONDecodeError:
            what = "is incomplete (still being written, or the run was killed)" if i == last else "is not valid JSON"
            notes.append(f"{path.name}, line {i + 1}: {what}; skipped")
            continue
        if not isinstance(row, dict):
            notes.append(f"{path.name}, line {i + 1}: not a JSON object; skipped")
            continue
        rows.append(row)
    return rows


def read_json(path: Path, notes: list[str], kind: type = dict) -> Any:
    """A JSON file of the given top-level type, or an empty one (with a note when it exists but is bad)."""
    if not path.is_file():
        return kind()
    try:
        value = json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda c: NONFINITE[c])
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        notes.append(f"{path.name}: not readable JSON ({e}); ignored")
        return kind()
    if not isinstance(value, kind):
        notes.append(f"{path.name}: expected a JSON {kind.__name__}, got {type(value).__name__}; ignored")
        return kind()
    return value


def _number(v: Any) -> Any:
    if isinstance(v, str) and v in NONFINITE:
        return NONFINITE[v]  # metrics.jsonl writes non-finite values as "nan" / "inf"
    return v


def _read_config(path: Path, notes: list[str]) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        return {}, ""
    import yaml

    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        notes.append(f"config.yaml: not valid YAML ({e})")
        return {}, text
    return (tree if isinstance(tree, dict) else {}), text


def check_run_dir(path: str | os.PathLike) -> Path:
    """The run directory as a Path; UserError (exit 2) when it is missing or not a run."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"run directory not found: {p}")
    if not p.is_dir():
        raise UserError(f"{p} is a file; give the run directory (the output_dir of `rlhflab train`)")
    if not any((p / f).is_file() for f in ("config.yaml", "metrics.jsonl", "curves.json")):
        subruns = sorted(c.name for c in p.iterdir() if c.is_dir() and (c / "metrics.jsonl").is_file())
        hint = (f"; it holds runs: {', '.join(subruns[:8])} (report those, e.g. `rlhflab report {p / subruns[0]}`)"
                if subruns else "; give the output_dir of an `rlhflab train` run")
        raise UserError(f"{p} is not a run directory: it has no config.yaml, metrics.jsonl or curves.json{hint}")
    return p


def load_run(path: str | os.PathLike, name: str | None = None) -> RunData:
    """Read every report file of the run at `path` (see docs/report.md for the list)."""
    p = check_run_dir(path)
    run = RunData(p, name or p.resolve().name)
    notes = run.notes
    run.config, run.config_text = _read_config(p / "config.yaml", notes)
    run.metrics = [{k: _number(v) for k, v in row.items()} for row in read_jsonl(p / "metrics.jsonl", notes)]
    run.summary = read_json(p / "summary.json", notes)
    run.info = read_json(p / "run.json", notes)
    run.evals = [r for r in read_jsonl(p / "evals.jsonl", notes) if isinstance(r.get("metrics", {}), dict)]
    run.eval_json = read_json(p / "eval" / "eval.json", notes)
    run.best = read_json(p / "best.json", notes)
    run.curves = _curves(read_json(p / "curves.json", notes, list), notes)
    run.warnings = _warnings(read_jsonl(p / "warnings.jsonl", notes), run.summary.get("warnings"))
    run.samples = _samples(read_jsonl(p / "samples.jsonl", notes), run.evals)
    if not run.metrics and not run.curves:  # a results folder of an example has only curves.json
        subruns = sorted(c.name for c in p.iterdir() if c.is_dir() and (c / "metrics.jsonl").is_file())
        notes.append("no training step logged yet (metrics.jsonl is missing or empty)"
                     + (f"; this folder holds runs: {', '.join(subruns)}" if subruns else ""))
    return run


def _warnings(rows: list[dict[str, Any]], summary_warnings: Any) -> list[tuple[int | None, str]]:
    """warnings.jsonl rows, then summary.json warnings not already among them."""
    out: list[tuple[int | None, str]] = []
    for r in rows:
        step = r.get("step") if isinstance(r.get("step"), int) else None
        out.append((step, str(r.get("message", ""))))
    seen = {m for _, m in out}
    for w in summary_warnings if isinstance(summary_warnings, list) else []:
        if str(w) not in seen:
            out.append((None, str(w)))
    return out


def _samples(rollout: list[dict[str, Any]], evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training rollout samples (source 'rollout') and in-training evaluation samples (source 'eval')."""
    out = [dict(r, source="rollout") for r in rollout if "completion" in r]
    for ev in evals:
        for s in ev.get("samples", []) or []:
            if isinstance(s, dict) and "completion" in s:
                out.append(dict(s, step=ev.get("step"), source="eval"))
    return out


def _curves(value: list[Any], notes: list[str]) -> list[dict[str, Any]]:
    """Valid curves.json plots (contract in docs/report.md); a malformed entry is a note, not an error."""
    out = []
    for i, c in enumerate(value):
        series = c.get("series") if isinstance(c, dict) else None
        ok = isinstance(series, list) and all(
            isinstance(s, dict) and isinstance(s.get("x"), list) and isinstance(s.get("y"), list)
            and len(s["x"]) == len(s["y"]) for s in series)
        if not ok:
            notes.append(f"curves.json, entry {i + 1}: needs 'series': [{{'name', 'x': [...], 'y': [...]}}] "
                         "with x and y of equal length; skipped")
            continue
        out.append(c)
    return out


def status(run: RunData) -> str:
    """'finished', 'running: step k of N' or 'stopped at step k of N' (with the reason when known)."""
    k, n = run.last_step, run.max_steps
    of = f"step {k} of {n}" if n else f"step {k}"
    end = run.info.get("end") if isinstance(run.info.get("end"), dict) else None
    if run.summary and (n is None or k >= n):
        return "finished"
    if n and k >= n and not end:  # every step logged, no summary (yet): saving, or a run from before it
        return f"running: saving after step {k}" if _alive(run.info) else f"trained all {n} steps (no summary.json)"
    if end:
        outcome = str(end.get("outcome", ""))
        return "finished" if outcome == "finished" else f"stopped at {of}" + (
            f" ({outcome})" if outcome and outcome != "stopped" else "")
    if _alive(run.info):
        return f"running: {of}"
    return f"stopped at {of}"


def _alive(info: dict[str, Any]) -> bool:
    """The process that wrote run.json is still running (same host only)."""
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wall_seconds(run: RunData) -> float | None:
    """summary.json's seconds; else start to end (or to now while running) from run.json; else
    the sum of the logged step times."""
    if isinstance(run.summary.get("seconds"), (int, float)):
        return float(run.summary["seconds"])
    start = _parse_time(run.info.get("started"))
    end = run.info.get("end") if isinstance(run.info.get("end"), dict) else {}
    if end:
        stop = _parse_time(end.get("time"))
    elif _alive(run.info):
        stop = time.time()
    else:  # killed: the last write of metrics.jsonl
        metrics = run.path / "metrics.jsonl"
        stop = metrics.stat().st_mtime if metrics.is_file() else None
    if start is not None and stop is not None:
        return max(stop - start, 0.0)
    steps = [r.get("time/step_s") for r in run.metrics]
    total = sum(v for v in steps if isinstance(v, (int, float)) and math.isfinite(v))
    return total or None


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
