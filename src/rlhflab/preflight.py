"""`rlhflab preflight CONFIG.yaml [key=value ...]`: everything a long run needs, checked in seconds
before it starts (docs/distributed.md, "Preflight").

Run it under the same launcher as the run (`torchrun --nproc_per_node N -m rlhflab preflight
cfg.yaml`) or alone. Every rank checks the config and data exactly as `rlhflab train` does, joins
the process group, compares its config, data and versions with the other ranks, times all_reduce,
reads its device and free memory, plans its memory from the model folders' files (no weights
load) and checks the disk. Rank 0 prints one table of PASS / WARN / FAIL lines for every rank.

Exit code: 0 when nothing failed; 1 when an environment check failed (joining, collectives,
devices, versions); else 2 when a user-fixable check failed (config, data, batch plan, output
directory, memory, disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rlhflab.errors import ConfigError, DataError, UserError

STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}


@dataclass(frozen=True)
class Check:
    """One line of the preflight table."""

    name: str
    status: str
    """PASS | WARN | FAIL."""
    detail: str
    user: bool = True
    """A FAIL the user fixes in the config, data or paths (exit 2); False: the environment (exit 1)."""


def exit_code(checks: list[Check]) -> int:
    """1 when an environment check failed, else 2 when a user-fixable one did, else 0."""
    failed = [c for c in checks if c.status == "FAIL"]
    if any(not c.user for c in failed):
        return 1
    return 2 if failed else 0


# ---------------------------------------------------------------------------------------- inputs


def _digest(paths: list[str]) -> str:
    """sha256 of the bytes of the files (folders: every file inside, in sorted order)."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        for f in sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:12]


def config_hash(cfg: Any) -> str:
    from rlhflab.config import to_dict

    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()).hexdigest()[:12]


def _paths(value: Any) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


@dataclass
class Inputs:
    """This rank's validated inputs (None where a check failed) and its check lines."""

    checks: list[Check]
    cfg: Any = None
    validated: Any = None
    data: dict[str, Any] | None = None


def check_inputs(config: str, overrides: list[str]) -> Inputs:
    """The config, the batch plan, the data rows and the output directory, as `rlhflab train` checks them."""
    from rlhflab.config import load_config

    try:
        cfg = load_config(config, overrides)
    except UserError as e:
        return Inputs([Check("config", "FAIL", str(e))])
    out = Inputs([Check("config", "PASS", f"{config}: algorithm {cfg.algorithm}, model {cfg.model}, "
                                          f"hash {config_hash(cfg)}")], cfg)
    if cfg.algorithm == "self_rewarding":
        out.checks.append(Check("inputs", "WARN", "self_rewarding drives several DPO runs: preflight checks its config, "
                                                  "the process group, devices and disk, not its data or memory"))
        return out
    from rlhflab.algorithms import get_algorithm
    from rlhflab.train.run import validate_inputs

    try:  # first on its own, for a line of its own (validate_inputs builds it again: cheap)
        get_algorithm(cfg).batch_plan()
    except UserError as e:
        out.checks.append(Check("batch plan", "FAIL", str(e)))
        return out
    notes = Console(file=io.StringIO(), soft_wrap=True, color_system=None)  # one line per warning
    try:
        v = validate_inputs(cfg, notes)
    except UserError as e:
        name = ("data" if isinstance(e, DataError) else "config" if isinstance(e, ConfigError)
                else "output_dir" if str(e).startswith("output_dir") else "inputs")
        out.checks.append(Check(name, "FAIL", str(e)))
        return out
    out.validated = v
    out.checks.append(Check("batch plan", "PASS", v.plan.describe(v.algo.plan_unit)))
    files = _paths(cfg.data.train) + _paths(cfg.data.eval)
    out.data = {"train": len(v.examples), "eval": len(v.eval_examples or []), "digest": _digest(files)}
    out.checks.append(Check("data", "PASS", f"{v.train_info.path} ({v.train_info.format}): {out.data['train']} training "
                                            f"{v.algo.item_name}, {out.data['eval']} eval, sha256 {out.data['digest']}"))
    for line in notes.file.getvalue().splitlines():
        if line.startswith("warning:"):
            out.checks.append(Check("data", "WARN", line.removeprefix("warning:").strip()))
    what = (f"resumes from {v.resume_ckpt}" if v.resume_ckpt else "overwrites the run there" if cfg.overwrite and
            v.out.exists() else "a new run")
    out.checks.append(Check("output_dir", "PASS", f"{v.out}: {what}"))
    return out


