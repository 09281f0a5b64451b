"""`rlhflab data inspect FILE`: what the loader sees in a data file.

CLI hook (cli.py calls this)::

    run_inspect(path: str, format: str = "auto", model: str | None = None,
                console: rich.console.Console | None = None, data_cfg: DataConfig | None = None) -> None

It prints the detected format, row counts, dropped rows by reason, warnings, length statistics in
characters (and in tokens when `model` names a tokenizer: a local Hugging Face folder or
`smollm2-135m`), and one example with its loss mask made visible: trained text on a green
background, the rest dim. `inspect_file` returns the same as an `InspectResult` whose `plain`
text marks trained spans with ⟦ ⟧ (for tests and plain terminals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlhflab.config import DataConfig
from rlhflab.data.examples import LoadedData, Message, PairExample, SFTExample, UnpairedExample
from rlhflab.data.load import load_examples
from rlhflab.data.tokenize import TokenizeReport, length_stats, tokenize_examples
from rlhflab.types import TokenizedPair, TokenizedSeq

OPEN, CLOSE = "⟦", "⟧"

Span = tuple[str, bool]  # (text, trained)


@dataclass
class InspectResult:
    loaded: LoadedData
    char_stats: dict[str, dict[str, float]]  # field -> min/mean/p50/p95/max characters
    token_report: TokenizeReport | None = None
    example: list[tuple[str, list[Span]]] = field(default_factory=list)  # (title, spans)

    def lines(self, markup: bool) -> list[str]:
        d = self.loaded
        out = [f"file: {d.path}", f"format: {d.format}", f"rows: {d.num_rows}, kept: {len(d.examples)}"]
        for reason, n in d.dropped.items():
            out.append(f"  dropped ({reason.replace('_', ' ')}): {n}")
        out += [f"warning: {w}" for w in d.warnings]
        for name, s in self.char_stats.items():
            out.append(f"chars {name}: " + _fmt(s))
        if self.token_report is not None:
            out.append("tokens: " + self.token_report.summary())
        if markup:
            from rich.markup import escape

            out = [escape(line) for line in out]
        for title, spans in self.example:
            out.append(f"[bold]{_esc(title)}:[/bold]" if markup else f"{title}:")
            out.append("".join(_span(t, trained, markup) for t, trained in spans))
        return out

    @property
    def plain(self) -> str:
        """Plain text; trained spans wrapped in ⟦ ⟧."""
        return "\n".join(self.lines(markup=False))

    @property
    def markup(self) -> str:
        """Rich markup; trained spans on green, untrained dim."""
        return "\n".join(self.lines(markup=True))


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _fmt(s: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" if k == "mean" else f"{k} {v:g}" for k, v in s.items())


def _span(text: str, trained: bool, markup: bool) -> str:
    if not markup:
        return f"{OPEN}{text}{CLOSE}" if trained else text
    return f"[black on green]{_esc(text)}[/]" if trained else f"[dim]{_esc(text)}[/]"


def _char_fields(ex: Any) -> dict[str, int]:
    def n(msgs: list[Message]) -> int:
        return sum(len(m["content"]) for m in msgs)

    if isinstance(ex, SFTExample):
        return {"conversation": n(ex.messages), "trained": n([m for m in ex.messages[ex.train_start :] if m["role"] == "assistant"])}
    if isinstance(ex, PairExample):
        return {"prompt": n(ex.prompt), "chosen": n(ex.chosen), "rejected": n(ex.rejected)}
    if isinstance(ex, UnpairedExample):
        return {"prompt": n(ex.prompt), "completion": n(ex.completion)}
    return {"prompt": n(ex.prompt)}


def _message_spans(msgs: list[Message], train_from: int) -> list[Span]:
    spans: list[Span] = []
    for i, m in enumerate(msgs):
        spans.append((f"<{m['role']}> ", False))
        spans.append((m["content"], i >= train_from and m["role"] == "assistant"))
        spans.append(("\n", False))
    return spans


def _example_from_messages(ex: Any) -> list[tuple[str, list[Span]]]:
    if isinstance(ex, SFTExample):
        return [(f"example (row {ex.row})", _message_spans(ex.messages, ex.train_start))]
    if isinstance(ex, PairExample):
        p = len(ex.prompt)
        return [
            (f"chosen (row {ex.row})", _message_spans(ex.prompt + ex.chosen, p)),
            (f"rejected (row {ex.row})", _message_spans(ex.prompt + ex.rejected, p)),
        ]
    if isinstance(ex, UnpairedExample):
        title = f"example (row {ex.row}, label {ex.label})"
        return [(title, _message_spans(ex.prompt + ex.completion, len(ex.prompt)))]
    return [(f"prompt (row {ex.row})", _message_spans(ex.prompt, len(ex.prompt)))]


def token_spans(tokenizer: Any, ids: list[int], mask: list[bool]) -> list[Span]:
    """Decode runs of tokens with the same mask value."""
    spans: list[Span] = []
    start = 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or mask[t] != mask[start]:
            spans.append((tokenizer.decode(ids[start:t], skip_special_tokens=False), bool(mask[start])))
            start = t
    return spans


def _example_from_tokens(tokenizer: Any, item: Any) -> list[tuple[str, list[Span]]]:
    if isinstance(item, TokenizedPair):
        return [
            (f"chosen (row {item.row})", token_spans(tokenizer, item.chosen.input_ids, item.chosen.loss_mask)),
            (f"rejected (row {item.row})", token_spans(tokenizer, item.rejected.input_ids, item.rejected.loss_mask)),
        ]
    seq = item if isinstance(item, TokenizedSeq) else getattr(item, "seq", None)
    if seq is not None:
        return [(f"example (row {seq.row})", token_spans(tokenizer, seq.input_ids, seq.loss_mask))]
    return [(f"prompt (row {item.row})", token_spans(tokenizer, item.input_ids, [False] * len(item.input_ids)))]


def inspect_file(
    path: str, format: str = "auto", tokenizer: Any = None, data_cfg: DataConfig | None = None, kind: str | None = None
) -> InspectResult:
    """Load and summarize a data file (see the module docstring)."""
    loaded = load_examples(path, kind, format)
    per_field: dict[str, list[int]] = {}
    for ex in loaded.examples:
        for name, n in _char_fields(ex).items():
            per_field.setdefault(name, []).append(n)
    result = InspectResult(loaded, {k: length_stats(v) for k, v in per_field.items()})
    if tokenizer is None:
        result.example = _example_from_messages(loaded.examples[0])
        return result
    items, report = tokenize_examples(loaded.examples, tokenizer, data_cfg or DataConfig(train=str(path)), str(path))
    result.token_report = report
    result.example = _example_from_tokens(tokenizer, items[0]) if items else _example_from_messages(loaded.examples[0])
    return result


def run_inspect(
    path: str, format: str = "auto", model: str | None = None, console: Any = None, data_cfg: DataConfig | None = None
) -> None:
    """Print the inspection of `path` to a rich console (the CLI entry point)."""
    if console is None:
        from rich.console import Console

        console = Console()
    tokenizer = None
    if model:
        from rlhflab.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    result = inspect_file(path, format, tokenizer, data_cfg)
    console.print(result.markup)
