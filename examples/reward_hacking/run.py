"""The reward-hacking demo of docs/reward_hacking.md, with the figures of its README.

A thin wrapper around the library's built-in setting (`rlhflab.eval.hacking_demo`, task in
`rlhflab.eval.synthetic`): per seed it SFTs a tiny reference, learns a proxy reward model from
gold-labelled comparisons about drinks only (where "bitter" is praise), then runs PPO on other
items with the proxy as the reward and the gold reward as the `gold:` metric, at ppo's default
kl_coef 0.05 and at 3. It writes the curves and summaries beside this file (curves.json) and the
proxy / gold vs KL chart of the first seed to docs/img/reward_hacking.svg.

    .venv/bin/python examples/reward_hacking/run.py                 # seeds 0 and 1, a few minutes on one thread
    .venv/bin/python examples/reward_hacking/run.py --seeds 0 --kl-coefs 0.05,0.3,1,3 --out sweep.json

Any option of `python -m rlhflab.eval.hacking_demo --help` can be given; --out and --svg default
to the files named above.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rlhflab.eval.hacking_demo import main

HERE = Path(__file__).resolve().parent
DEFAULTS = {"--seeds": "0,1", "--out": str(HERE / "curves.json"),
            "--svg": str(HERE.parents[1] / "docs" / "img" / "reward_hacking.svg")}


def with_defaults(argv: list[str]) -> list[str]:
    """`argv` plus every DEFAULTS option it does not give itself."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return argv + [x for k, v in DEFAULTS.items() if k not in given for x in (k, v)]


if __name__ == "__main__":
    main(with_defaults(sys.argv[1:]))
