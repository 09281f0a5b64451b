"""File -> examples -> tokens -> batch, for each algorithm kind."""

import torch

from rlhflab.config import DataConfig
from rlhflab.data import collate_lm, collate_pairs, load_examples, pad_id_of, tokenize_examples

HH = "\n\nHuman: Say hi\n\nAssistant: "


def test_sft_file_to_batch(jsonl, tok):
    p = jsonl([{"prompt": "a", "completion": "bc"}])
    data = load_examples(p, "sft")
    items, report = tokenize_examples(data.examples, tok, DataConfig(train=str(p)))
    batch = collate_lm(items, pad_id_of(tok))
    assert report.kept == 1 and batch.num_loss_tokens == 3  # b, c, <|im_end|>


def test_transcript_file_to_pair_batch(jsonl, tok):
    p = jsonl([{"chosen": HH + "hi!", "rejected": HH + "no", "margin": 1}, {"chosen": HH + "hello", "rejected": HH + "bye"}])
    data = load_examples(p, "pairwise")
    assert any("have no 'margin'" in w for w in data.warnings)
    pairs, _ = tokenize_examples(data.examples, tok, DataConfig(train=str(p)))
    batch = collate_pairs(pairs, pad_id_of(tok))
    assert batch.chosen.loss_mask.sum(1).tolist() == [4, 6] and batch.rejected.loss_mask.sum(1).tolist() == [3, 4]
    assert torch.equal(batch.margin, torch.tensor([1.0, 0.0]))
    n = batch.chosen.input_ids.shape[1]
    assert batch.rejected.input_ids.shape[1] == n
