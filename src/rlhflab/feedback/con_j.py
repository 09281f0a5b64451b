"""Con-J: contrastive judgments that train the judge (Ye et al. 2024, arXiv 2410.03742).

The judge writes judgments with rationales for a pair of responses (a, b), in both orders:

    for each order o in {(a, b), (b, a)}:  sample S judgments j_1..j_S ~ judge(. | c_o)   (temperature > 0)
    each judgment's verdict v(j) in {a, b} is read constrained after its rationale:
        v(j) = argmax_{label} log p(" " + label | c_o, rationale(j) + "\\n" + "Better response:")
    majority of an order:  m_o = a if #{v = a} > #{v = b}, b if fewer, none on a tie
    pseudo-label:          y = m_ab  when m_ab = m_ba (both orders prefer the same response), else no label
    training rows:         per order, (prompt = c_o, chosen = a judgment with v = y,
                                       rejected = a judgment with v != y)

c_o is the judge conversation of the order (`Judge.judge_messages`); a judgment's text is its
rationale, a newline, the verdict prefix and the label as shown in that order ("... \\nBetter
response: B"). An order without both a matching and a contradicting judgment gives no row; a pair
whose orders disagree gives none (that disagreement is the position inconsistency Con-J avoids
training on). The paper takes the label from the preference data and falls back to hint-driven
sampling when one kind of judgment is missing; here, with no human labels, the label is the judge's
own position-consistent majority, and a pair without both kinds is skipped.

`contrastive_rows` is the pure construction (testable on fake verdicts); `sample_judgments` runs
the model (`verdict_logps` reads all the judgments of one conversation in one pass over it);
`con_j_rows` is both, over many pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

Messages = list[dict[str, str]]


@dataclass
class Judgment:
    """One sampled judgment of one order."""

    rationale: str
    """The judge's sampled text before the verdict (without the verdict prefix)."""
    verdict: str | None
    """Which response it prefers, 'a' or 'b' (whatever the order it was shown in); None when the
    two labels were exactly equally likely."""
    text: str
    """The judgment as training text: rationale + "\\n" + prefix + " " + the label shown."""


@dataclass
class ConJStats:
    pairs: int = 0
    """Response pairs judged (both orders, `con_j_samples` judgments each)."""
    judgments: int = 0
    """Judgments sampled in all."""
    agreeing: int = 0
    """Pairs whose two orders' majority verdicts picked the same response (a pseudo-label)."""
    skipped_disagree: int = 0
    """Pairs without a pseudo-label: the orders' majorities differ, or an order is tied."""
    skipped_one_sided: int = 0
    """Pairs with a pseudo-label but no order holding both a matching and a contradicting judgment."""
    rows: int = 0
    """Judge-training rows built (at most one per order, so at most two per pair)."""
    label_is_chosen: int = 0
    """Pairs whose pseudo-label is the pair's chosen response (Con-J agrees with the pointwise judge)."""
    first_shown: int = 0
    """Judgments (with a verdict) that prefer the response shown first: position bias."""
    with_verdict: int = 0
    """Judgments with a verdict (the two labels not exactly equally likely)."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["consistency"] = self.agreeing / self.pairs if self.pairs else None
        out["agreement_with_pointwise"] = self.label_is_chosen / self.agreeing if self.agreeing else None
        out["first_shown_rate"] = self.first_shown / self.with_verdict if self.with_verdict else None
        return out


def majority(verdicts: list[str | None]) -> str | None:
    """'a' or 'b' when strictly more verdicts pick it than the other; None on a tie."""
    na, nb = verdicts.count("a"), verdicts.count("b")
    return "a" if na > nb else "b" if nb > na else None


def contrastive_rows(conversations: tuple[Messages, Messages],
                     judgments: tuple[list[Judgment], list[Judgment]]) -> tuple[list[dict[str, Any]], str | None, str]:
    """The judge-training rows of one pair from its two orders' judgments.

    conversations / judgments: (order (a, b), order (b, a)). Returns (rows, pseudo-label, outcome)
    with outcome 'rows', 'disagree' (no pseudo-label) or 'one_sided' (a label but no order with
    both kinds of judgment)."""
    majorities = [majority([j.verdict for j in js]) for js in judgments]
    if majorities[0] is None or majorities[0] != majorities[1]:
        return [], None, "disagree"
    label = majorities[0]
    rows = []
    for order, conv, js in zip(("ab", "ba"), conversations, judgments):
        good = [j for j in js if j.verdict == label]
        bad = [j for j in js if j.verdict is not None and j.verdict != label]
        if good and bad:
            rows.append({"prompt": conv, "chosen": good[0].text, "rejected": bad[0].text, "source": "con_j",
                         "order": order, "pseudo_label": label,
                         "votes": [sum(j.verdict == label for j in js), len(js)]})
    return rows, label, ("rows" if rows else "one_sided")


def _rationale(text: str, prefix: str) -> str:
    """The judge's text before it wrote the verdict prefix itself (the sample stops there)."""
    i = text.lower().find(prefix.lower())
    return (text[:i] if i >= 0 else text).strip()


