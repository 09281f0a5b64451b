"""Conditions of a conditional reward model (COOL RLHF, InternLM2, arXiv 2403.17297).

One reward model learns several, even conflicting, preferences (helpfulness, harmlessness,
format) when each training pair carries the preference that labelled it as a system message:
the same (prompt, chosen, rejected) can be ordered one way under "helpful" and the other way
under "harmless". At scoring time the same system message selects the preference
(`ScorerConfig.system_prompt` of a `reward_model` scorer).

The condition lives in the data as what the model reads, a system message at the start of the
prompt, so the reward-model trainer needs nothing special. `with_system_prompt` is the one way it
is put there, both when the mixed training file is written (`condition_rows`, `mix_conditions`)
and when a completion is scored (`RewardModelScorer(system_prompt=...)`): a prompt that already
opens with a system message keeps it, after the condition and a blank line, in one message
(several system messages break some chat templates). The rows also get a `condition` column with
the condition's name (ignored by training; for per-condition evaluation).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhflab.errors import ConfigError, DataError

Message = dict[str, str]


def with_system_prompt(messages: Sequence[Message], system_prompt: str | None) -> list[Message]:
    """`messages` with `system_prompt` as the first system message (None: unchanged copy).

    An existing leading system message is merged: its content follows the condition after a blank
    line ("condition\\n\\nown system prompt")."""
    out = [dict(m) for m in messages]
    if system_prompt is None:
        return out
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{system_prompt}\n\n{out[0]['content']}"
        return out
    return [{"role": "system", "content": system_prompt}, *out]


def load_conditions(path: str | Path) -> dict[str, str]:
    """A conditions file: a YAML or JSON mapping {condition name: system prompt text}."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"conditions file not found: {p}")
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8"))  # JSON is YAML too
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML or JSON: {e}") from None
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{p}: expected a mapping {{condition name: system prompt}}, e.g. helpful: 'Prefer ...'")
    for name, text in tree.items():
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{p}: condition '{name}' needs a non-empty system prompt text")
    return {str(k): v for k, v in tree.items()}


def condition_rows(rows: Sequence[Mapping[str, Any]], name: str, system_prompt: str,
                   path: str = "<rows>") -> list[dict[str, Any]]:
    """Pairwise rows (prompt as a string or a message list) with the condition's system prompt put
    before each prompt (`with_system_prompt`) and `condition: name` added."""
    out = []
    for i, row in enumerate(rows, start=1):
        prompt = row.get("prompt")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            raise DataError(path, i, "prompt", "expected a string or a list of messages (a prompt column is needed "
                                               "to carry the condition; transcript rows are not supported)")
        out.append({**row, "prompt": with_system_prompt(prompt, system_prompt), "condition": name})
    return out


def mix_conditions(sources: Mapping[str, Sequence[Mapping[str, Any]]], conditions: Mapping[str, str],
                   seed: int = 0) -> list[dict[str, Any]]:
    """One training set from per-condition pairwise rows {condition: rows}: every row gets its
    condition's system prompt (`condition_rows`), then all rows are shuffled together with `seed`."""
    missing = [name for name in sources if name not in conditions]
    if missing:
        raise ConfigError(f"no system prompt for condition(s) {missing}; known: {sorted(conditions)}")
    mixed = [r for name, rows in sources.items() for r in condition_rows(rows, name, conditions[name], name)]
    random.Random(seed).shuffle(mixed)
    return mixed

