"""Helpers for tests: tiny objects built in code, never downloaded."""

from __future__ import annotations

from typing import Any

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer(chat_template: str | None = CHATML, bos_in_template: bool = False,
                   words: tuple[str, ...] = ()) -> Any:
    """A byte-level tokenizer (one token per byte; no merges unless `words`) with ChatML special tokens.

    Ids: 0 `<s>` (BOS, added by `tokenizer(text)`, not by the chat template unless
    `bos_in_template`), 1 `<|im_start|>`, 2 `<|im_end|>` (EOS and also PAD, as in SmolLM2), then
    the 256 byte tokens (len = 259). `chat_template=None` gives a tokenizer with no template.

    `words`: BPE merges that make each space-prefixed word (' great') one token, with ids after
    the bytes (the chain of merges of each word's prefixes adds the prefixes as tokens too). Only
    space-prefixed words merge, so a word inside another text stays bytes unless a space precedes
    it; text still round-trips exactly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<|im_start|>", "<|im_end|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges: list[tuple[str, str]] = []
    for w in ("\u0120" + w for w in words):  # \u0120 (Ġ) is the byte-level space; merges left to right
        merges += [(w[:i], w[i]) for i in range(1, len(w)) if (w[:i], w[i]) not in merges]
    merged = list(dict.fromkeys(a + b for a, b in merges))
    vocab = {tok: i for i, tok in enumerate(specials + alphabet + merged)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 0)])
    template = chat_template
    if template is not None and bos_in_template:
        template = "{{ bos_token }}" + template
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        chat_template=template,
    )


def tiny_causal_lm(
    vocab_size: int = 64, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0
) -> Any:
    """A tiny LlamaForCausalLM built from a config in code (no download), float32, eval mode.

    Weights are a deterministic function of `seed` (the global RNG is left untouched). Token ids
    0 / 2 are BOS / EOS = PAD, matching `tiny_tokenizer` (use vocab_size=259 with it).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def tiny_model_dir(tmp_path: Any, tokenizer: Any = None, seed: int = 0, **kwargs: Any) -> Any:
    """Save `tiny_causal_lm` (vocab sized to `tokenizer`, default `tiny_tokenizer()`) and the
    tokenizer as a Hugging Face folder `tmp_path/tiny-model`; returns its Path."""
    from pathlib import Path

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    kwargs.setdefault("vocab_size", len(tokenizer))
    model = tiny_causal_lm(seed=seed, **kwargs)
    out = Path(tmp_path) / "tiny-model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
