"""Read a data file into plain records, with errors that name the file, the row and the problem.

Supported inputs:

- ``.jsonl``: one JSON object per line; ``Record.row`` is the 1-based line number (blank lines are
  skipped but still counted).
- ``.json``: a list of objects, or an object holding one list of objects (e.g. ``{"data": [...]}``
  or ``{"train": [...]}``). A ``.json`` file that is really JSON Lines is read as JSON Lines.
- ``.parquet`` and ``.csv`` (read with pyarrow; CSV types are inferred, so ``true``/``false`` become
  booleans and numbers become numbers).
- a folder written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``: its ``train`` split,
  or its only split).

For every format but JSONL, ``Record.row`` is the 1-based record index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhflab.errors import DataError

SUPPORTED = (".jsonl", ".json", ".parquet", ".csv")
SUPPORTED_TEXT = "JSONL (.jsonl), JSON (.json), Parquet (.parquet), CSV (.csv), or a `datasets` folder saved with save_to_disk"
_LIST_KEYS = ("data", "train", "rows", "examples", "records")


@dataclass
class Record:
    """One row of a data file."""

    row: int  # 1-based line (JSONL) or record index (other formats)
    data: dict[str, Any]


def read_records(path: str | Path) -> list[Record]:
    """Read every record of a data file (see the module docstring for the formats)."""
    p = Path(path)
    if not p.exists():
        raise DataError(str(p), None, None, "file not found", "Check the path (data.train / data.eval).")
    if p.is_dir():
        records = _read_datasets_folder(p)
    else:
        suffix = p.suffix.lower()
        if suffix == ".jsonl":
            records = _read_jsonl(p, p.read_bytes())
        elif suffix == ".json":
            records = _read_json(p)
        elif suffix == ".parquet":
            records = _read_parquet(p)
        elif suffix == ".csv":
            records = _read_csv(p)
        else:
            raise DataError(
                str(p), None, None, f"unknown file extension '{p.suffix or '(none)'}'",
                f"Supported: {SUPPORTED_TEXT}.",
            )
    if not records:
        raise DataError(str(p), None, None, "no rows: the file holds no records", "Give a file with at least one example.")
    return records


# --------------------------------------------------------------------------- JSON / JSONL


def _decode_line(p: Path, raw: bytes, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            str(p), lineno, None,
            f"not UTF-8 text: invalid byte 0x{raw[e.start]:02x} at byte offset {e.start} of line {lineno}",
            "Re-save the file as UTF-8.",
        ) from None


def _read_jsonl(p: Path, content: bytes) -> list[Record]:
    records = []
    for lineno, raw in enumerate(content.split(b"\n"), start=1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
            raw = raw[3:]
        text = _decode_line(p, raw, lineno)
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                str(p), lineno, None, f"invalid JSON on line {lineno}, column {e.colno}: {e.msg}",
                "Each line of a JSONL file must be one complete JSON object.",
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                str(p), lineno, None, f"line {lineno} is a JSON {_json_type(obj)}, expected an object {{...}}",
                'Each line must look like {"prompt": ..., ...}.',
            )
        records.append(Record(lineno, obj))
    return records


def _json_type(obj: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(obj), "null")


def _read_json(p: Path) -> list[Record]:
    content = p.read_bytes()
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = content.count(b"\n", 0, e.start) + 1
        offset = e.start - (content.rfind(b"\n", 0, e.start) + 1)
        raise DataError(
            str(p), line, None,
            f"not UTF-8 text: invalid byte 0x{content[e.start]:02x} at byte offset {offset} of line {line}",
            "Re-save the file as UTF-8.",
        ) from None
    if not text.strip():
        return []
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        first = text.lstrip().split("\n", 1)[0]
        if first.startswith("{") and _is_json_object(first):  # JSON Lines saved as .json
            return _read_jsonl(p, content)
        raise DataError(str(p), e.lineno, None, f"invalid JSON on line {e.lineno}, column {e.colno}: {e.msg}") from None
    items = _json_items(p, obj)
    records = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise DataError(str(p), i, None, f"record {i} is a JSON {_json_type(item)}, expected an object {{...}}")
        records.append(Record(i, item))
    return records


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _json_items(p: Path, obj: Any) -> list[Any]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if len(lists) == 1 and len(obj) == 1:
            return obj[lists[0]]
        for key in _LIST_KEYS:
            if isinstance(obj.get(key), list):
                return obj[key]
    raise DataError(
        str(p), None, None, "a JSON file must hold a list of objects, or an object with one list of objects",
        'E.g. [{"prompt": ...}, ...] or {"data": [{"prompt": ...}, ...]}; or use JSONL.',
    )


# --------------------------------------------------------------------------- columnar files


def _read_parquet(p: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise DataError(str(p), None, None, f"cannot read Parquet: {e}") from None
    return [Record(i, d) for i, d in enumerate(table.to_pylist(), start=1)]


def _read_csv(p: Path) -> list[Record]:
    import pyarrow.csv as pcsv

    content = p.read_bytes()
    for lineno, raw in enumerate(content.split(b"\n"), start=1):
        _decode_line(p, raw, lineno)
    if not content.strip():
        return []
    try:
        table = pcsv.read_csv(p)
    except Exception as e:
        raise DataError(str(p), None, None, f"cannot read CSV: {e}") from None
    return [Record(i, d) for i, d in enumerate(table.to_pylist(), start=1)]


def _read_datasets_folder(p: Path) -> list[Record]:
    if not ((p / "dataset_info.json").exists() or (p / "state.json").exists() or (p / "dataset_dict.json").exists()):
        raise DataError(
            str(p), None, None, "a folder, but not a `datasets` folder saved with save_to_disk",
            f"Give a file path instead. Supported: {SUPPORTED_TEXT}.",
        )
    import datasets  # lazy: heavy import

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        raise DataError(str(p), None, None, f"cannot load the `datasets` folder: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataError(
                str(p), None, None, f"a DatasetDict with splits {sorted(ds)} and none named 'train'",
                "Point at one split's folder, or save the split you want on its own.",
            )
    return [Record(i, dict(d)) for i, d in enumerate(ds, start=1)]
