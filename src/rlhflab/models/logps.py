"""Log-probabilities of completions, computing the LM head only where a token is scored.

A causal LM's output layer (hidden H -> vocabulary V) usually costs more than the whole decoder
on small models (SmolLM2: V = 49152), and preference losses need it only at completion tokens.
`completion_logits` runs the decoder on the batch, gathers the hidden states that predict the
scored tokens, and applies the head to those N rows only: (N, V) instead of (B, T, V).

Models whose head does more than a linear layer (Gemma 2's logit soft-capping, Cohere's logit
scale) or whose decoder cannot be found fall back to the full forward; `tests/test_logps.py`
checks both paths give the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
import weakref

import torch
from torch import Tensor, nn

from rlhflab.models.forward import forward_logits, model_inputs
from rlhflab.models.load import is_peft, reference_mode
from rlhflab.ops import entropy_from_logits, logps_of_targets, rows_per_chunk
from rlhflab.types import LMBatch


@dataclass
class ScoredTokens:
    """The N scored tokens of a batch, flattened in (b, t) order."""

    logits: Tensor  # (N, V) prediction of each scored token (from position t-1)
    targets: Tensor  # (N,) long, the scored token ids
    seq: Tensor  # (N,) long, which sequence b each token belongs to
    hidden: Tensor | None  # (N, H) the decoder states the logits were computed from (split path)
    head: nn.Module | None  # the output layer that maps hidden to logits (split path)

    def sums(self, values: Tensor, batch_size: int) -> Tensor:
        """Per-sequence sums (B,) of per-token values (N,)."""
        return values.new_zeros(batch_size).index_add(0, self.seq, values)


def _split(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder, head) of a plain causal LM (LoRA layers stay active inside both), else None."""
    base = model.get_base_model() if is_peft(model) else model
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return None
    get_dec, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    if get_dec is None or get_head is None:
        return None
    try:
        decoder, head = get_dec(), get_head()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    if decoder is None or decoder is base or not isinstance(head, nn.Module):
        return None
    return decoder, head


_SPLIT_VERIFIED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def _verified_split(model: nn.Module, batch: LMBatch) -> tuple[nn.Module, nn.Module] | None:
    """`_split(model)`, checked once per model against the full forward on a real batch: a head
    that scales or caps its logits in a way `_split` does not know (e.g. Granite's
    `logits_scaling`) makes the two disagree, and the model then always takes the full forward."""
    parts = _split(model)
    if parts is None:
        return None
    ok = _SPLIT_VERIFIED.get(model)
    if ok is None:
        with torch.no_grad():
            n = min(2, batch.input_ids.shape[0])
            small = LMBatch(batch.input_ids[:n], batch.attention_mask[:n], batch.loss_mask[:n])
            full = forward_logits(model, small)[:, :-1][small.attention_mask[:, 1:].bool()].float()
            hidden = parts[0](**model_inputs(model, small)).last_hidden_state
            split = parts[1](hidden[:, :-1][small.attention_mask[:, 1:].bool()]).float()
            ok = bool(torch.allclose(full, split, atol=1e-3, rtol=1e-3))
        _SPLIT_VERIFIED[model] = ok
    return parts if ok else None


def completion_logits(model: nn.Module, batch: LMBatch, mask: Tensor | None = None,
                      materialize: bool = True) -> ScoredTokens:
    """Logits of the tokens where `mask` (default `batch.loss_mask`) is True.

    mask[b, t] marks token input_ids[b, t] as scored; it is predicted from position t-1, so
    mask[:, 0] must be False. With `materialize=False` (and the split path) the logits are left
    to be computed from `hidden` by the caller, a chunk at a time.
    """
    mask = batch.loss_mask if mask is None else mask
    sel = mask[:, 1:]  # (B, T-1): position t-1 predicts token t
    targets = batch.input_ids[:, 1:][sel]  # (N,)
    seq = torch.arange(batch.input_ids.shape[0], device=sel.device)[:, None].expand_as(sel)[sel]
    parts = _verified_split(model, batch)
    if parts is None:
        logits = forward_logits(model, batch)[:, :-1][sel]  # (N, V)
        return ScoredTokens(logits, targets, seq, None, None)
    decoder, head = parts
    hidden = decoder(**model_inputs(model, batch)).last_hidden_state  # (B, T, H)
    h = hidden[:, :-1][sel]  # (N, H)
    return ScoredTokens(head(h) if materialize else None, targets, seq, h, head)


