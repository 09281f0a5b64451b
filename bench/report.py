"""The ratios and the markdown of a results JSON of bench/run.py (also `run.py --markdown-only`).

Standard library only: the tables can be rendered again from the JSON anywhere.
"""

from __future__ import annotations

from typing import Any

SUITE_ORDER = ("sft", "rm", "dpo", "grpo", "generate")
SAME_BATCHES = ("sft", "rm", "dpo")  # both sides train on the same batches, so their losses are comparable


def _f(x: Any, fmt: str = ".3f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _mem(row: dict) -> float | None:
    """Peak memory of the row's process: GPU memory on a GPU, else RSS (MiB)."""
    return row.get("peak_gpu_mib") or row.get("peak_rss_mib")


def _rate(row: dict) -> float | None:
    s = row.get("effective_step_s")
    return 1.0 / s if s else None


def matching_trl(variant: str, trl: dict[str, dict], plain: str) -> dict | None:
    """The TRL row that does what the rlhflab variant does: the same name, or for DPO
    `precompute` -> `<plain>_precompute` and `online` -> `<plain>`."""
    if variant in trl:
        return trl[variant]
    return trl.get(f"{plain}_precompute" if variant == "precompute" else plain)


def max_loss_diff(a: dict, b: dict) -> float | None:
    la, lb = (a.get("detail") or {}).get("losses") or [], (b.get("detail") or {}).get("losses") or []
    diffs = [abs(x - y) for x, y in zip(la, lb) if x is not None and y is not None]
    return max(diffs) if diffs else None


def training_summary(results: dict) -> list[dict]:
    """Per suite, model and rlhflab variant: steps/s against the matching and the fastest TRL
    variant, memory and MFU (steps/s use the amortized step where a precompute pass exists)."""
    plain = "fp32" if results["machine"].get("device", "cpu") == "cpu" else "bf16"
    out = []
    for suite in SUITE_ORDER:
        rows = [r for r in results["rows"] if r["suite"] == suite and suite != "generate"]
        for model in dict.fromkeys(r["model"] for r in rows):
            ok = [r for r in rows if r["model"] == model and _rate(r)]
            trl = {r["variant"]: r for r in ok if r["framework"] == "trl"}
            best = max(trl.values(), key=_rate) if trl else None
            for r in (r for r in ok if r["framework"] == "rlhflab"):
                m = matching_trl(r["variant"], trl, plain)
                e = {"suite": suite, "model": model, "rlhflab": r["variant"], "rlhflab_steps_per_s": _rate(r),
                     "rlhflab_mfu": r.get("mfu")}
                if m is not None:
                    e.update({"trl": m["variant"], "trl_steps_per_s": _rate(m), "ratio": _rate(r) / _rate(m),
                              "memory_ratio": _mem(r) / _mem(m) if _mem(r) and _mem(m) else None,
                              "trl_mfu": m.get("mfu"),
                              "max_loss_diff": max_loss_diff(r, m) if suite in SAME_BATCHES else None})
                if best is not None:
                    e.update({"best_trl": best["variant"], "ratio_vs_best": _rate(r) / _rate(best)})
                out.append(e)
    return out


def generation_summary(results: dict) -> list[dict]:
    out = []
    rows = [r for r in results["rows"] if r["suite"] == "generate" and "tokens_per_s" in r]
    for model in dict.fromkeys(r["model"] for r in rows):
        side = {r["framework"]: r for r in rows if r["model"] == model}
        ours, hf = side.get("rlhflab"), side.get("hf-generate")
        if ours and hf:
            out.append({"model": model, "rlhflab_tokens_per_s": ours["tokens_per_s"], "hf_tokens_per_s": hf["tokens_per_s"],
                        "ratio": ours["tokens_per_s"] / hf["tokens_per_s"], "rlhflab_mfu": ours.get("mfu"),
                        "hf_mfu": hf.get("mfu"), "rlhflab_length": ours["mean_completion_length"],
                        "hf_length": hf["mean_completion_length"]})
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def summary_tables(results: dict) -> str:
    lines = ["| suite | model | rlhflab variant | rlhflab steps/s | TRL variant | TRL steps/s | rlhflab / TRL "
             "| vs fastest TRL | peak memory rlhflab / TRL | MFU rlhflab | MFU TRL | max loss diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in training_summary(results):
        vs_best = f"{e['ratio_vs_best']:.2f}x ({e['best_trl']})" if "best_trl" in e else "-"
        lines.append(f"| {e['suite']} | {e['model']} | {e['rlhflab']} | {e['rlhflab_steps_per_s']:.3g} "
                     f"| {e.get('trl', '-')} | {_f(e.get('trl_steps_per_s'), '.3g')} | **{_f(e.get('ratio'), '.2f')}x** "
                     f"| {vs_best} | {_f(e.get('memory_ratio'), '.2f')} | {_pct(e.get('rlhflab_mfu'))} "
                     f"| {_pct(e.get('trl_mfu'))} | {_f(e.get('max_loss_diff'), '.1e')} |")
    gen = generation_summary(results)
    if gen:
        lines += ["", "| generation | model | rlhflab HFGenerator tokens/s | plain HF generate tokens/s | rlhflab / HF "
                  "| mean length (rlhflab / HF) | MFU rlhflab | MFU HF |", "|---|---|---|---|---|---|---|---|"]
        for g in gen:
            lines.append(f"| generate | {g['model']} | {g['rlhflab_tokens_per_s']:.0f} | {g['hf_tokens_per_s']:.0f} "
                         f"| **{g['ratio']:.2f}x** | {g['rlhflab_length']:.1f} / {g['hf_length']:.1f} "
                         f"| {_pct(g['rlhflab_mfu'])} | {_pct(g['hf_mfu'])} |")
    return "\n".join(lines)


def _ids(row: dict) -> str:
    check = (row.get("detail") or {}).get("ids_vs_rlhflab")
    return "-" if not check else f"{check['identical']}/{check['sequences']}"


def detail_table(results: dict, suite: str) -> str:
    rows = [r for r in results["rows"] if r["suite"] == suite]
    if not rows:
        return ""
    if suite == "generate":
        lines = ["| model | engine | call (s, median / best) | tokens/s (median) | mean length | peak RSS (MiB, shared) "
                 "| MFU |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['model']} | failed (exit {r['exit_code']}) | | | | | |")
                continue
            lines.append(f"| {r['model']} | {r['framework']} / {r['variant']} | {r['call_s_median']:.3f} / "
                         f"{r['call_s_min']:.3f} | {r['tokens_per_s']:.0f} | {r['mean_completion_length']:.1f} "
                         f"| {r['peak_rss_mib']:.0f} | {_pct(r.get('mfu'))} |")
        return "\n".join(lines)
    extra = suite == "grpo"
    head = ("| model | framework / variant | step (s, median) | steps/s | amortized step (s) | precompute (s) "
            + ("| completions/s | generate (s/step) | mean completion length " if extra else "")
            + "| peak memory (MiB) | MFU | TRL ids = rlhflab | wall (s) |")
    ncol = head.count("|") - 1
    lines = [head, "|" + "---|" * ncol]
    for r in rows:
        name = f"{r['framework']} / {r['variant']}"
        if "step_s_median" not in r:
            lines.append(f"| {r['model']} | {name} | failed (exit {r.get('exit_code')}) |" + " |" * (ncol - 3))
            continue
        pre = _f(r.get("precompute_s"), ".1f")
        if r.get("precompute_source") == "before_training_s":
            pre += " (before_training_s)"
        cells = [r["model"], name, f"{r['step_s_median']:.3f}", f"{r['steps_per_s']:.3g}",
                 _f(r.get("amortized_step_s")), pre]
        if extra:
            cells += [_f(r.get("completions_per_s"), ".3g"), _f(r.get("generate_s_median")),
                      _f(r.get("mean_completion_length"), ".1f")]
        cells += [_f(_mem(r), ".0f"), _pct(r.get("mfu")), _ids(r), f"{r['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def doc_markers(block: str) -> tuple[str, str]:
    """The two comment lines that delimit a results block named `block` in a markdown document."""
    return (f"<!-- bench/run.py {block}: start (`bench/run.py --markdown-only RESULTS.json --doc FILE "
            f"--doc-block {block}` replaces what lies between these lines) -->", f"<!-- bench/run.py {block}: end -->")


def fill_doc(doc: str, results: dict, block: str = "results", level: int = 2) -> str:
    """`doc` with its block `block` replaced by the results' markdown (headings from `level`)."""
    start, end = doc_markers(block)
    if start not in doc or end not in doc or doc.index(start) > doc.index(end):
        raise ValueError(f"no '{block}' block in the document; put these two lines where it goes:\n{start}\n{end}")
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n\n{markdown(results, level=level)}\n{end}{tail}"


def markdown(results: dict, level: int = 1) -> str:
    """The whole report: provenance, the summary, the peak, every suite's own table. Level 1: a
    page of its own with a title; deeper: a block inside a section of that level (no title), its
    sections one level below."""
    m = results["machine"]
    trl_env = m.get("trl_env") or {}
    peak = results.get("peak")
    h = "#" * (level + 1)
    parts = [
        f"Command: `{m['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads per process, device {m['device']}"
        + (f" ({m['gpu']})" if m.get("gpu") else "") + f"; Python {m['python']}, torch {m['torch']}, transformers "
        f"{m['transformers']}; TRL env: trl {trl_env.get('trl', '-')}, torch {trl_env.get('torch', '-')}, transformers "
        f"{trl_env.get('transformers', '-')}; vllm: {m.get('vllm', 'not available')}.",
        "",
        ("**Partial results: the run stopped before its last suite.**\n\n" if results.get("complete") is False else "")
        + f"Date {m['date']}, git {str(m.get('git_commit'))[:12]}{' (uncommitted changes)' if m.get('git_dirty') else ''}; "
        f"load average at start {_loads(m.get('load_average_start'))}, at end {_loads(m.get('load_average_end'))}.",
        "",
        "Matmul peak: " + (f"{peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['dtype']} torch.matmul, n={peak['best_size']}, "
                           f"best of {peak['reps']}, {peak['threads']} threads{_runs(peak)})" if peak
                           else "not measured (suite mfu not run)"),
        "",
        f"{h} Summary",
        "",
        summary_tables(results),
    ]
    if level == 1:
        parts = ["# rlhflab benchmark suite: rlhflab next to TRL", ""] + parts
    for suite in SUITE_ORDER:
        table = detail_table(results, suite)
        if table:
            parts += ["", f"{h} {suite}", "", _settings_line(results, suite), "", table]
    return "\n".join(parts) + "\n"


def _runs(peak: dict) -> str:
    runs = peak.get("measurements_flops_per_s") or []
    if len(runs) < 2:
        return ""
    return "; the higher of the measurements before and after the suites: " + \
        ", ".join(f"{r / 1e9:.1f}" for r in runs)


def _loads(x: Any) -> str:
    return "-" if not x else "/".join(f"{v:.1f}" for v in x)


def _settings_line(results: dict, suite: str) -> str:
    s = results.get("suites", {}).get(suite, {})
    settings = ", ".join(f"{k} {v}" for k, v in s.get("settings", {}).items())
    tokens = s.get("tokens", {})
    tok = "; ".join(f"{k} {v['mean']:.1f} tokens" for k, v in tokens.items() if isinstance(v, dict) and "mean" in v)
    flags = "; ".join(f"{k}: {v}" for k, v in tokens.items() if isinstance(v, bool))
    return f"Settings: {settings}." + (f" Token means: {tok}." if tok else "") + (f" {flags}." if flags else "")
