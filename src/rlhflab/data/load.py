"""`load_examples`: read a file, detect its format, validate every row (no tokenizer needed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from rlhflab.data.examples import LoadedData
from rlhflab.data.formats import rename_warnings, resolve_format
from rlhflab.data.io import Record, read_records
from rlhflab.data.normalize import DropRow, normalize_row
from rlhflab.errors import DataError

_MAX_WARNINGS = 20  # individual warnings kept; the counts in `dropped` are always complete


def load_examples(path: str | Path, kind: str | None, format: str = "auto") -> LoadedData:
    """Read and validate a data file for an algorithm kind (sft | pairwise | unpaired | prompt).

    `kind=None` accepts any format and returns its natural example type (inspection).
    Raises DataError on the first invalid row; rows with identical chosen and rejected are
    dropped with a warning; if no row is left, raises DataError.
    """
    records = read_records(path)
    return examples_from_records(records, str(path), kind, format)


def load_files(paths: str | Path | Sequence[str | Path], kind: str | None, format: str = "auto",
               check: Callable[[LoadedData], None] | None = None) -> list[LoadedData]:
    """`load_examples` of one file, or of each file of a list (`data.train: [a.jsonl, b.jsonl]`),
    each read, validated and passed to `check` on its own so every error names its own file and
    row. The examples of a list are marked with their file (`source`) for later errors (the
    tokenizer's). Use `concat_loaded` to join the parts."""
    many = not isinstance(paths, (str, Path))
    parts = []
    for path in (paths if many else [paths]):
        part = load_examples(path, kind, format)
        if many:
            for ex in part.examples:
                ex.source = str(path)
        if check is not None:
            check(part)
        parts.append(part)
    return parts


def concat_loaded(parts: list[LoadedData]) -> LoadedData:
    """The files' examples in order as one LoadedData: `path` joins the file names with ' + ',
    `format` the distinct formats with '+' (e.g. 'pairwise+transcript': the algorithms' own checks
    ran per file in `load_files`)."""
    if len(parts) == 1:
        return parts[0]
    formats = list(dict.fromkeys(p.format for p in parts))
    out = LoadedData(path=" + ".join(p.path for p in parts), format="+".join(formats), kind=parts[0].kind,
                     examples=[ex for p in parts for ex in p.examples], num_rows=sum(p.num_rows for p in parts))
    for p in parts:
        for reason, n in p.dropped.items():
            out.dropped[reason] = out.dropped.get(reason, 0) + n
        out.warnings += p.warnings
    return out


def examples_from_records(records: list[Record], path: str, kind: str | None, format: str = "auto") -> LoadedData:
    """Like `load_examples`, for records already in memory (`path` names them in messages)."""
    if not records:
        raise DataError(path, None, None, "no rows")
    first = records[0]
    fmt = resolve_format(path, first.row, set(first.data), kind, format)
    out = LoadedData(path=path, format=fmt, kind=kind, examples=[], num_rows=len(records))
    out.warnings += [f"{path}: {w}" for w in rename_warnings(set(first.data), fmt)]
    for rec in records:
        try:
            out.examples.append(normalize_row(path, rec.row, rec.data, fmt, kind))
        except DropRow as drop:
            out.dropped[drop.reason] = out.dropped.get(drop.reason, 0) + 1
            if len(out.warnings) < _MAX_WARNINGS:
                out.warnings.append(str(drop))
    _check_margins(out)
    if not out.examples:
        reasons = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in out.dropped.items())
        raise DataError(path, None, None, f"every row was dropped ({reasons}); nothing to train on")
    if out.dropped:
        total = sum(out.dropped.values())
        out.warnings.insert(0, f"{path}: dropped {total} of {len(records)} rows: {out.dropped}")
    return out


def _check_margins(out: LoadedData) -> None:
    if out.format not in ("pairwise", "transcript", "safety") or out.kind == "prompt":
        return
    have = [getattr(ex, "margin", None) is not None for ex in out.examples]
    if any(have) and not all(have):
        out.warnings.append(
            f"{out.path}: {have.count(False)} of {len(have)} rows have no 'margin'; they count as margin 0"
        )