def verdict_logps(model: Any, tokenizer: Any, contexts: list[list[int]], heads: list[str], answers: list[str],
                  groups: list[int], chunk: int = 8) -> list[list[float]]:
    """`rewards.judge.answer_logps` for many heads that share few contexts: the same numbers,
    log p(answer | context + head) of each answer of each row, with each distinct context
    (a `groups` value; rows of one group must have equal contexts) run through the model once and
    every head + answer on its KV cache (`models.logps.shared_prefix_token_logps`), `chunk` groups
    per forward. Con-J reads S judgments per judge conversation, so this runs the conversation
    once instead of S times.

    As in answer_logps, answers carry their own leading space (" A"), head + answer is tokenized as
    one string and the answer's log-prob is the sum over the tokens after the longest prefix
    shared by the head and every head + answer."""
    from rlhflab.models.load import eval_mode
    from rlhflab.models.logps import shared_prefix_token_logps
    from rlhflab.rewards.judge import common_prefix_len, right_padded_batch

    seqs: list[tuple[int, int, list[int], int]] = []  # (row, group, tail ids, index of the answer's first token)
    for i, (head, g) in enumerate(zip(heads, groups)):
        head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        full = [tokenizer(head + a, add_special_tokens=False)["input_ids"] for a in answers]
        common = min(min(common_prefix_len(head_ids, f) for f in full), min(len(f) - 1 for f in full))
        seqs += [(i, g, f, common) for f in full]
    out: list[list[float]] = [[] for _ in heads]
    device = next(model.parameters()).device
    order = list(dict.fromkeys(groups))
    with eval_mode(model), torch.no_grad():
        for s in range(0, len(order), chunk):
            part = set(order[s:s + chunk])
            rows = [x for x in seqs if x[1] in part]
            batch = right_padded_batch([contexts[i] + f for i, _, f, _ in rows], [len(f) for _, _, f, _ in rows], device)
            group = torch.tensor([g for _, g, _, _ in rows], device=device)
            tok_lp, _ = shared_prefix_token_logps(model, batch, group)  # (B, T)
            for b, (i, _, f, common) in enumerate(rows):
                start = len(contexts[i]) + common
                out[i].append(float(tok_lp[b, start:len(contexts[i]) + len(f)].sum()))
    return out


def sample_judgments(chat: Any, judge: Any, pairs: list[tuple[Messages, str, str]], samples: int,
                     max_new_tokens: int, temperature: float, seed: int) -> list[tuple[list[Judgment], list[Judgment]]]:
    """For each (prompt, a, b): `samples` judgments of the order (a, b) and of the order (b, a).

    chat: a feedback.generate.ChatModel of the judge's model; judge: a pairwise rewards.judge.Judge
    with `rationale` on (its prompt asks for a rationale, then the verdict)."""
    from rlhflab.rewards.judge_templates import DEFAULT_PREFIX

    prefix = judge.cfg.verdict_prefix or DEFAULT_PREFIX["pairwise"]
    la, lb = (x.strip() for x in judge.cfg.labels)
    convs = [c for p, a, b in pairs for c in (judge.judge_messages(p, a, b), judge.judge_messages(p, b, a))]
    texts = chat.reply(convs, samples, max_new_tokens, temperature, 1.0, seed=seed, stop=(prefix,))
    flat: list[tuple[int, str]] = [(c, _rationale(t, prefix)) for c, ts in enumerate(texts) for t in ts]
    heads = [(r + "\n" if r else "") + prefix for _, r in flat]
    contexts = [chat.encode(convs[c]) for c, _ in flat]
    logps = verdict_logps(chat.model, chat.tokenizer, contexts, heads, [" " + la, " " + lb], [c for c, _ in flat],
                          chunk=judge.cfg.batch_size)
    out: list[tuple[list[Judgment], list[Judgment]]] = [([], []) for _ in pairs]
    for (c, rationale), head, (lp_a, lp_b) in zip(flat, heads, logps):
        shown = la if lp_a > lp_b else lb if lp_b > lp_a else None
        first_order = c % 2 == 0  # convs alternate (a, b), (b, a)
        verdict = None if shown is None else ("a" if (shown == la) == first_order else "b")
        text = head + " " + (shown or la)
        out[c // 2][0 if first_order else 1].append(Judgment(rationale, verdict, text))
    return out


def con_j_rows(chat: Any, judge: Any, pairs: list[dict[str, Any]], samples: int, max_new_tokens: int,
               temperature: float, seed: int) -> tuple[list[dict[str, Any]], ConJStats]:
    """Judge-training rows from response pairs (rows with `prompt` messages, `chosen`, `rejected`);
    a = the pair's chosen, b = its rejected."""
    stats = ConJStats(pairs=len(pairs))
    if not pairs:
        return [], stats
    triples = [(r["prompt"], r["chosen"], r["rejected"]) for r in pairs]
    judged = sample_judgments(chat, judge, triples, samples, max_new_tokens, temperature, seed)
    rows: list[dict[str, Any]] = []
    for (p, a, b), js in zip(triples, judged):
        stats.judgments += len(js[0]) + len(js[1])
        for shown_first, order in (("a", js[0]), ("b", js[1])):
            stats.with_verdict += sum(j.verdict is not None for j in order)
            stats.first_shown += sum(j.verdict == shown_first for j in order)
        convs = (judge.judge_messages(p, a, b), judge.judge_messages(p, b, a))
        new, label, outcome = contrastive_rows(convs, js)
        if outcome == "disagree":
            stats.skipped_disagree += 1
            continue
        stats.agreeing += 1
        stats.label_is_chosen += label == "a"
        if outcome == "one_sided":
            stats.skipped_one_sided += 1
        rows += new
    stats.rows = len(rows)
    return rows, stats