# ---------------------------------------------------------------------------------------- memory and disk


def human_bytes(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1 (B, KiB, MiB, GiB, TiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n:,.2f} TiB"


def _ratio_status(need: float, have: float) -> str:
    return "FAIL" if need > 0.95 * have else "WARN" if need > 0.80 * have else "PASS"


def memory_check(inputs: Inputs, world: int, device: Any) -> tuple[list[Check], Any]:
    """The memory plan of this rank against its free device memory (FAIL above 95%, WARN above 80%)."""
    from rlhflab.preflight_memory import build_plan

    v, available = inputs.validated, device.available
    try:
        plan = build_plan(inputs.cfg, v.algo, world, device.type, bool(v.eval_examples), device_total=device.total)
    except UserError as e:
        return [Check("memory plan", "FAIL", str(e))], None
    if available is None:
        return [Check("memory plan", "WARN", f"peak ~{human_bytes(plan.peak)} per rank; free memory unknown")], plan
    status = _ratio_status(plan.peak, available)
    hint = ("; lower micro_batch_size or data.max_length, use lora, or distributed.strategy: fsdp over more ranks"
            if status != "PASS" else "")
    return [Check("memory plan", status, f"peak ~{human_bytes(plan.peak)} per rank = {plan.peak / available:.0%} of "
                                         f"{human_bytes(available)} available{hint}")], plan


def disk_check(cfg: Any, plan: Any) -> Check:
    """output_dir (or its nearest existing parent) is writable and holds the checkpoints and final model."""
    import shutil
    import tempfile

    out = Path(cfg.output_dir).resolve()
    base = next(p for p in (out, *out.parents) if p.exists())
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".rlhflab-preflight-"):
            pass
    except OSError as e:
        return Check("disk", "FAIL", f"output_dir {cfg.output_dir}: cannot write in {base}: {e.strerror or e}")
    free = shutil.disk_usage(base).free
    if plan is None:
        return Check("disk", "PASS", f"{base} writable, {human_bytes(free)} free")
    need = plan.checkpoint_bytes * (cfg.keep_checkpoints + 1) + plan.final_bytes
    status = _ratio_status(need, free)
    return Check("disk", status, f"{base}: {cfg.keep_checkpoints} + 1 checkpoints x {human_bytes(plan.checkpoint_bytes)} + "
                                 f"final {human_bytes(plan.final_bytes)} = {human_bytes(need)} of {human_bytes(free)} free"
                 + ("; free space or lower keep_checkpoints" if status != "PASS" else ""))


# ---------------------------------------------------------------------------------------- the run


def run_preflight(config: str, overrides: list[str] | None = None, console: Console | None = None) -> int:
    """Check everything on this rank, gather every rank's lines, print the table on rank 0; the exit code."""
    from rlhflab.preflight_dist import check_agreement, check_collectives, identity, join
    from rlhflab.train.distributed import shutdown

    console = console or Console()
    inputs = check_inputs(config, list(overrides or []))
    ctx, joined, join_s = join(inputs.cfg)
    if ctx is None:  # this rank never joined: it can only speak for itself
        return _finish(console, [inputs.checks + joined], None, rank=int(os.environ.get("RANK", "0")))
    try:
        local, plan = local_checks(inputs, ctx)  # before any collective: reported even when one fails
        group: list[Check] = []
        status = (console if ctx.is_main else Console(quiet=True)).status("preflight: comparing ranks, timing all_reduce")
        try:
            with status:
                group += check_agreement(ctx, identity(inputs, join_s))
                group += check_collectives(ctx)
                every = ctx.all_gather_object(inputs.checks + joined + group + local)
        except RuntimeError as e:  # CollectiveTimeout (names rank and phase) or a rank that died
            mine = inputs.checks + joined + group + [Check("collectives", "FAIL", str(e), user=False)] + local
            return _finish(console, [mine], plan, rank=ctx.rank)
        code = _finish(console, every, plan) if ctx.is_main else exit_code([c for x in every for c in x])
        with contextlib.suppress(RuntimeError):  # torchrun stops every rank at the first non-zero exit:
            ctx.barrier()  # none leaves before rank 0 has printed
        return code
    finally:
        shutdown(ctx)


