"""The Hugging Face backend: the training model itself decodes, with a KV cache.

No weight copy exists, so `sync_weights` has nothing to do. Prompts are left-padded and
decoded together in chunks of `batch_size` sequences; a chunk stops as soon as every row has
finished. The uniform number behind sample j of prompt p at decoding step t is a hash of
(seed, offset + p, j, t) (splitmix64, computed on the device), so a rollout is a pure function of
(weights, prompts, params, seed), does not touch the global RNG, and does not depend on how the
prompts are split into chunks or over ranks: ranks that each generate a slice of a round's
prompts (with `offset` = the slice's start) sample what one process would have sampled.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rlhflab.models.load import eval_mode
from rlhflab.rollout.base import Completion, SamplingParams


def _filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set logits outside the top-k / nucleus to -inf. (B, V) float32."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(-1) - probs  # mass strictly above each token
        drop_sorted = before >= top_p  # the token that crosses top_p is kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(x: int) -> int:
    """splitmix64's finalizer on a Python int (mod 2^64)."""
    x = (x + _GOLDEN) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def row_keys(seed: int, prompt_ids: list[int], n: int) -> list[int]:
    """The 64-bit key of sample j of each (global) prompt id, as signed int64 values."""
    base = _mix64(int(seed) & _M64)
    return [_signed(_mix64(_mix64(base ^ p) ^ j)) for p in prompt_ids for j in range(n)]


def _srl(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 values (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def counter_uniform(keys: Tensor, step: int) -> Tensor:
    """U[0, 1) per row from (key, step): splitmix64 on int64 tensors (wrapping arithmetic), the top
    53 bits as a float. Same numbers on any device and for any batch layout."""
    x = keys + _signed(((step + 1) * _GOLDEN) & _M64)
    x = (x ^ _srl(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ _srl(x, 27)) * _signed(0x94D049BB133111EB)
    x = x ^ _srl(x, 31)
    return _srl(x, 11).double() * (1.0 / (1 << 53))


def _sample(probs: Tensor, u: Tensor) -> Tensor:
    """One token per row of `probs` (B, V) by inverse-CDF sampling: the first index whose
    cumulative probability reaches u * total, with u (B,) uniform in [0, 1). Same distribution as
    torch.multinomial, several times faster on a large vocabulary on CPU; a zero-probability
    token is never chosen (its cumulative value equals its predecessor's)."""
    cdf = probs.cumsum(-1)
    u = u.to(cdf.dtype)[:, None].clamp(min=1e-12)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


class HFGenerator:
    """Generates with `model` (a causal LM, plain or peft) and `tokenizer`."""

    def __init__(self, model: nn.Module, tokenizer: Any, stop_token_ids: set[int], batch_size: int = 64,
                 pad_token_id: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.stop_token_ids = set(stop_token_ids)
        self.batch_size = batch_size
        pad = pad_token_id if pad_token_id is not None else tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(self.stop_token_ids), 0))

    def sync_weights(self) -> None:
        """The trainer's model is the engine: nothing to copy."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: list[list[int]], params: SamplingParams, seed: int, offset: int = 0) -> list[Completion]:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        out: list[Completion] = []
        per_chunk = max(1, self.batch_size // params.n)  # prompts per chunk; each prompt is prefilled once
        with eval_mode(self.model), torch.inference_mode():
            for s in range(0, len(prompts), per_chunk):
                out += self._chunk(list(enumerate(prompts))[s:s + per_chunk], params, seed, offset)
        return out

    def _chunk(self, prompts: list[tuple[int, list[int]]], params: SamplingParams, seed: int, offset: int) -> list[Completion]:
        """Prefill each prompt once, copy its cache for its n samples, then decode all rows."""
        device, n = self.device, params.n
        rows = [(i, p) for i, p in prompts for _ in range(n)]
        keys = torch.tensor(row_keys(seed, [offset + i for i, _ in prompts], n), dtype=torch.long, device=device)
        B, P = len(rows), len(prompts)
        width = max(len(p) for _, p in prompts)
        ids = torch.full((P, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((P, width), dtype=torch.long)
        for b, (_, p) in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(p)
            attn[b, width - len(p):] = 1
        ids, attn = ids.to(device), attn.to(device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        stop_ids = torch.tensor(sorted(self.stop_token_ids), device=device, dtype=torch.long)
        tokens: list[Tensor] = []
        logps: list[Tensor] = []
        done = torch.zeros(B, dtype=torch.bool, device=device)
        length_of = torch.full((B,), params.max_new_tokens, dtype=torch.long, device=device)
        stopped_by = torch.zeros(B, dtype=torch.bool, device=device)
        texts = [""] * B
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = out.logits[:, -1].float()
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            attn = attn.repeat_interleave(n, dim=0)
            pos = pos.repeat_interleave(n, dim=0)
        step_pos = pos
        for t in range(params.max_new_tokens):
            if t > 0:
                out = self.model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos, past_key_values=cache,
                                 use_cache=True, logits_to_keep=1)
                cache = out.past_key_values
                logits = out.logits[:, -1].float()
            if params.temperature > 0:
                scaled = logits / params.temperature
                logp_all = torch.log_softmax(scaled, dim=-1)
                filtered = params.top_k or params.top_p < 1.0
                probs = torch.softmax(_filter_logits(scaled, params.top_k, params.top_p), dim=-1) if filtered else logp_all.exp()
                nxt = _sample(probs, counter_uniform(keys, t))
            else:
                logp_all = torch.log_softmax(logits, dim=-1)
                nxt = logits.argmax(-1)
            lp = logp_all.gather(-1, nxt[:, None]).squeeze(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            tokens.append(nxt)
            logps.append(lp)
            newly = ~done & torch.isin(nxt, stop_ids)
            if params.stop:
                newly |= self._hit_stop_string(tokens, done | newly, params.stop, texts)
            length_of = torch.where(newly, torch.full_like(length_of, t + 1), length_of)
            stopped_by |= newly
            done |= newly
            if bool(done.all()):
                break
            step_ids = nxt[:, None]
            attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=device)], dim=1)
            step_pos = step_pos[:, -1:] + 1
        tok = torch.stack(tokens, 1).cpu() if tokens else torch.zeros((B, 0), dtype=torch.long)
        lps = torch.stack(logps, 1).float().cpu() if logps else torch.zeros((B, 0))
        result = []
        for b, (pi, _) in enumerate(rows):
            n = int(length_of[b])
            token_ids = tok[b, :n].tolist()
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            for s in params.stop:
                if s in text:
                    text = text[: text.index(s) + len(s)]
            result.append(Completion(pi, token_ids, lps[b, :n].tolist(), "stop" if bool(stopped_by[b]) else "length", text))
        return result

    def _hit_stop_string(self, tokens: list[Tensor], done: Tensor, stops: tuple[str, ...], texts: list[str]) -> Tensor:
        """Rows (not yet done) whose decoded completion now contains a stop string."""
        hit = torch.zeros_like(done)
        last = tokens[-1].tolist()
        longest = max(len(s) for s in stops)
        for b in range(done.shape[0]):
            if bool(done[b]):
                continue
            piece = self.tokenizer.decode([last[b]], skip_special_tokens=True)
            texts[b] += piece
            tail = texts[b][-(longest + len(piece)):]
            if any(s in tail for s in stops):
                hit[b] = True
        return hit
