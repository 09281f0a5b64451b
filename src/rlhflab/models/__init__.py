"""Models: the embedded default, loading policies / references / scalar-head models, LoRA,
forward passes on typed batches, and saving Hugging Face folders.

Importing this package does not import transformers or peft; the functions do, when called.
"""

from rlhflab.models.embedded import (
    EMBEDDED,
    cache_root,
    convert_embedded,
    embedded_cache_dir,
    embedded_gguf,
    load_gguf_model,
    resolve_model_path,
)
from rlhflab.models.forward import forward_logits, packed_attention_mask, reference_logits
from rlhflab.models.load import (
    count_parameters,
    frozen_copy,
    is_peft,
    load_causal_lm,
    load_tokenizer,
    reference_mode,
)
from rlhflab.models.save import save_pretrained_hf
from rlhflab.models.scalar import last_token_index, load_scalar_model, scalar_scores, scalar_values

__all__ = [
    "EMBEDDED",
    "cache_root",
    "convert_embedded",
    "count_parameters",
    "embedded_cache_dir",
    "embedded_gguf",
    "forward_logits",
    "frozen_copy",
    "is_peft",
    "last_token_index",
    "load_causal_lm",
    "load_gguf_model",
    "load_scalar_model",
    "load_tokenizer",
    "packed_attention_mask",
    "reference_logits",
    "reference_mode",
    "resolve_model_path",
    "save_pretrained_hf",
    "scalar_scores",
    "scalar_values",
]
