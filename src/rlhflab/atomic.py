"""Atomic file writes: the text goes to a temporary file beside the target, which is then renamed
into place, so a reader (or a run killed mid-write) sees the old file or the complete new one,
never a partial one. Standard library only, so light modules (the report) can use it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, creating the parent folder, with a normal file's
    mode (mkstemp's 0600 is widened by the umask like an ordinary open)."""
    write_lines_atomic(path, [text])


def write_lines_atomic(path: str | os.PathLike, chunks: Iterable[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """`rows` as JSON Lines, written atomically."""
    write_lines_atomic(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