def local_checks(inputs: Inputs, ctx: Any) -> tuple[list[Check], Any]:
    """This rank's device, memory plan and disk lines (no collective), and its memory plan."""
    from rlhflab.preflight_dist import check_device, check_engine

    device, checks = check_device(inputs.cfg, ctx)
    plan = None
    if inputs.validated is not None and device.type is not None:
        checks += check_engine(inputs.cfg, inputs.validated.algo, device)
        lines, plan = memory_check(inputs, ctx.world_size, device)
        checks += lines
    if inputs.cfg is not None:
        checks.append(disk_check(inputs.cfg, plan))
    return checks, plan


def _finish(console: Console, every: list[list[Check]], plan: Any, rank: int | None = None) -> int:
    """Print the table (rank 0, or a rank that reports alone) and return the exit code."""
    code = exit_code([c for lines in every for c in lines])
    if rank not in (None, 0):
        console = Console(stderr=True)
    console.print(render(every, rank))
    if plan is not None:
        console.print(render_plan(plan))
    warns = sum(c.status == "WARN" for lines in every for c in lines)
    ready = "[green]ready[/]" + (f", with {warns} warning(s)" if warns else "")
    verdict = {0: ready, 1: "[bold red]environment failure[/]", 2: "[bold red]fix the FAIL lines[/]"}[code]
    console.print(f"preflight: {verdict} (exit code {code})")
    return code


def merge(every: list[list[Check]]) -> list[tuple[str, Check]]:
    """(rank label, check) rows: a line every rank reports alike once ('all'), else one row per rank."""
    order: list[tuple[str, int]] = []
    by_key: dict[tuple[str, int], list[tuple[int, Check]]] = {}
    for rank, lines in enumerate(every):
        seen: dict[str, int] = {}
        for c in lines:
            key = (c.name, seen.get(c.name, 0))
            seen[c.name] = key[1] + 1
            if key not in by_key:
                order.append(key)
                by_key[key] = []
            by_key[key].append((rank, c))
    rows: list[tuple[str, Check]] = []
    for key in order:
        got = by_key[key]
        if len(every) > 1 and len(got) == len(every) and len({(c.status, c.detail) for _, c in got}) == 1:
            rows.append(("all", got[0][1]))
        else:
            rows += [(str(r), c) for r, c in got]
    return rows


def render(every: list[list[Check]], rank: int | None = None) -> Table:
    title = "rlhflab preflight" + (f" (rank {rank} alone)" if rank is not None else "")
    table = Table(title=title, show_lines=False, expand=False)
    for col in ("check", "rank", "status", "detail"):
        table.add_column(col, overflow="fold", no_wrap=col in ("status", "rank"))
    for label, c in merge(every):
        if rank is not None:
            label = str(rank)
        table.add_row(c.name, label, f"[{STYLE[c.status]}]{c.status}[/]", c.detail)
    return table


def render_plan(plan: Any) -> Table:
    table = Table(title="memory plan per rank (docs/distributed.md)")
    for col, justify in (("component", "left"), ("phase", "left"), ("size", "right"), ("how", "left")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for line in plan.lines:
        table.add_row(line.name, line.phase, human_bytes(line.bytes), line.detail)
    table.add_row("[bold]peak[/]", "", f"[bold]{human_bytes(plan.peak)}[/]", "held + max(train, generate)")
    return table
