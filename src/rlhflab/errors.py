"""User-facing errors. The CLI prints their message (no traceback) and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with what the user gave us (config, data, paths). Exit code 2."""


class ConfigError(UserError):
    """A configuration value or key is invalid."""


class DataError(UserError):
    """A data file is invalid.

    The message names the file, the row (1-based line for JSONL, 1-based record otherwise),
    the field, and what was expected.
    """

    def __init__(self, path: str, row: int | None, field: str | None, problem: str, hint: str = ""):
        self.path, self.row, self.field, self.problem, self.hint = path, row, field, problem, hint
        where = str(path)
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        msg = f"{where}: {problem}"
        if hint:
            msg += f"\n{hint}"
        super().__init__(msg)


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The closest of `choices` to `name`, or None when nothing is close."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' or '' when no choice is close."""
    best = closest(name, choices)
    return f" Did you mean '{best}'?" if best else ""
