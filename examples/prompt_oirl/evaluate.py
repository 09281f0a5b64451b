"""Prompt-selection policies and their held-out evaluation (examples/prompt_oirl/run.py).

Every policy maps a held-out query to one prompt (or, for `vote` and `oracle`, uses all K
replies); its accuracy is the mean over held-out queries of the logged correctness of what it
picks. Only the logged records are read: a policy that needs no expensive call at selection time
really makes none here, and the one call it makes afterwards is the record of its chosen prompt.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor

from rlhflab.eval.stats import auroc
from rlhflab.eval.winrate import bootstrap_ci


def label_matrix(records: list[dict[str, Any]], split: str,
                 prompt_names: list[str]) -> tuple[list[dict[str, Any]], Tensor, list[list[Any]]]:
    """(queries in first-seen order as {qid, kind, query, answer}, correct (Nq, K) bool,
    extracted answers [Nq][K]) of one split."""
    col = {name: k for k, name in enumerate(prompt_names)}
    rows: dict[str, int] = {}
    queries, correct, extracted = [], [], []
    for r in records:
        if r["split"] != split or r["prompt"] not in col:
            continue
        if r["qid"] not in rows:
            rows[r["qid"]] = len(queries)
            queries.append({k: r[k] for k in ("qid", "kind", "query", "answer")})
            correct.append([None] * len(col))
            extracted.append([None] * len(col))
        i, k = rows[r["qid"]], col[r["prompt"]]
        correct[i][k], extracted[i][k] = bool(r["correct"]), r.get("extracted")
    missing = [(queries[i]["qid"], prompt_names[k]) for i, row in enumerate(correct) for k, v in enumerate(row) if v is None]
    if missing:
        raise ValueError(f"split '{split}': no record for (query, prompt) {missing[0]} and {len(missing) - 1} more")
    return queries, torch.tensor(correct, dtype=torch.bool).reshape(len(queries), len(col)), extracted


def best_single(correct_train: Tensor) -> int:
    """The prompt with the highest logged accuracy (ties: the lowest index)."""
    acc = correct_train.float().mean(0)
    return int(torch.nonzero(acc == acc.max())[0])


def per_kind_best(queries: list[dict[str, Any]], correct: Tensor) -> dict[str, int]:
    """For each query kind, the prompt with the highest logged accuracy on that kind."""
    kinds = sorted({q["kind"] for q in queries})
    return {k: best_single(correct[[i for i, q in enumerate(queries) if q["kind"] == k]]) for k in kinds}


def vote(extracted: list[list[Any]], order: list[int]) -> list[int]:
    """For each query, a prompt whose answer is the most common one among the K replies (no
    answer found = no vote); ties go to the answer of the prompt earliest in `order`."""
    picks = []
    for answers in extracted:
        counts = Counter(a for a in answers if a is not None)
        if not counts:
            picks.append(order[0])
            continue
        top = max(counts.values())
        picks.append(next(k for k in order if answers[k] is not None and counts[answers[k]] == top))
    return picks


def outcome(correct: Tensor, picks: list[int] | Tensor) -> Tensor:
    """(Nq,) float: the logged correctness of each query's picked prompt."""
    idx = torch.as_tensor(picks, dtype=torch.long)
    return correct[torch.arange(correct.shape[0]), idx].float()


def summarize(outcomes: Tensor, calls: int, seed: int = 0) -> dict[str, Any]:
    """Accuracy with its percentile-bootstrap 95% interval over queries, and expensive calls per query."""
    lo, hi = bootstrap_ci(outcomes.double().tolist(), seed=seed)
    return {"accuracy": round(float(outcomes.double().mean()), 4), "ci95": [round(lo, 4), round(hi, 4)], "calls_per_query": calls}


def calibration(probs: Tensor, labels: Tensor, bins: int = 10) -> dict[str, Any]:
    """Reliability of P(correct) forecasts: expected calibration error
    ECE = sum_b (n_b / N) |mean(y in b) - mean(p in b)| over `bins` equal-width bins of [0, 1]
    (the last bin closed), the Brier score mean((p - y)^2), and the per-bin table."""
    p, y = probs.double().reshape(-1), labels.double().reshape(-1)
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    b = torch.clamp(torch.bucketize(p, edges, right=True) - 1, 0, bins - 1)
    ece, table = 0.0, []
    for i in range(bins):
        sel = b == i
        if sel.any():
            gap = float(y[sel].mean() - p[sel].mean())
            ece += float(sel.double().mean()) * abs(gap)
            table.append({"bin": [round(float(edges[i]), 2), round(float(edges[i + 1]), 2)], "n": int(sel.sum()),
                          "mean_p": round(float(p[sel].mean()), 4), "frac_correct": round(float(y[sel].mean()), 4)})
    return {"ece": round(ece, 4), "brier": round(float(((p - y) ** 2).mean()), 4), "bins": table}


def rm_auroc(probs: Tensor, labels: Tensor) -> float | None:
    """AUROC of the RM's P(correct) over all held-out (query, prompt) pairs; None with one class."""
    p, y = probs.reshape(-1), labels.reshape(-1).bool()
    if y.all() or not y.any():
        return None
    return round(auroc(p[y], p[~y]), 4)


def within_query_auroc(probs: Tensor, labels: Tensor) -> float | None:
    """AUROC over (correct, incorrect) prompt pairs of the same query (queries with both kinds):
    how well the RM ranks prompts for one query, which is all that selection uses."""
    wins = total = 0.0
    for p, y in zip(probs.double(), labels.bool()):
        pos, neg = p[y], p[~y]
        if len(pos) and len(neg):
            diff = pos[:, None] - neg[None, :]
            wins += float((diff > 0).double().sum() + 0.5 * (diff == 0).double().sum())
            total += diff.numel()
    return round(wins / total, 4) if total else None


def compare(queries_test: list[dict[str, Any]], correct_test: Tensor, extracted_test: list[list[Any]],
            correct_train: Tensor, queries_train: list[dict[str, Any]], probs: Tensor, seed: int = 0) -> dict[str, Any]:
    """The policies on the held-out queries (see the module docstring): their accuracies, CIs,
    expensive calls per query, and the paired difference RM selection - best single prompt."""
    K = correct_test.shape[1]
    single = best_single(correct_train)
    train_acc = correct_train.float().mean(0)
    order = sorted(range(K), key=lambda k: (-float(train_acc[k]), k))
    kind_best = per_kind_best(queries_train, correct_train)
    rm_pick = probs.argmax(1)
    outs = {
        "rm_select": outcome(correct_test, rm_pick),
        "best_single": outcome(correct_test, [single] * len(queries_test)),
        "random_prompt": correct_test.float().mean(1),  # the expectation over a uniform random prompt
        "per_kind_best": outcome(correct_test, [kind_best.get(q["kind"], single) for q in queries_test]),
        "vote_all": outcome(correct_test, vote(extracted_test, order)),
        "oracle": correct_test.any(1).float(),
    }
    calls = {"rm_select": 1, "best_single": 1, "random_prompt": 1, "per_kind_best": 1, "vote_all": K, "oracle": K}
    methods = {name: summarize(o, calls[name], seed) for name, o in outs.items()}
    diff = outs["rm_select"] - outs["best_single"]
    lo, hi = bootstrap_ci(diff.double().tolist(), seed=seed)
    return {"methods": methods, "best_single_index": single, "per_kind_best_index": kind_best,
            "rm_minus_best_single": {"mean": round(float(diff.mean()), 4), "ci95": [round(lo, 4), round(hi, 4)]},
            "rm_pick_counts": torch.bincount(rm_pick, minlength=K).tolist()}