def sequence_logps(model: nn.Module, batch: LMBatch, mask: Tensor | None = None,
                   materialize: bool = True) -> tuple[Tensor, ScoredTokens]:
    """Summed log-probabilities (B,) float32 of each sequence's scored tokens, and the tokens.

    `materialize=False` (for a no-grad reference pass) computes the head a chunk of rows at a
    time and keeps no (N, V) logits in the returned tokens."""
    tok = completion_logits(model, batch, mask, materialize=materialize)
    if tok.logits is None:
        rows = rows_per_chunk(getattr(tok.head, "out_features", 1))
        lp = torch.cat([logps_of_targets(tok.head(tok.hidden[s:s + rows]), tok.targets[s:s + rows])
                        for s in range(0, tok.targets.shape[0], rows)]) if tok.targets.numel() else tok.hidden.new_zeros(0)
    else:
        lp = logps_of_targets(tok.logits, tok.targets)
    return tok.sums(lp.float(), batch.input_ids.shape[0]), tok


def completion_token_logps(model: nn.Module, batch: LMBatch, temperature: float = 1.0,
                           entropy: bool = False, entropy_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probs (B, T) of the loss-mask tokens under softmax(logits / temperature),
    0 elsewhere; and their entropies (B, T) when asked (differentiable only with `entropy_grad`).
    The LM head runs on those tokens only."""
    tok = completion_logits(model, batch)
    logits = tok.logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    lp = logps_of_targets(logits, tok.targets)
    out = torch.zeros(batch.loss_mask.shape, dtype=torch.float32, device=lp.device)
    out = out.masked_scatter(batch.loss_mask, lp)
    if not entropy:
        return out, None
    ent_flat = entropy_from_logits(logits if entropy_grad else logits.detach())
    ent = torch.zeros_like(out).masked_scatter(batch.loss_mask, ent_flat)
    return out, ent


@contextmanager
def reference_context(model: nn.Module, ref_model: nn.Module | None, initial_policy_ok: bool = False) -> Iterator[nn.Module]:
    """Yields the reference in eval mode with gradients off: `ref_model` (a frozen model) if
    given, else the adapter-disabled LoRA model, else (only with `initial_policy_ok`, before any
    update, e.g. a precompute pass) the policy itself."""
    if ref_model is None and is_peft(model):
        with reference_mode(model) as ref:
            yield ref
        return
    if ref_model is None and not initial_policy_ok:
        raise ValueError("full fine-tuning needs a frozen reference model once training has started")
    ref = model if ref_model is None else ref_model
    was = ref.training
    ref.eval()
    try:
        with torch.no_grad():
            yield ref
    finally:
        ref.train(was)


def shared_prefix_token_logps(model: nn.Module, batch: LMBatch, group: Tensor, temperature: float = 1.0,
                              entropy: bool = False, entropy_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """`completion_token_logps` for rows that share prompts (GRPO groups), running each distinct
    prompt through the decoder once.

    Rows must be [prompt][completion][padding] with `loss_mask` exactly the completion and rows of
    equal `group` (B,) holding the same prompt. Each distinct prompt is prefilled once (with
    gradient), its KV cache is indexed out to its rows, and the completions run on top of it; the
    first completion token is predicted from the prompt's last hidden state. Numerically the same
    as the full forward (tests/test_logps.py) at a fraction of the cost when prompts are long: with
    G samples per prompt the prompt tokens are computed once instead of G times.
    Falls back to `completion_token_logps` for models without a separable decoder and head.
    """
    parts = _verified_split(model, batch)
    if parts is None:
        return completion_token_logps(model, batch, temperature, entropy, entropy_grad)
    decoder, head = parts
    device = batch.input_ids.device
    mask = batch.loss_mask
    plen = torch.where(mask.any(1), mask.float().argmax(1), batch.attention_mask.sum(1))  # (B,) first completion index
    clen = mask.sum(1)
    uniq, inverse = torch.unique(group.to(device), return_inverse=True)
    first = torch.zeros(len(uniq), dtype=torch.long, device=device).scatter_(0, inverse.flip(0),
                                                                               torch.arange(len(group), device=device).flip(0))
    lp_max, lc_max = int(plen.max()), int(clen.max())
    U = len(uniq)
    pids = torch.zeros((U, lp_max), dtype=torch.long, device=device)
    pmask = torch.zeros((U, lp_max), dtype=torch.long, device=device)
    for u in range(U):
        b, n = int(first[u]), int(plen[first[u]])
        pids[u, lp_max - n:] = batch.input_ids[b, :n]
        pmask[u, lp_max - n:] = 1
    ppos = (pmask.cumsum(-1) - 1).clamp(min=0)
    pre = decoder(input_ids=pids, attention_mask=pmask, position_ids=ppos, use_cache=True)
    cache = pre.past_key_values
    cache.batch_select_indices(inverse)
    cols = torch.arange(lc_max, device=device)[None, :]
    src = (plen[:, None] + cols).clamp(max=batch.input_ids.shape[1] - 1)
    cmask = cols < clen[:, None]
    cids = torch.where(cmask, batch.input_ids.gather(1, src), torch.zeros_like(src))
    full_mask = torch.cat([pmask[inverse], cmask.long()], dim=1)
    cpos = plen[:, None] + cols
    hidden = decoder(input_ids=cids, attention_mask=full_mask, position_ids=cpos, past_key_values=cache,
                     use_cache=True).last_hidden_state  # (B, Lc, H)
    pred = torch.cat([pre.last_hidden_state[inverse, -1:], hidden[:, :-1]], dim=1)  # hidden that predicts each token
    logits = head(pred[cmask]).float()
    if temperature != 1.0:
        logits = logits / temperature
    lp = logps_of_targets(logits, cids[cmask])
    out = torch.zeros(mask.shape, dtype=torch.float32, device=device).masked_scatter(mask, lp)
    if not entropy:
        return out, None
    ent = entropy_from_logits(logits if entropy_grad else logits.detach())
    return out, torch.zeros_like(out).masked_scatter(mask, ent)


def next_token_logits(model: nn.Module, seqs: list[list[int]], min_shared: int = 32, last: int = 1) -> Tensor:
    """(B, V) float32 logits of the token after each sequence (no grad); with `last` = k > 1,
    (B, k, V): the logits at each row's last k positions (the predictions of its last k - 1
    tokens and of the next one). Every row needs at least k tokens.

    When every sequence starts with the same `min_shared` or more tokens (a judge's fixed
    instructions), that prefix runs through the decoder once and its KV cache serves every row;
    the rest of each row runs on top of it, right-padded. Numerically the plain forward's logits
    at each row's last token (tests/test_logps.py). Models without a separable decoder and head
    take the plain forward."""
    device = next(model.parameters()).device
    B = len(seqs)
    if min(len(x) for x in seqs) < last:
        raise ValueError(f"every sequence needs at least last = {last} tokens")
    shared = min(len(s) for s in seqs) - last  # each row keeps its last `last` tokens of its own
    for i in range(1, B):
        n = 0
        for x, y in zip(seqs[0][:shared], seqs[i][:shared]):
            if x != y:
                break
            n += 1
        shared = n
    lens = torch.tensor([len(s) for s in seqs], device=device)
    width = int(lens.max())
    ids = torch.zeros(B, width, dtype=torch.long, device=device)
    att = torch.zeros(B, width, dtype=torch.long, device=device)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s, device=device)
        att[b, :len(s)] = 1
    rows = torch.arange(B, device=device)
    cols = lens[:, None] - last + torch.arange(last, device=device)[None, :]  # (B, k) the positions returned
    loss = torch.zeros(B, width, dtype=torch.bool, device=device)
    loss[rows, lens - 1] = True
    batch = LMBatch(ids, att, loss)
    parts = _verified_split(model, batch) if B > 1 and shared >= min_shared else None
    with torch.no_grad():
        if parts is None:
            # the logits at position t predict token t + 1: score the last k - 1 tokens and a dummy next one
            ext = LMBatch(torch.cat([ids, ids.new_zeros(B, 1)], 1), torch.cat([att, att.new_zeros(B, 1)], 1),
                          torch.zeros(B, width + 1, dtype=torch.bool, device=device))
            ext.attention_mask[rows, lens] = 1
            ext.loss_mask[rows[:, None].expand(-1, last), cols + 1] = True
            logits = completion_logits(model, ext).logits.float().view(B, last, -1)
            return logits[:, 0] if last == 1 else logits
        decoder, head = parts
        pre = decoder(input_ids=ids[:1, :shared], use_cache=True)
        cache = pre.past_key_values
        cache.batch_repeat_interleave(B)
        rest, rest_att = ids[:, shared:], att[:, shared:]
        full_att = torch.cat([att.new_ones(B, shared), rest_att], 1)
        pos = shared + torch.arange(rest.shape[1], device=device)[None, :].expand(B, -1)
        hidden = decoder(input_ids=rest, attention_mask=full_att, position_ids=pos, past_key_values=cache,
                         use_cache=True).last_hidden_state  # (B, T - shared, H)
        picked = hidden[rows[:, None], cols - shared]  # (B, k, H)
        logits = head(picked).float()
        return logits[:, 0] if last == 1 else logits
