"""Write gold_pairs.jsonl: preference pairs whose better response is known by construction.

Three kinds, 20 each, seeded:
- fact: a capital-city question; chosen names the right capital, rejected a wrong one (same wording);
- arithmetic: "What is a + b?"; chosen gives the right sum, rejected a sum off by 1-9;
- relevance: an everyday question; chosen answers it, rejected answers a different question.

The chosen response is always listed first in the file; the judge scripts shuffle or swap order.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
            ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Russia", "Moscow"), ("China", "Beijing"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Kenya", "Nairobi"),
            ("Peru", "Lima"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Poland", "Warsaw"),
            ("Thailand", "Bangkok"), ("Argentina", "Buenos Aires")]

QA = [("How do I boil an egg?", "Put the egg in boiling water for about 8 to 10 minutes, then cool it in cold water."),
      ("What should I wear in the rain?", "Wear a waterproof jacket with a hood and shoes that keep your feet dry."),
      ("How can I fall asleep faster?", "Keep a regular bedtime, avoid screens for an hour before bed and keep the room dark."),
      ("How do I water a cactus?", "Water it deeply but rarely, about every two to three weeks, and let the soil dry out."),
      ("What is a good way to learn new words?", "Read every day and write down new words with a short example sentence."),
      ("How do I clean a glass window?", "Spray a mix of water and vinegar, then wipe it with a dry microfiber cloth."),
      ("How can I keep bread fresh?", "Store it in a paper bag or a bread box at room temperature, or freeze slices."),
      ("How do I make a paper airplane?", "Fold a sheet in half lengthwise, fold the top corners to the center, then fold the wings down."),
      ("What helps with a sore throat?", "Drink warm liquids such as tea with honey and rest your voice."),
      ("How do I tie a simple knot?", "Make a loop with the rope, pass the end through the loop and pull both ends tight."),
      ("How can I save water at home?", "Turn off the tap while brushing your teeth and fix leaking faucets."),
      ("How do I care for a goldfish?", "Keep it in a filtered tank, feed it a small pinch of flakes once a day and change some water weekly."),
      ("What is a healthy snack?", "An apple with a handful of nuts is a healthy snack."),
      ("How do I remove a coffee stain?", "Blot the stain, rinse it with cold water and rub in a little liquid soap before washing."),
      ("How can I stay warm in winter?", "Wear several thin layers, a hat and gloves, and keep your feet dry."),
      ("How do I start running?", "Begin with short runs mixed with walking, three times a week, and increase slowly."),
      ("How do I make rice?", "Rinse one cup of rice, cook it in two cups of water covered on low heat for about 18 minutes."),
      ("How can I remember names better?", "Repeat the name when you hear it and link it to something about the person."),
      ("How do I grow basil?", "Plant it in a sunny spot, water it when the soil is dry and pinch off the flower buds."),
      ("How do I calm down when I am angry?", "Take slow deep breaths, count to ten and step away for a moment.")]


def build(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for country, capital in CAPITALS:
        wrong = rng.choice([c for _, c in CAPITALS if c != capital])
        rows.append({"kind": "fact", "prompt": f"What is the capital of {country}?",
                     "chosen": f"The capital of {country} is {capital}.", "rejected": f"The capital of {country} is {wrong}."})
    for _ in range(20):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        off = rng.choice([-1, 1]) * rng.randint(1, 9)
        rows.append({"kind": "arithmetic", "prompt": f"What is {a} + {b}?",
                     "chosen": f"{a} + {b} = {a + b}.", "rejected": f"{a} + {b} = {a + b + off}."})
    for i, (q, ans) in enumerate(QA):
        other = QA[(i + 1 + rng.randrange(len(QA) - 1)) % len(QA)][1]
        rows.append({"kind": "relevance", "prompt": q, "chosen": ans, "rejected": other})
    return rows


if __name__ == "__main__":
    out = Path(__file__).with_name("gold_pairs.jsonl")
    rows = build()
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} pairs to {out}")
