"""Fixtures for data tests: a tiny byte-level ChatML tokenizer built in code, file writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhflab.testing import tiny_tokenizer


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def jsonl(tmp_path):
    """jsonl(rows, name="data.jsonl") -> path of a JSONL file holding `rows`."""

    def make(rows: list, name: str = "data.jsonl") -> Path:
        return write_jsonl(tmp_path / name, rows)

    return make
