"""Write the single-completion example data from prefs.jsonl (deterministic; already committed).

    python examples/data/make_unpaired.py

Each pair of prefs.jsonl gives two rows, in order: its chosen completion and its rejected one.

- unpaired.jsonl (prompt, completion, label) for `algorithm: kto` and `npo`: chosen -> label
  true (desirable), rejected -> label false (undesirable);
- scored.jsonl (prompt, completion, reward) for `algorithm: dro`: chosen -> reward 1.0,
  rejected -> reward 0.0 (thumbs up / down, as in the DRO paper's setting).
"""

import json
from pathlib import Path

HERE = Path(__file__).parent


def main():
    pairs = [json.loads(line) for line in (HERE / "prefs.jsonl").read_text().splitlines() if line.strip()]
    unpaired, scored = [], []
    for p in pairs:
        for completion, good in ((p["chosen"], True), (p["rejected"], False)):
            unpaired.append({"prompt": p["prompt"], "completion": completion, "label": good})
            scored.append({"prompt": p["prompt"], "completion": completion, "reward": 1.0 if good else 0.0})
    for name, rows in (("unpaired.jsonl", unpaired), ("scored.jsonl", scored)):
        with open(HERE / name, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
