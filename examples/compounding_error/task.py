"""The lane task: a slow walk that must stay in a lane, its expert, its judgment and its statistics.

A prompt is a lane, five consecutive letters, and the letter the walker stands on: `klmno n`. The
completion is the walk, one letter (one token) per step; each letter is the walker's next
position (a = 0, ..., z = 25). The expert stays where it is with probability STAY_P and otherwise
moves one letter, up or down at random among the moves that keep it in the lane; starts are drawn
from its stationary distribution, so its walk looks the same at every step. The expert never leaves
the lane: its demonstrations contain no walker outside the lane and no return into it.

The judgment (the task's ground truth, the "expensive feedback" that RLHF learns a proxy of)
counts the off-target steps among the first H letters: a step is off target when its letter is
outside the lane or more than one letter away from the previous position; once the text stops
being letters (a space, a digit, the end of the completion) every remaining step is off target.

Why behaviour cloning can compound here: outside the lane a cloned walker is in (letter, lane)
combinations it never saw (every letter is inside the lane of some other prompt, so the letters
themselves are familiar), and what it learned everywhere else is "mostly stay, sometimes step": a
slip that takes it out tends to last, while new slips keep coming.

Nothing here imports torch: the scorer `gold` and the statistics are plain Python.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
HALF_WIDTH = 2
"""The lane is its centre +- HALF_WIDTH letters (5 letters)."""
CENTRES = "jklmnopq"
"""Lane centres of the 8 prompts (lanes h..l to o..s): 7 letters of room on each side of every lane."""
STAY_P = 0.75
"""The expert's probability of staying put at a step."""
H_MAX = 32
"""Steps per evaluated episode (rollouts and evaluation sample exactly this many tokens)."""
DEMO_STEPS = 48
"""Letters per demonstration; SFT keeps the first 40 (data.max_length), so no demonstration ends
inside the evaluated horizon and the cloned policy never learns to stop early."""


STATIONARY = (1, 2, 2, 2, 1)
"""The expert's stationary distribution over the lane's letters (edge ... edge), up to a factor:
an edge letter is left only inward, so it holds half the weight of an inner one. Starts are drawn
from it, so the expert's walk is stationary from the first step."""


def lane_of(centre: str) -> str:
    """The five letters of the lane centred on `centre`, e.g. `klmno` for `m`."""
    c = ALPHABET.index(centre)
    return ALPHABET[c - HALF_WIDTH: c + HALF_WIDTH + 1]


