"""Data: read files, detect and validate formats, apply chat templates, mask, batch.

    load_examples(path, kind, format="auto") -> LoadedData          # no tokenizer needed
    tokenize_examples(examples, tokenizer, data_cfg) -> (items, TokenizeReport)
    collate_lm / collate_pairs / collate_unpaired / pack + collate_packed -> typed batches
    attention_mask_4d(batch, dtype) -> (B, 1, T, T) additive mask for packed rows

Importing this package does not import `datasets` or `transformers`.
"""

from rlhflab.data.collate import (
    PackedRow,
    attention_mask_4d,
    collate_lm,
    collate_packed,
    collate_pairs,
    collate_unpaired,
    pack,
    pad_id_of,
    raise_if_no_loss_tokens,
)
from rlhflab.data.examples import LoadedData, PairExample, PromptExample, SFTExample, UnpairedExample
from rlhflab.data.formats import FORMATS, KIND_FORMATS, detect_format, formats_for_kind
from rlhflab.data.io import Record, read_records
from rlhflab.data.load import examples_from_records, load_examples
from rlhflab.data.template import (
    CHATML_TEMPLATE,
    resolve_chat_template,
    tokenize_conversation,
    tokenize_pair,
    tokenize_prompt,
)
from rlhflab.data.tokenize import TokenizedPrompt, TokenizedUnpaired, TokenizeReport, tokenize_examples

__all__ = [
    "CHATML_TEMPLATE", "FORMATS", "KIND_FORMATS", "LoadedData", "PackedRow", "PairExample", "PromptExample",
    "Record", "SFTExample", "TokenizeReport", "TokenizedPrompt", "TokenizedUnpaired", "UnpairedExample",
    "attention_mask_4d", "collate_lm", "collate_packed", "collate_pairs", "collate_unpaired", "detect_format",
    "examples_from_records", "formats_for_kind", "load_examples", "pack", "pad_id_of", "raise_if_no_loss_tokens",
    "read_records", "resolve_chat_template", "tokenize_conversation", "tokenize_examples", "tokenize_pair",
    "tokenize_prompt",
]
