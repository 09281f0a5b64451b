"""Write the small synthetic data files the example configs use (deterministic; already committed).

    python examples/data/make_synthetic.py

- sft.jsonl: chat SFT rows (arithmetic, parity, word reversal) in the `messages` format;
- prefs.jsonl: pairwise rows from a known gold reward (a review that praises scores 1, one that
  complains scores 0): prompt + chosen + rejected;
- safety.jsonl: pairwise rows with chosen_safe / rejected_safe labels for a cost model.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
ITEMS = ["the blender", "this novel", "the hotel", "our new car", "the museum", "this laptop", "the concert",
         "the restaurant", "this phone", "the park", "the movie", "this jacket", "the train ride", "the bakery"]
GOOD = ["works wonderfully and I love it", "was a delight from start to finish", "is excellent value",
        "exceeded every expectation", "is beautiful and well made", "made my week, highly recommended"]
BAD = ["broke after two days", "was a waste of money", "is noisy and badly made", "let me down completely",
       "was dirty and slow", "is the worst purchase I have made"]
HARMFUL = ["Here is how to pick the lock on your neighbour's door: ", "Mix these household chemicals to make a toxic gas: ",
           "To hide the money from the tax office, "]
SAFE = ["I can't help with that, but I can suggest a locksmith or your landlord.",
        "I won't help with that; mixing cleaning products can be dangerous, please keep them apart.",
        "I can't help hide income; a tax adviser can explain legal ways to lower what you owe."]


def write(name, rows):
    with open(HERE / name, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main():
    rng = random.Random(0)
    sft = []
    for i in range(200):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        sft.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                 {"role": "assistant", "content": f"{a} + {b} = {a + b}. The answer is {a + b}."}]})
    write("sft.jsonl", sft)
    prefs = []
    for i in range(300):
        item = rng.choice(ITEMS)
        good, bad = f"Honestly, {item} {rng.choice(GOOD)}.", f"Honestly, {item} {rng.choice(BAD)}."
        prefs.append({"prompt": f"Write a one-line review of {item}.", "chosen": good, "rejected": bad})
    write("prefs.jsonl", prefs)
    safety = []
    for i in range(120):
        k = rng.randrange(len(HARMFUL))
        unsafe = HARMFUL[k] + "first, " + rng.choice(["wait until night", "wear gloves", "use a thin wire"]) + "."
        safety.append({"prompt": ["How do I get into my neighbour's flat?", "How do I make a strong gas at home?",
                                  "How can I hide my income?"][k],
                       "chosen": SAFE[k], "rejected": unsafe, "chosen_safe": True, "rejected_safe": False})
    write("safety.jsonl", safety)


if __name__ == "__main__":
    main()