def prompt_for(centre: str, start: str) -> str:
    """The prompt: the lane, a space, the letter the walker stands on (`klmno n`)."""
    return f"{lane_of(centre)} {start}"


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(centre, start) of a prompt written by `prompt_for`."""
    lane, _, start = prompt.strip().partition(" ")
    if len(lane) != 2 * HALF_WIDTH + 1 or lane != lane_of(lane[HALF_WIDTH]) or start not in lane or len(start) != 1:
        raise ValueError(f"not a lane prompt: {prompt!r} (expected {2 * HALF_WIDTH + 1} consecutive letters, "
                         "a space and one of them)")
    return lane[HALF_WIDTH], start


def random_start(centre: str, rng: random.Random) -> str:
    """A start letter drawn from STATIONARY."""
    return rng.choices(lane_of(centre), weights=STATIONARY)[0]


def in_lane(pos: int, centre: int) -> bool:
    return abs(pos - centre) <= HALF_WIDTH


# ----------------------------------------------------------------------------- walkers
def expert_walk(centre: str, start: str, rng: random.Random, steps: int = DEMO_STEPS) -> str:
    """A demonstration from `start`: at each step stay (STAY_P) or step within the lane."""
    c, pos, out = ALPHABET.index(centre), ALPHABET.index(start), []
    for _ in range(steps):
        if rng.random() >= STAY_P:
            pos += rng.choice([m for m in (-1, 1) if in_lane(pos + m, c)])
        out.append(pos)
    return "".join(ALPHABET[p] for p in out)


def perturbed_walk(centre: str, start: str, seed: float, free: Sequence[tuple[int, int]], steps: int = H_MAX) -> str:
    """The expert with its lane rule switched off during the `free` stretches (first step, length):
    there a moving step goes up or down at random, lane or not. Outside the stretches it moves like
    the expert, and a walker left outside the lane steps back toward it when it moves. Two calls
    with the same `seed` are the same walk until their stretches differ: the comparisons pair such
    walks."""
    rng = random.Random(seed)
    c, pos, out = ALPHABET.index(centre), ALPHABET.index(start), []
    off_rule = [any(s <= t < s + n for s, n in free) for t in range(steps)]
    for t in range(steps):
        if rng.random() >= STAY_P:
            if off_rule[t]:
                pos += rng.choice((-1, 1))
            elif not in_lane(pos, c):
                pos += -1 if pos > c else 1
            else:
                pos += rng.choice([m for m in (-1, 1) if in_lane(pos + m, c)])
        pos = min(max(pos, 0), len(ALPHABET) - 1)
        out.append(pos)
    return "".join(ALPHABET[p] for p in out)


# ----------------------------------------------------------------------------- judgment
def step_errors(centre: str, start: str, completion: str, horizon: int = H_MAX) -> list[int]:
    """1 for each off-target step among the first `horizon` (module docstring), else 0."""
    c, prev, errs = ALPHABET.index(centre), ALPHABET.index(start), []
    for t in range(horizon):
        ch = completion[t] if t < len(completion) else ""
        if len(ch) != 1 or ch not in ALPHABET:
            return errs + [1] * (horizon - t)
        pos = ALPHABET.index(ch)
        errs.append(int(not in_lane(pos, c) or abs(pos - prev) > 1))
        prev = pos
    return errs


def off_target(centre: str, start: str, completion: str, horizon: int = H_MAX) -> int:
    """The judgment: how many of the first `horizon` steps are off target."""
    return sum(step_errors(centre, start, completion, horizon))


def gold(samples: list[Any]) -> list[float]:
    """`type: python` scorer: minus the judgment of each completion (logged as gold/mean, never optimized)."""
    return [-float(off_target(*parse_prompt(s.prompt_text), s.completion)) for s in samples]


# ----------------------------------------------------------------------------- comparisons
Walk = tuple[str, str, str]
"""(centre, start, text): a walk and the prompt it answers."""


def perturbed_pair(centre: str, start: str, rng: random.Random) -> tuple[str, str]:
    """Two walks from one seed: half the time the second has one more free stretch, else both have
    a free stretch from the same step and the second's lasts longer (so the comparisons teach that
    a longer excursion is worse, not only that any excursion is)."""
    seed = rng.random()
    base = [(rng.randrange(H_MAX), rng.randint(4, H_MAX)) for _ in range(rng.choice((0, 0, 1)))]
    first = rng.randrange(H_MAX - 4)
    if rng.random() < 0.5:
        short, long = sorted(rng.sample(range(2, H_MAX), 2))
        return (perturbed_walk(centre, start, seed, base + [(first, short)]),
                perturbed_walk(centre, start, seed, base + [(first, long)]))
    extra = [(first, rng.randint(2, H_MAX))]
    return perturbed_walk(centre, start, seed, base), perturbed_walk(centre, start, seed, base + extra)


def ranked(centre: str, start: str, a: str, b: str) -> dict[str, str] | None:
    """A pairwise row (chosen = fewer off-target steps), or None for a tie or an empty walk."""
    ea, eb = off_target(centre, start, a), off_target(centre, start, b)
    if ea == eb or not a or not b:
        return None
    chosen, rejected = (a, b) if ea < eb else (b, a)
    return {"prompt": prompt_for(centre, start), "chosen": chosen, "rejected": rejected}


def comparisons(n_perturbed: int, policy_walks: list[Walk], rng: random.Random) -> list[dict[str, str]]:
    """The reward model's data, every pair ranked by the judgment (ties dropped): `n_perturbed`
    pairs of perturbed demonstrations; the policy's own walks paired two by two (same prompt);
    each policy walk with an error against a fresh demonstration (first H_MAX letters)."""
    rows: list[dict[str, str]] = []
    while len(rows) < n_perturbed:
        centre = rng.choice(CENTRES)
        start = random_start(centre, rng)
        row = ranked(centre, start, *perturbed_pair(centre, start, rng))
        rows += [row] if row else []
    for (ca, sa, a), (cb, sb, b) in zip(policy_walks[::2], policy_walks[1::2]):
        row = ranked(ca, sa, a, b) if (ca, sa) == (cb, sb) else None
        rows += [row] if row else []
    for centre, start, text in policy_walks:
        row = ranked(centre, start, expert_walk(centre, start, rng, H_MAX), text)
        rows += [row] if row else []
    rng.shuffle(rows)
    return rows


# ----------------------------------------------------------------------------- statistics
def error_curve(errors: list[list[int]]) -> list[float]:
    """Mean cumulative off-target steps at H = 1..len: the error against the horizon."""
    n, total, out = len(errors), 0.0, []
    for t in range(len(errors[0])):
        total += sum(e[t] for e in errors) / n
        out.append(total)
    return out


def per_step_rate(errors: list[list[int]]) -> list[float]:
    """P(step t is off target), t = 1..len."""
    return [sum(e[t] for e in errors) / len(errors) for t in range(len(errors[0]))]


def transitions(errors: list[list[int]]) -> dict[str, float]:
    """Over steps t >= 2: slip = P(off at t | on at t-1); stay_off = P(off at t | off at t-1) (the
    persistence of an error). excursion = mean length of a run of off-target steps (a run still
    going at the horizon counts as far as it got); excursions = how many runs."""
    on = slips = off = stays = 0
    runs: list[int] = []
    for e in errors:
        run = 0
        for t, x in enumerate(e):
            if x:
                run += 1
            elif run:
                runs.append(run)
                run = 0
            if t == 0:
                continue
            if e[t - 1]:
                off, stays = off + 1, stays + x
            else:
                on, slips = on + 1, slips + x
        if run:
            runs.append(run)
    return {"slip": slips / max(on, 1), "stay_off": stays / max(off, 1),
            "excursion": sum(runs) / len(runs) if runs else 0.0, "excursions": len(runs)}


def move_fraction(texts: list[str], horizon: int = H_MAX) -> float:
    """Fraction of consecutive letter pairs that differ: how much the walker still walks."""
    pairs = [(a, b) for t in texts for a, b in zip(t[:horizon], t[1:horizon])]
    return sum(a != b for a, b in pairs) / max(len(pairs), 1)


def fit_exponent(hs: Sequence[int], errs: Sequence[float]) -> float:
    """Least-squares slope of log(error) on log(H): error ~ c * H^slope (nan with fewer than two
    positive errors)."""
    pts = [(math.log(h), math.log(e)) for h, e in zip(hs, errs) if e > 0]
    if len(pts) < 2:
        return float("nan")
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx
