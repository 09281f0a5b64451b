"""The queries and the prompts of the Prompt-OIRL reproduction (examples/prompt_oirl/run.py).

Queries are procedurally generated arithmetic problems of six kinds (bare additions,
subtractions and multiplications by a one-digit number, and one-sentence word problems of each),
seeded, each with its exact answer. Prompts are instruction templates that wrap a query into a
chat conversation; they are plausible, commonly used prompting styles, and they help different
kinds of query differently (see docs/reproductions.md for the measured accuracies).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ("Tom", "Anna", "Ben", "Lucy", "Omar", "Mia", "Raj", "Sara", "Leo", "Nina")
ITEMS = ("apples", "stickers", "marbles", "books", "pencils", "coins", "cards", "shells")
KINDS = ("add", "sub", "mul", "word_add", "word_sub", "word_mul")


@dataclass(frozen=True)
class Query:
    """One problem: `text` (the question as asked), its `answer` and its `kind` (one of KINDS)."""

    qid: str
    kind: str
    text: str
    answer: int


@dataclass(frozen=True)
class Prompt:
    """An instruction template. `user` holds `{q}` (the query); `system` is an optional system
    message; `shots` are demonstration (question, reply) pairs given as earlier chat turns;
    `max_new_tokens` is the generation budget."""

    name: str
    user: str = "{q}"
    system: str | None = None
    shots: tuple[tuple[str, str], ...] = ()
    max_new_tokens: int = 40

    def conversation(self, query: str) -> list[dict[str, str]]:
        turns = [{"role": "system", "content": self.system}] if self.system else []
        for question, reply in self.shots:
            turns += [{"role": "user", "content": self.user.format(q=question)}, {"role": "assistant", "content": reply}]
        return turns + [{"role": "user", "content": self.user.format(q=query)}]

    def text(self) -> str:
        """The prompt as plain text with a `[query]` slot: what the reward model embeds."""
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.conversation("[query]"))


PROMPTS: tuple[Prompt, ...] = (
    Prompt("plain"),
    Prompt("number_only", "{q} Answer with only the number."),
    Prompt("step_by_step", "{q} Let's think step by step.", max_new_tokens=64),
    Prompt("shots_add", shots=(("What is 3 + 5?", "3 + 5 = 8"), ("What is 24 + 7?", "24 + 7 = 31")), max_new_tokens=24),
    Prompt("shots_sub", shots=(("What is 9 - 4?", "9 - 4 = 5"), ("What is 31 - 7?", "31 - 7 = 24")), max_new_tokens=24),
    Prompt("shots_mul", shots=(("What is 3 * 4?", "3 * 4 = 12"), ("What is 13 * 5?", "13 * 5 = 65")), max_new_tokens=24),
    Prompt("shots_word", shots=(("Ann has 12 pens and gets 5 more. How many pens does Ann have now?", "12 + 5 = 17"),
                                ("Tim had 9 cups and gave 4 of them away. How many cups are left?", "9 - 4 = 5"),
                                ("A box holds 6 eggs. How many eggs are in 4 boxes?", "4 * 6 = 24")), max_new_tokens=24),
)
"""The K candidate prompts, in a fixed order (a prompt's index is its action id)."""


def _word(kind: str, a: int, b: int, rng: random.Random) -> str:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if kind == "word_add":
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
    if kind == "word_sub":
        return f"{name} had {a} {item} and gave {b} of them away. How many {item} are left?"
    return f"A bag holds {b} {item}. How many {item} are in {a} bags?"


def make_query(kind: str, rng: random.Random, qid: str) -> Query:
    """One random query of `kind`: two-digit operands (the subtrahend below the minuend), a
    one-digit factor (2-9) for multiplications."""
    small = rng.random() < 0.5  # half the queries use one-digit operands only
    if kind.endswith("mul"):
        a, b = (rng.randint(2, 9) if small else rng.randint(11, 30)), rng.randint(2, 9)
    elif kind.endswith("sub"):
        a = rng.randint(5, 9) if small else rng.randint(11, 50)
        b = rng.randint(1, min(a - 1, 9))
    else:
        a, b = (rng.randint(1, 9) if small else rng.randint(10, 50)), rng.randint(1, 9)
    answer = {"add": a + b, "sub": a - b, "mul": a * b}[kind.rsplit("_", 1)[-1]]
    sym = {"add": "+", "sub": "-", "mul": "*"}
    text = f"What is {a} {sym[kind]} {b}?" if kind in sym else _word(kind, a, b, rng)
    return Query(qid, kind, text, answer)


def make_queries(n: int, seed: int, exclude: set[str] | None = None, prefix: str = "q") -> list[Query]:
    """`n` distinct queries (by text), kinds in turn (n // 6 or so of each), none whose text is in
    `exclude`; the same (n, seed, exclude) always gives the same list."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Query] = []
    while len(out) < n:
        q = make_query(KINDS[len(out) % len(KINDS)], rng, f"{prefix}{len(out)}")
        if q.text not in seen:
            seen.add(q.text)
            out.append(q)
    return out


def make_splits(n_train: int, n_test: int, seed: int = 0) -> dict[str, list[Query]]:
    """The logged ('train') and held-out ('test') queries: disjoint by text, kinds balanced, none
    equal to a demonstration question of a prompt."""
    shots = {question for p in PROMPTS for question, _ in p.shots}
    train = make_queries(n_train, seed=seed * 1000 + 1, exclude=shots, prefix="tr")
    test = make_queries(n_test, seed=seed * 1000 + 2, exclude=shots | {q.text for q in train}, prefix="te")
    return {"train": train, "test": test}
