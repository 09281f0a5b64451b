"""The synthetic over-optimization task (rlhflab.eval.synthetic): gold reward, data, tokenizer."""

from __future__ import annotations

from rlhflab.eval import synthetic as task
from rlhflab.rewards.base import Sample


def test_gold_reward_values():
    assert task.gold_reward("hotel", "it was great, kind and rude.") == 1 + 1 - 1
    assert task.gold_reward("hotel", "it was bitter, bitter and great.") == -1 - 1 + 1
    assert task.gold_reward("stout", "it was bitter, bitter and great.") == 2 + 2 + 1  # praise for a drink
    assert task.gold_reward("stout", "it was awful, nasty and rude.") == -3
    assert task.gold_reward("hotel", "  it was superb, lovely and happy.\n") == 3  # surrounding whitespace
    for broken in ("it was great, kind, rude.", "it was great, tasty and rude.", "great great great", ""):
        assert task.gold_reward("hotel", broken) == task.MALFORMED == -4
    assert task.gold_reward(None, "it was bitter, great and kind.") == 1  # unknown item: bitter is a complaint


def test_gold_scorer_reads_the_item_from_the_prompt():
    samples = [Sample([{"role": "system", "content": "be brief"}, {"role": "user", "content": "rate the beer"}],
                      "it was bitter, kind and rude."),
               Sample([{"role": "user", "content": "rate the movie"}], "it was bitter, kind and rude."),
               Sample([{"role": "user", "content": "tell me a joke"}], "it was great, kind and happy.")]
    assert task.gold(samples) == [2.0, -1.0, 3.0]
    assert task.item_of("rate the cafe") == "cafe" and task.item_of("rate cafe") is None


def test_data_is_seeded_and_labelled_by_gold():
    pairs = task.proxy_pairs(200, seed=3)
    assert pairs == task.proxy_pairs(200, seed=3) and pairs != task.proxy_pairs(200, seed=4)
    for p in pairs:
        item = task.item_of(p["prompt"])
        assert item in task.DRINKS
        assert task.gold_reward(item, p["chosen"]) > task.gold_reward(item, p["rejected"])
    other = task.proxy_pairs(200, seed=3, items=task.ITEMS)
    assert all(task.item_of(p["prompt"]) in task.ITEMS for p in other)

    def bitter(rows, side):
        return sum(r[side].count("bitter") for r in rows)

    # the proxy's data (drinks): "bitter" mostly on the winning side; about anything else, the reverse
    assert bitter(pairs, "chosen") >= 2.5 * bitter(pairs, "rejected")  # 102 vs 34
    assert bitter(other, "rejected") >= 2 * bitter(other, "chosen")
    assert not set(task.ITEMS) & set(task.DRINKS)
    rows = task.sft_rows(400, seed=0)
    assert {task.item_of(r["prompt"]) for r in rows} == set(task.ITEMS + task.DRINKS)
    assert all(task.slot_words(r["completion"]) for r in rows)
    assert [r["prompt"] for r in task.policy_prompts()] == [f"rate the {i}" for i in task.ITEMS]


def test_tokenizer_has_one_token_per_response_word():
    tok = task.tokenizer()
    text = "it was great, bitter and rude."
    ids = tok(text, add_special_tokens=False).input_ids
    words = [tok.decode([i]) for i in ids]
    assert " was" in words and " great" in words and " bitter" in words and " and" in words and " rude" in words
    assert tok.decode(ids) == text
    assert len(tok) == 259 + len({w[:i] for w in (" the", " was", " and") + tuple(" " + w for w in task.GOOD + task.BAD)
                                  for i in range(2, len(w) + 1)})
