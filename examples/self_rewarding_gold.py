"""A known-good score for examples/self_rewarding.yaml, never trained on: the fraction of a
prompt's `keywords` (a column of examples/data/self_rewarding_prompts.jsonl) that the response
mentions, case-insensitively. A crude content-coverage proxy, but one the self-judge cannot see;
the loop reports how often the judge's chosen response also has the higher coverage."""

from __future__ import annotations


def keyword_coverage(samples) -> list[float]:
    scores = []
    for s in samples:
        keywords = s.row.get("keywords")
        if not keywords:
            raise ValueError("keyword_coverage needs a non-empty `keywords` list on every prompt row")
        text = s.completion.lower()
        scores.append(sum(k.lower() in text for k in keywords) / len(keywords))
    return scores
