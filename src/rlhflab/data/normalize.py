"""Validate one row of a known format and turn it into a normalized example (no tokenizer)."""

from __future__ import annotations

import math
import re
from typing import Any

from rlhflab.data.examples import Message, PairExample, PromptExample, SFTExample, UnpairedExample
from rlhflab.data.formats import FORMATS, PAIR_SCORE_COLUMNS
from rlhflab.errors import DataError, did_you_mean

ROLES = ("system", "user", "assistant", "tool")
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ASSISTANT = "\n\nAssistant:"


class DropRow(Exception):
    """A row to skip (counted under `reason`), not an error."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _text(path: str, row: int, field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DataError(path, row, field, f"expected a string, got {_type_name(value)} {str(value)[:40]!r}")
    if not value.strip():
        raise DataError(path, row, field, "empty text (empty or only whitespace)", "Remove the row or fill it in.")
    return value


def messages(path: str, row: int, field: str, value: Any, default_role: str) -> list[Message]:
    """A string (one message of `default_role`) or a list of {role, content} dicts, checked."""
    if isinstance(value, str):
        return [{"role": default_role, "content": _text(path, row, field, value)}]
    if not isinstance(value, (list, tuple)):
        raise DataError(
            path, row, field, f"expected a string or a list of messages, got {_type_name(value)} {str(value)[:40]!r}"
        )
    if not value:
        raise DataError(path, row, field, "empty message list")
    out = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise DataError(path, row, where, 'expected a message {"role": ..., "content": ...}, got ' + repr(msg)[:60])
        role = msg["role"]
        if isinstance(role, str) and role.lower() in _ROLE_ALIASES:
            role = _ROLE_ALIASES[role.lower()]
        if role not in ROLES:
            raise DataError(
                path, row, where + ".role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}."
                + did_you_mean(str(role), ROLES),
            )
        out.append({"role": role, "content": _text(path, row, where + ".content", msg["content"])})
    return out


def _bool(path: str, row: int, field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DataError(path, row, field, f"expected true or false, got {_type_name(value)} {value!r}")
    return value


def _number(path: str, row: int, data: dict[str, Any], field: str) -> float | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(path, row, field, f"expected a finite number, got {_type_name(value)} {value!r}")
    return float(value)


def _pair_scores(path: str, row: int, data: dict[str, Any]) -> dict[str, float]:
    out = {}
    for col in PAIR_SCORE_COLUMNS:
        value = _number(path, row, data, col)
        if value is None:
            continue
        if col.endswith("winrate") and not 0.0 <= value <= 1.0:
            raise DataError(path, row, col, f"a win rate must be in [0, 1], got {value}")
        out[col] = value
    return out


def _completion(path: str, row: int, field: str, value: Any) -> list[Message]:
    msgs = messages(path, row, field, value, "assistant")
    if msgs[0]["role"] != "assistant":
        raise DataError(path, row, field, f"a completion must start with an assistant message, not {msgs[0]['role']!r}")
    return msgs


def normalize_row(path: str, row: int, data: dict[str, Any], fmt: str, kind: str | None) -> Any:
    """One row of format `fmt` as the example type of `kind`. Raises DataError or DropRow."""
    for col in FORMATS[fmt]:
        if col not in data:
            raise DataError(path, row, col, f"missing column '{col}' (format '{fmt}' needs {', '.join(FORMATS[fmt])})")
    if kind == "prompt" or fmt == "prompt":
        return _prompt_example(path, row, data, fmt)
    if fmt == "messages":
        msgs = messages(path, row, "messages", data["messages"], "user")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(path, row, "messages", "no assistant turn: nothing to train on")
        if next(m["role"] for m in msgs if m["role"] != "system") == "assistant":
            raise DataError(path, row, "messages", "the chat starts with an assistant turn; it needs a user turn first")
        return SFTExample(msgs, row)
    if fmt == "prompt_completion":
        prompt = messages(path, row, "prompt", data["prompt"], "user")
        return SFTExample(prompt + _completion(path, row, "completion", data["completion"]), row, len(prompt))
    if fmt in ("unpaired", "scored"):
        prompt = messages(path, row, "prompt", data["prompt"], "user")
        completion = _completion(path, row, "completion", data["completion"])
        if fmt == "scored":
            reward = _number(path, row, data, "reward")
            if reward is None:
                raise DataError(path, row, "reward", "expected a finite number, got null")
            return UnpairedExample(prompt, completion, reward > 0, row, reward)
        return UnpairedExample(prompt, completion, _bool(path, row, "label", data["label"]), row)
    return _pair_example(path, row, data, fmt)


def _pair_example(path: str, row: int, data: dict[str, Any], fmt: str) -> PairExample:
    if fmt == "transcript":
        prompt, chosen, rejected = split_transcript(path, row, data["chosen"], data["rejected"])
    else:
        prompt = messages(path, row, "prompt", data["prompt"], "user")
        chosen = _completion(path, row, "chosen", data["chosen"])
        rejected = _completion(path, row, "rejected", data["rejected"])
    if chosen == rejected:
        raise DropRow("chosen_equals_rejected", f"{path}, row {row}: chosen and rejected are identical; row dropped")
    ex = PairExample(prompt, chosen, rejected, row, margin=_number(path, row, data, "margin"),
                     scores=_pair_scores(path, row, data))
    if fmt == "safety":
        ex.chosen_safe = _bool(path, row, "chosen_safe", data["chosen_safe"])
        ex.rejected_safe = _bool(path, row, "rejected_safe", data["rejected_safe"])
    return ex


def _prompt_example(path: str, row: int, data: dict[str, Any], fmt: str) -> PromptExample:
    if fmt == "transcript":
        prompt = split_transcript(path, row, data["chosen"], data["rejected"])[0]
    else:
        prompt = messages(path, row, "prompt", data["prompt"], "user")
    extra = {k: v for k, v in data.items() if k != "prompt"}
    return PromptExample(prompt, extra, row)


# --------------------------------------------------------------------------- HH transcripts


def split_transcript(path: str, row: int, chosen: Any, rejected: Any) -> tuple[list[Message], ...]:
    """Split two whole dialogues into (shared prompt, chosen completion, rejected completion).

    Strings (Anthropic HH: "\\n\\nHuman: ...\\n\\nAssistant: ...") are cut at the last
    "\\n\\nAssistant:" of their common prefix; message lists at the last assistant message of
    their common prefix.
    """
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _split_text(path, row, _text(path, row, "chosen", chosen), _text(path, row, "rejected", rejected))
    c = messages(path, row, "chosen", chosen, "assistant")
    r = messages(path, row, "rejected", rejected, "assistant")
    k = 0
    while k < min(len(c), len(r)) and c[k] == r[k]:
        k += 1
    if c == r:
        raise DropRow("chosen_equals_rejected", f"{path}, row {row}: chosen and rejected are identical; row dropped")
    k = _last_assistant_split(c, r, k)
    if k == 0:
        raise DataError(path, row, "chosen", "chosen and rejected share no prompt before an assistant turn")
    return c[:k], c[k:], r[k:]


def _last_assistant_split(c: list[Message], r: list[Message], common: int) -> int:
    """The largest k <= common with an assistant message at index k in both lists."""
    for k in range(min(common, len(c) - 1, len(r) - 1), 0, -1):
        if c[k]["role"] == "assistant" and r[k]["role"] == "assistant":
            return k
    return 0


def _split_text(path: str, row: int, chosen: str, rejected: str) -> tuple[list[Message], ...]:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(_ASSISTANT, 0, n)
    if n == len(chosen) == len(rejected):
        raise DropRow("chosen_equals_rejected", f"{path}, row {row}: chosen and rejected are identical; row dropped")
    if cut < 0:
        raise DataError(
            path, row, "chosen", "no shared prompt ending in '\\n\\nAssistant:' in chosen and rejected",
            'A transcript row looks like "\\n\\nHuman: question\\n\\nAssistant: answer".',
        )
    prompt = _turns(path, row, "chosen", chosen[:cut])
    tail = len(_ASSISTANT)
    chosen_part = _turns(path, row, "chosen", chosen[cut:], first="assistant", skip=tail)
    rejected_part = _turns(path, row, "rejected", rejected[cut:], first="assistant", skip=tail)
    return prompt, chosen_part, rejected_part


def _turns(path: str, row: int, field: str, text: str, first: str | None = None, skip: int = 0) -> list[Message]:
    """Human/Assistant text into messages. With `first`, the text starts inside that role's turn."""
    if not text.startswith("\n\n") and re.match(r"(Human|Assistant):", text):
        text = "\n\n" + text
    parts = _TURN.split(text[skip:] if first else text)
    head, rest = parts[0], parts[1:]
    out: list[Message] = []
    if first:
        out.append({"role": first, "content": head.strip()})
    elif head.strip():
        raise DataError(path, row, field, f"text before the first 'Human:' turn: {head.strip()[:40]!r}")
    for speaker, content in zip(rest[0::2], rest[1::2]):
        out.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    for i, msg in enumerate(out):
        if not msg["content"]:
            raise DataError(path, row, field, f"empty {msg['role']} turn (turn {i + 1} of this part)")
    if not out:
        raise DataError(path, row, field, "no 'Human:' turn in the shared prompt")
    return out
