import pytest
import torch

from rlhflab.data import (
    attention_mask_4d,
    collate_lm,
    collate_packed,
    collate_pairs,
    collate_unpaired,
    pack,
    pad_id_of,
    raise_if_no_loss_tokens,
)
from rlhflab.data.tokenize import TokenizedUnpaired
from rlhflab.errors import UserError
from rlhflab.types import TokenizedPair, TokenizedSeq

EOS = 2


def seq(ids, mask, row=1):
    return TokenizedSeq(list(ids), [bool(m) for m in mask], row)


def test_collate_lm_right_pads_and_masks_from_lengths():
    # The trained EOS equals the pad id: attention comes from lengths, not from ids.
    a = seq([5, 6, EOS], [0, 1, 1], row=3)
    b = seq([5, 6, 7, 8, EOS], [0, 0, 1, 1, 1], row=9)
    batch = collate_lm([a, b], pad_id=EOS)
    assert batch.input_ids.tolist() == [[5, 6, EOS, EOS, EOS], [5, 6, 7, 8, EOS]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.loss_mask.tolist() == [[False, True, True, False, False], [False, False, True, True, True]]
    assert batch.rows == [3, 9] and batch.num_loss_tokens == 5
    assert batch.input_ids.dtype == torch.long and batch.loss_mask.dtype == torch.bool


def test_collate_lm_never_trains_position_zero():
    assert not collate_lm([seq([1, 2], [1, 1])]).loss_mask[0, 0]


def test_pad_id_of():
    class T:
        pad_token_id, eos_token_id = None, 7

    assert pad_id_of(T()) == 7
    T.eos_token_id = None
    assert pad_id_of(T()) == 0


def test_collate_pairs_common_length_and_labels():
    p1 = TokenizedPair(seq([1, 2, 3], [0, 0, 1]), seq([1, 2, 3, 4, 5], [0, 0, 1, 1, 1]), 1, True, False, 1.5)
    p2 = TokenizedPair(seq([1, 2], [0, 1]), seq([1, 9], [0, 1]), 2, False, False, None)
    b = collate_pairs([p1, p2], pad_id=0)
    assert b.chosen.input_ids.shape == b.rejected.input_ids.shape == (2, 5)
    assert b.chosen.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert b.chosen_safe.tolist() == [True, False] and b.rejected_safe.tolist() == [False, False]
    assert b.margin.tolist() == [1.5, 0.0] and b.rows == [1, 2] and len(b) == 2
    b2 = collate_pairs([TokenizedPair(seq([1, 2], [0, 1]), seq([1, 3], [0, 1]), 1)])
    assert b2.chosen_safe is None and b2.margin is None


def test_collate_unpaired():
    batch = collate_unpaired([TokenizedUnpaired(seq([1, 2], [0, 1]), True, 1), TokenizedUnpaired(seq([1], [0]), False, 2)])
    assert batch.label.tolist() == [True, False] and batch.seqs.input_ids.shape == (2, 2) and batch.rows == [1, 2]
    assert batch.reward is None and batch.ref is None
    scored = collate_unpaired([TokenizedUnpaired(seq([1, 2], [0, 1]), True, 1, reward=0.5, ref=-2.0)])
    assert scored.reward.tolist() == [0.5] and scored.ref.tolist() == [-2.0]


def test_pack_greedy_in_order():
    seqs = [seq(range(10, 14), [0, 1, 1, 1], 1), seq(range(20, 23), [1, 1, 1], 2), seq(range(30, 35), [0] * 4 + [1], 3)]
    rows = pack(seqs, max_length=8)
    assert [r.rows for r in rows] == [[1, 2], [3]]
    r = rows[0]
    assert r.segment_ids == [1, 1, 1, 1, 2, 2, 2]
    assert r.position_ids == [0, 1, 2, 3, 0, 1, 2]
    assert r.loss_mask == [False, True, True, True, False, True, True]  # each example's first token untrained
    batch = collate_packed(rows, pad_id=0)
    assert batch.segment_ids.tolist()[1] == [1, 1, 1, 1, 1, 0, 0]
    assert batch.attention_mask.tolist()[1] == [1, 1, 1, 1, 1, 0, 0]
    assert batch.rows == [1, 2, 3]
    with pytest.raises(ValueError, match="row 3: 5 tokens"):
        pack(seqs, max_length=4)


def test_attention_mask_4d_block_diagonal_causal():
    batch = collate_packed(pack([seq([1, 2], [0, 1], 1), seq([3, 4, 5], [0, 1, 1], 2)], 8) + pack([seq([6], [0], 3)], 8))
    m = attention_mask_4d(batch, torch.float32)
    assert m.shape == (2, 1, 5, 5)
    allowed = (m[:, 0] == 0).int().tolist()
    assert allowed[0] == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    assert allowed[1] == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]
    assert m.min() == torch.finfo(torch.float32).min
    unpacked = attention_mask_4d(collate_lm([seq([1, 2, 3], [0, 1, 1]), seq([1], [0])]), torch.bfloat16)
    assert unpacked.dtype == torch.bfloat16 and (unpacked[0, 0] == 0).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_raise_if_no_loss_tokens_names_rows():
    batch = collate_lm([seq([1, 2], [0, 0], 4), seq([1, 2, 3], [0, 0, 0], 11)])
    with pytest.raises(UserError) as e:
        raise_if_no_loss_tokens(batch)
    assert "no trainable tokens" in str(e.value) and "rows 4, 11" in str(e.value)
    raise_if_no_loss_tokens(collate_lm([seq([1, 2], [0, 1])]))
    pairs = collate_pairs([TokenizedPair(seq([1, 2], [0, 1]), seq([1, 2], [0, 0]), 5)])
    with pytest.raises(UserError, match=r"rejected side\) \(data rows 5\)"):
        raise_if_no_loss_tokens(pairs)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_separate_runs(attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation=attn,
    )
    model = LlamaForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    lengths = [5, 9, 3, 7, 4]
    seqs = [seq(torch.randint(3, 64, (n,), generator=gen).tolist(), [0] + [1] * (n - 1), i + 1) for i, n in enumerate(lengths)]
    rows = pack(seqs, max_length=16)
    assert len(rows) == 2 and len(rows[0].rows) > 1
    batch = collate_packed(rows, pad_id=0)
    with torch.no_grad():
        packed = model(
            batch.input_ids, attention_mask=attention_mask_4d(batch, torch.float32), position_ids=batch.position_ids
        ).logits  # (B, T, V)
        k = 0
        for b, r in enumerate(rows):
            for s_idx in range(1, len(r.rows) + 1):
                ids = seqs[k].input_ids
                alone = model(torch.tensor([ids])).logits[0]  # (n, V)
                got = packed[b][batch.segment_ids[b] == s_idx]
                torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
                k += 1
    assert k == len(seqs)
    # The plain (unpacked) path: a padded batch with the 4D mask equals the separate runs too.
    padded = collate_lm(seqs[:2], pad_id=0)
    with torch.no_grad():
        out = model(padded.input_ids, attention_mask=attention_mask_4d(padded, torch.float32)).logits
        torch.testing.assert_close(out[0, :5], model(torch.tensor([seqs[0].input_ids])).logits[0], atol=1e-5, rtol=0)


def test_attention_mask_4d_equals_models_packed_attention_mask():
    forward = pytest.importorskip("rlhflab.models.forward")
    packed = collate_packed(pack([seq([1, 2], [0, 1], 1), seq([3, 4, 5], [0, 1, 1], 2)], 8) + pack([seq([6], [0], 3)], 8))
    plain = collate_lm([seq([1, 2, 3], [0, 1, 1]), seq([1], [0])])
    for batch in (packed, plain):
        seg = batch.segment_ids if batch.segment_ids is not None else batch.attention_mask
        theirs = forward.packed_attention_mask(seg, torch.float32, batch.attention_mask)
        assert torch.equal(attention_mask_4d(batch, torch.float32), theirs)
