"""Chat-template tokenization with a loss mask on assistant tokens.

The whole conversation is rendered once with ``tokenizer.apply_chat_template``; for each trained
assistant turn i, ``messages[:i]`` with the generation prompt gives where the turn starts and
``messages[:i+1]`` where it ends. Both must be prefixes of the whole rendering (otherwise the
template is not prefix-consistent and we stop with a UserError). The mask covers the turn's
tokens up to and including its first end-of-turn token (the tokenizer's EOS, e.g. ``<|im_end|>``),
not the template glue after it (e.g. a following newline).

BOS: the ids come from the template alone; if they start with two BOS tokens (template and
tokenizer both adding one), one is dropped. No BOS is ever added.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhflab.data.examples import Message
from rlhflab.errors import UserError
from rlhflab.types import TokenizedPair, TokenizedSeq

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""A plain ChatML template, usable as `data.chat_template` for tokenizers that have none."""

_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eot|>")


def resolve_chat_template(tokenizer: Any, chat_template: str | None = None) -> str | None:
    """The template text to use: `chat_template` (a file path or the text itself), else None
    (the tokenizer's own). Raises UserError when neither exists."""
    if chat_template:
        if "{" not in chat_template and Path(chat_template).is_file():
            return Path(chat_template).read_text(encoding="utf-8")
        if "{" not in chat_template:
            raise UserError(f"data.chat_template: no such file '{chat_template}' (and it is not template text)")
        return chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "the tokenizer has no chat template, so conversations cannot be formatted. Set "
            "data.chat_template to a Jinja template file or its text (for ChatML, see "
            "rlhflab.data.template.CHATML_TEMPLATE), or use an instruct model's tokenizer."
        )
    return None


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """Token ids that end an assistant turn: EOS plus well-known end-of-turn special tokens."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    for tok in _END_OF_TURN_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid in added and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return ids


def _as_ids(out: Any) -> list[int]:
    """apply_chat_template's output (list, BatchEncoding/dict, tensor) as a flat list of ints."""
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    out = list(out)
    if out and isinstance(out[0], Sequence):
        out = list(out[0])
    return [int(t) for t in out]


def dedupe_bos(ids: list[int], bos_id: int | None) -> list[int]:
    """Drop one BOS when the ids start with two."""
    if bos_id is not None and len(ids) >= 2 and ids[0] == bos_id and ids[1] == bos_id:
        return ids[1:]
    return ids


def render_ids(tokenizer: Any, messages: list[Message], add_generation_prompt: bool, chat_template: str | None = None) -> list[int]:
    """Token ids of `messages` rendered with the chat template (one BOS at most)."""
    kwargs = {"chat_template": chat_template} if chat_template else {}
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, **kwargs
    )
    return dedupe_bos(_as_ids(out), tokenizer.bos_token_id)


def _not_prefix(i: int, what: str) -> UserError:
    return UserError(
        f"the chat template is not prefix-consistent: rendering the conversation up to message {i} "
        f"({what}) does not give a prefix of the whole conversation's tokens, so assistant tokens "
        "cannot be located. Use a template that renders earlier turns the same way whatever follows "
        "(set data.chat_template, e.g. ChatML)."
    )


def tokenize_conversation(
    tokenizer: Any,
    messages: list[Message],
    train_start: int = 0,
    chat_template: str | None = None,
    eot_ids: set[int] | None = None,
) -> tuple[list[int], list[bool]]:
    """(input_ids, loss_mask) of a conversation; assistant turns at index >= train_start are
    trained, each through its end-of-turn token. loss_mask[0] is always False."""
    eot = end_of_turn_ids(tokenizer) if eot_ids is None else eot_ids
    full = render_ids(tokenizer, messages, False, chat_template)
    mask = [False] * len(full)
    for i, msg in enumerate(messages):
        if i < max(train_start, 1) or msg["role"] != "assistant":
            continue
        prefix = render_ids(tokenizer, messages[:i], True, chat_template)
        through = render_ids(tokenizer, messages[: i + 1], False, chat_template)
        if full[: len(prefix)] != prefix:
            raise _not_prefix(i, "with the generation prompt")
        if full[: len(through)] != through:
            raise _not_prefix(i + 1, "through this assistant turn")
        start, end = len(prefix), len(through)
        for t in range(start, end):
            if full[t] in eot:
                end = t + 1
                break
        mask[start:end] = [True] * (end - start)
    if mask:
        mask[0] = False
    return full, mask


def tokenize_prompt(tokenizer: Any, prompt: list[Message], chat_template: str | None = None) -> list[int]:
    """Ids of the prompt followed by the generation prompt (what the policy continues)."""
    return render_ids(tokenizer, prompt, True, chat_template)


def tokenize_pair(
    tokenizer: Any,
    prompt: list[Message],
    chosen: list[Message],
    rejected: list[Message],
    chat_template: str | None = None,
    row: int = 0,
    eot_ids: set[int] | None = None,
) -> TokenizedPair:
    """A preference pair: both sequences start with the same prompt ids (the prompt rendered
    with the generation prompt) and are trained only on their completion."""
    eot = end_of_turn_ids(tokenizer) if eot_ids is None else eot_ids
    n = len(prompt)
    c_ids, c_mask = tokenize_conversation(tokenizer, prompt + chosen, n, chat_template, eot)
    r_ids, r_mask = tokenize_conversation(tokenizer, prompt + rejected, n, chat_template, eot)
    prompt_ids = tokenize_prompt(tokenizer, prompt, chat_template)
    if c_ids[: len(prompt_ids)] != prompt_ids or r_ids[: len(prompt_ids)] != prompt_ids:
        raise _not_prefix(n, "the prompt with the generation prompt")
    return TokenizedPair(TokenizedSeq(c_ids, c_mask, row), TokenizedSeq(r_ids, r_mask, row), row)
