"""The logged offline data of Prompt-OIRL: one record per (query, prompt), from one greedy call of
the expensive model, with the verifier's verdict.

A record (one JSON object per line of `records.jsonl`):

    {"split": "train" | "test", "qid": "t17", "kind": "word_mul", "query": "...", "answer": 42,
     "prompt": "shots_word", "prompt_sig": "3f0c...", "model": "smollm2-135m",
     "reply": "...", "extracted": 42.0, "correct": true}

A record is reused when its (split, query text, prompt name, prompt_sig, model) match: `prompt_sig`
fingerprints the prompt's conversation template and generation budget, so editing a prompt
regenerates only its records, and another --model never reads this model's replies. Generation is resumable: records are appended chunk by chunk
(a chunk is a fixed slice of the query list, so a resumed run batches exactly as an uninterrupted
one) and a chunk whose records all exist is skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from rlhflab.errors import DataError
from rlhflab.rewards.math import extract_answer

REQUIRED = ("split", "qid", "kind", "query", "answer", "prompt", "correct")


def prompt_sig(prompt: Any) -> str:
    """A short fingerprint of what the model sees for `prompt` and how long it may answer."""
    text = json.dumps([prompt.conversation("{QUERY}"), prompt.max_new_tokens])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def is_correct(reply: str, answer: float) -> tuple[float | None, bool]:
    """(the reply's final number, whether it equals `answer`), as rlhflab's math verifier reads it."""
    got = extract_answer(reply)
    return got, got is not None and math.isclose(got, answer, rel_tol=1e-6, abs_tol=1e-6)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of `path` (missing file: none); a malformed line is a DataError naming it."""
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(str(path), i, None, f"not valid JSON ({e.msg})", "Delete the line or the file to regenerate.") from e
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise DataError(str(path), i, missing[0], "missing field", "Delete the file to regenerate the logs.")
        out.append(rec)
    return out


def _index(records: list[dict[str, Any]]) -> dict[tuple[str, str, str, str, str], dict[str, Any]]:
    return {_key(r["split"], r["query"], r["prompt"], r.get("prompt_sig", ""), r.get("model", "")): r for r in records}


def _key(split: str, query: str, prompt: str, sig: str, model: str) -> tuple[str, str, str, str, str]:
    return split, query, prompt, sig, model


def _repair_tail(path: Path) -> None:
    """Drop a last line cut short by a kill mid-write, so appending starts on a fresh line."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def _todo(splits: dict[str, list[Any]], prompts: tuple[Any, ...], have: dict, chunk: int,
          model: str) -> list[tuple[str, Any, list[Any]]]:
    """The (split, prompt, chunk of queries) still missing a record."""
    out = []
    for split, queries in splits.items():
        for p in prompts:
            sig = prompt_sig(p)
            for s in range(0, len(queries), chunk):
                part = queries[s:s + chunk]
                if not all(_key(split, q.text, p.name, sig, model) in have for q in part):
                    out.append((split, p, part))
    return out


def generate_logs(chat: Any, model_name: str, splits: dict[str, list[Any]], prompts: tuple[Any, ...], path: Path,
                  chunk: int = 30, progress: bool = True) -> list[dict[str, Any]]:
    """Records for every (split, query, prompt), generating only the missing ones with `chat`
    (an rlhflab ChatModel, `chat=None` when nothing is missing; greedy decoding) and appending them
    to `path`. Returns the records of the current prompts (records of an edited prompt's older
    version stay in the file, unused)."""
    from rich.progress import Progress

    _repair_tail(path)
    have = _index(read_records(path))
    todo = _todo(splits, prompts, have, chunk, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f, Progress(disable=not progress or not todo, transient=False) as bar:
        task = bar.add_task("expensive model: greedy replies", total=sum(len(part) for *_, part in todo))
        for split, p, part in todo:
            sig = prompt_sig(p)
            replies = chat.reply([p.conversation(q.text) for q in part], n=1, max_new_tokens=p.max_new_tokens,
                                 temperature=0.0)
            lines = []
            for q, (reply,) in zip(part, replies):
                got, ok = is_correct(reply, q.answer)
                rec = {"split": split, "qid": q.qid, "kind": q.kind, "query": q.text, "answer": q.answer,
                       "prompt": p.name, "prompt_sig": sig, "model": model_name, "reply": reply,
                       "extracted": got, "correct": ok}
                have[_key(split, q.text, p.name, sig, model_name)] = rec
                lines.append(json.dumps(rec) + "\n")
            f.write("".join(lines))
            f.flush()
            bar.advance(task, len(part))
    sigs = {p.name: prompt_sig(p) for p in prompts}
    return [{**have[_key(split, q.text, p.name, sigs[p.name], model_name)], "qid": q.qid}
            for split, qs in splits.items() for q in qs for p in prompts]


def missing_chunks(model_name: str, splits: dict[str, list[Any]], prompts: tuple[Any, ...], path: Path,
                   chunk: int = 30) -> int:
    """How many chunks of replies `generate_logs` would still have to generate (0: no model needed)."""
    have = _index(read_records(path))
    return len(_todo(splits, prompts, have, chunk, model_name))
