"""Preference losses on a synthetic task with a known gold reward.

The task. A prompt asks to rate a thing ("rate the hotel"); a well-formed response is
"it was W1, W2 and W3." where each slot W holds a sentiment word, good or bad. The gold reward is
#good - #bad over the slots, in {-3, -1, 1, 3}; any other text scores -4, below every well-formed
response, so a policy cannot gain by breaking the format. The data generator fills each slot with
a good word with probability 1/2 (the word drawn uniformly from its list). Both lists have the
same word lengths, so length says nothing about quality.

Stages (a few minutes on a 2-core CPU for all losses; `--help` for the knobs):
1. SFT a tiny random-init Llama on generator responses: the reference policy and the starting
   point of every preference run.
2. Pairs: two generator responses per prompt, labelled by the gold reward (ties redrawn);
   `chosen_reward` / `rejected_reward` (the gold rewards, for rpo) and `chosen_winrate` /
   `rejected_winrate` (the exact probability that the response beats a generator response, for
   sppo) ride along as columns.
3. Each loss trains from the SFT model with the same steps, batch, learning rate and optimizer.
4. Evaluation on held-out prompts: N responses sampled from the trained policy and N from the
   reference (temperature 1, no top-k / top-p, fixed seeds); win rate = P(gold(policy) >
   gold(reference)) + 1/2 P(tie) over prompt-matched sample pairs, with a 95% normal-approximation
   interval; also the reference against an independent reference sample (about 1/2), the mean
   gold reward, the fraction of well-formed responses and their mean length.

    python examples/gold_preference/run.py --losses all --out results.json
    python examples/gold_preference/run.py --losses dpo,ipo:beta=0.5,dpo:adam_eps=1e-8 --seeds 0,1,2

The functions are importable (tests/integration/test_dpo_gold.py loads this file by path).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GOOD = ("great", "happy", "kind", "superb", "lovely")
BAD = ("awful", "nasty", "rude", "broken", "bitter")
"""Same length profile (5, 5, 4, 6, 6) in both lists."""
SLOTS = 3
TRAIN_ITEMS = ("hotel", "movie", "meal", "book", "song", "trip", "game", "class", "show", "park",
               "cafe", "band", "bus", "tour", "shop", "room", "play", "talk", "car", "bike")
HELDOUT_ITEMS = ("film", "inn", "dish", "poem", "ride", "team", "app", "boat")
"""Evaluation prompts: none of them appears in the SFT or preference data."""
MALFORMED = -(SLOTS + 1)
"""The gold reward of a response that does not follow the template."""
WELL_FORMED = re.compile(r"it was (\w+), (\w+) and (\w+)\.")

BASE_MODEL = {"hidden": 64, "layers": 2, "heads": 4}
"""The tiny Llama (rlhflab.testing.tiny_causal_lm, ~0.1M parameters) that the task starts from."""

SFT = {"steps": 100, "batch_size": 32, "lr": 1e-2, "rows": 2000}
"""Stage 1: enough for the tiny model to write well-formed responses, each slot ~50/50 good."""

PREF = {"steps": 60, "batch_size": 32, "lr": 1e-3, "adam_eps": 1e-3, "pairs": 1000}
"""Stage 3, shared by every loss. adam_eps is 1e-3 instead of AdamW's 1e-8: with 1e-8, Adam turns
the vanishing gradients of the near-certain format tokens into full-size steps and DPO breaks the
response format of this tiny model on most seeds (docs/preference_results.md)."""

LOSSES: dict[str, dict[str, Any]] = {
    "dpo": {"beta": 0.1},
    "cdpo": {"beta": 0.1, "label_smoothing": 0.1},
    "robust_dpo": {"beta": 0.1, "label_smoothing": 0.1},
    "ipo": {"beta": 0.1},
    "hinge": {"beta": 1.0},
    "slic": {"delta": 1.0, "nll_weight": 0.1},
    "orpo": {"lam": 0.5},
    "simpo": {"beta": 1.0, "gamma": 0.5},
    "dpo_nll": {"beta": 0.1, "alpha": 1.0},
    "rpo": {"beta": 0.1, "eta": 1.0, "distance": "kl"},
    "dpop": {"beta": 0.1, "lam": 5.0},
    "tdpo": {"beta": 0.1, "alpha": 0.5, "version": 2},
    "sppo": {"beta": 0.05},
    "nca": {"beta": 0.1},
    "gpo": {"beta": 0.1, "f": "savage"},
    "sft": {},
}
"""The hyperparameters of each loss for `--losses all` (its `dpo:` config section)."""

RUN_KEYS = ("lr", "adam_eps", "steps")
"""Keys of a loss spec that change the run rather than the loss (e.g. dpo:adam_eps=1e-8)."""


# ----------------------------------------------------------------------------- the task
def slot_words(text: str) -> tuple[str, ...] | None:
    """The slot words of a well-formed response ('it was W1, W2 and W3.' with every W a
    sentiment word, surrounding whitespace ignored), else None."""
    m = WELL_FORMED.fullmatch(text.strip())
    if not m or not all(w in GOOD or w in BAD for w in m.groups()):
        return None
    return m.groups()


def well_formed(text: str) -> bool:
    return slot_words(text) is not None


def gold_reward(text: str) -> int:
    """#good - #bad slot words of a well-formed response (in {-3, -1, 1, 3}); MALFORMED for any
    other text, below every well-formed response."""
    words = slot_words(text)
    if words is None:
        return MALFORMED
    return sum(w in GOOD for w in words) - sum(w in BAD for w in words)


def generator_response(rng: random.Random) -> str:
    """One response of the 50/50 generator: each slot good with probability 1/2."""
    words = [rng.choice(GOOD if rng.random() < 0.5 else BAD) for _ in range(SLOTS)]
    return f"it was {words[0]}, {words[1]} and {words[2]}."


def prompt_for(item: str) -> str:
    return f"rate the {item}"


def beat_generator(reward: int) -> float:
    """P(reward > gold(g)) + 1/2 P(reward = gold(g)) for a generator response g, exactly
    (its number of good slots is Binomial(SLOTS, 1/2))."""
    probs = {2 * k - SLOTS: math.comb(SLOTS, k) / 2**SLOTS for k in range(SLOTS + 1)}
    return sum(p for r, p in probs.items() if r < reward) + 0.5 * probs.get(reward, 0.0)


def sft_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": prompt_for(rng.choice(TRAIN_ITEMS)), "completion": generator_response(rng)} for _ in range(n)]


def pair_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` pairs of generator responses labelled by the gold reward; a tie is redrawn."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        prompt = prompt_for(rng.choice(TRAIN_ITEMS))
        a, b = generator_response(rng), generator_response(rng)
        ra, rb = gold_reward(a), gold_reward(b)
        if ra == rb:
            continue
        (c, rc), (r, rr) = sorted([(a, ra), (b, rb)], key=lambda x: -x[1])
        rows.append({"prompt": prompt, "chosen": c, "rejected": r, "chosen_reward": float(rc),
                     "rejected_reward": float(rr), "chosen_winrate": beat_generator(rc),
                     "rejected_winrate": beat_generator(rr)})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- tokenizer
def task_tokenizer() -> Any:
    """`rlhflab.testing.tiny_tokenizer` (byte-level BPE, ChatML; ids 0 <s>, 1 <|im_start|>,
    2 <|im_end|> = EOS = PAD, then the 256 bytes) plus BPE merges that make each space-prefixed
    word of the responses one token (' great', ' was', ' and', ...). Only space-prefixed words are
    merged: a merge (' gr', 'e') can then only apply at the start of a pre-token, so each word's
    chain of merges applies in full. Other text (the template, the first word 'it', the prompt
    items) stays bytes. Text round-trips exactly (byte-level decoding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from rlhflab.testing import CHATML

    words = ["Ġ" + w for w in ("the", "was", "and") + GOOD + BAD]  # Ġ is the byte-level space
    specials = ["<s>", "<|im_start|>", "<|im_end|>"]
    merges: list[tuple[str, str]] = []
    for w in words:  # a chain of merges per word, left to right: (Ġ, g), (Ġg, r), (Ġgr, e), ...
        merges += [(w[:i], w[i]) for i in range(1, len(w)) if (w[:i], w[i]) not in merges]
    merged = list(dict.fromkeys(a + b for a, b in merges))
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()) + merged)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", chat_template=CHATML)


def make_tokenizer(kind: str) -> Any:
    """`word`: task_tokenizer (one token per response word); `byte`: rlhflab.testing.tiny_tokenizer."""
    from rlhflab.testing import tiny_tokenizer

    return {"word": task_tokenizer, "byte": tiny_tokenizer}[kind]()


# ----------------------------------------------------------------------------- training
def quiet_console() -> Any:
    from rich.console import Console

    return Console(quiet=True)


def base_config(model: str | Path, train: Path, out: Path, steps: int, batch_size: int, lr: float, seed: int,
                adam_eps: float = 1e-8) -> dict[str, Any]:
    return {
        "model": str(model), "data": {"train": str(train), "max_length": 96}, "output_dir": str(out),
        "seed": seed, "max_steps": steps, "batch_size": batch_size, "micro_batch_size": batch_size,
        "optim": {"lr": lr, "eps": adam_eps, "schedule": "cosine", "warmup_steps": max(1, steps // 10)},
        "checkpoint_every": 0, "tensorboard": False, "overwrite": True,
    }


def train_reference(work: Path, seed: int = 0, steps: int = SFT["steps"], rows: int = SFT["rows"],
                    tokenizer: str = "word") -> Path:
    """Stage 1: SFT the tiny random-init model on generator responses; returns its HF folder."""
    from rlhflab.config import config_from_dict
    from rlhflab.testing import tiny_model_dir
    from rlhflab.train.run import run

    base = tiny_model_dir(work / "base", make_tokenizer(tokenizer), seed=seed, **BASE_MODEL)
    data = write_jsonl(work / "sft.jsonl", sft_rows(rows, seed))
    cfg = base_config(base, data, work / "sft", steps, SFT["batch_size"], SFT["lr"], seed)
    res = run(config_from_dict({**cfg, "algorithm": "sft"}), quiet_console())
    return Path(res.final_dir)


def train_loss(loss: str, hparams: dict[str, Any], reference: Path, pairs: Path, out: Path, steps: int = PREF["steps"],
               batch_size: int = PREF["batch_size"], lr: float = PREF["lr"], seed: int = 0,
               adam_eps: float = PREF["adam_eps"]) -> tuple[Path, float, dict[str, Any]]:
    """Stage 3: one preference run from the reference into `out`; (final folder, seconds, last
    metrics row)."""
    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    cfg = base_config(reference, pairs, out, steps, batch_size, lr, seed, adam_eps)
    cfg.update(algorithm="dpo", dpo={"loss": loss, **hparams, "eval_kl": False})
    t0 = time.perf_counter()
    res = run(config_from_dict(cfg), quiet_console())
    return Path(res.final_dir), time.perf_counter() - t0, (res.history[-1] if res.history else {})


# ----------------------------------------------------------------------------- evaluation
def sample(model_dir: Path, n: int, seed: int, max_new_tokens: int = 48) -> list[str]:
    """`n` responses to the held-out prompts (n / len(HELDOUT_ITEMS) each, in HELDOUT_ITEMS order,
    so two calls give prompt-matched lists), temperature 1 over the full distribution (top_k 0,
    top_p 1), after torch.manual_seed(seed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhflab.data.template import tokenize_prompt

    if n % len(HELDOUT_ITEMS):
        raise ValueError(f"n={n} must be a multiple of {len(HELDOUT_ITEMS)} (one batch per held-out prompt)")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out: list[str] = []
    torch.manual_seed(seed)
    per_prompt = n // len(HELDOUT_ITEMS)
    for item in HELDOUT_ITEMS:  # one batch per prompt: every row has the same length, no padding
        ids = torch.tensor([tokenize_prompt(tok, [{"role": "user", "content": prompt_for(item)}])] * per_prompt)
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
    return out


def win_rate(policy: list[int], reference: list[int]) -> tuple[float, float]:
    """Mean of 1[p > r] + 1/2 1[p = r] over paired samples, and its 95% half-width (normal approximation)."""
    scores = [1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy, reference, strict=True)]
    n = len(scores)
    mean = sum(scores) / n
    var = sum((s - mean) ** 2 for s in scores) / max(1, n - 1)
    return mean, 1.96 * math.sqrt(var / n)


@dataclass
class Scored:
    """Sampled responses with their gold rewards."""

    texts: list[str]
    gold: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.gold = [gold_reward(t) for t in self.texts]

    def summary(self) -> dict[str, float]:
        n = len(self.texts)
        return {"mean_gold": sum(self.gold) / n, "well_formed": sum(map(well_formed, self.texts)) / n,
                "mean_chars": sum(len(t) for t in self.texts) / n}


def evaluate(policy_dir: Path, ref: Scored, n: int, seed: int) -> dict[str, Any]:
    """Win rate of `policy_dir` against the reference samples `ref`, and the policy's summary."""
    pol = Scored(sample(policy_dir, n, seed))
    wr, hw = win_rate(pol.gold, ref.gold)
    return {"win_rate": wr, "ci95": hw, **pol.summary(), "examples": pol.texts[:4]}


@dataclass
class Reference:
    """Stage 1 and 2 of one seed: the SFT reference, the pairs and two independent reference samples."""

    seed: int
    model: Path
    pairs: Path
    samples: Scored
    self_play: dict[str, Any]
    seconds: float


def prepare(work: Path, seed: int, n: int, sft_steps: int = SFT["steps"], pairs: int = PREF["pairs"],
            tokenizer: str = "word") -> Reference:
    """Train the reference of `seed`, write its preference pairs, sample it twice; the second
    sample against the first is the reference-vs-itself row (about 0.5)."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = train_reference(work, seed, steps=sft_steps, tokenizer=tokenizer)
    secs = time.perf_counter() - t0
    pair_path = write_jsonl(work / "pairs.jsonl", pair_rows(pairs, seed + 1))
    ref = Scored(sample(model, n, seed=seed + 100))
    again = Scored(sample(model, n, seed=seed + 200))
    wr, hw = win_rate(again.gold, ref.gold)
    row = {"win_rate": wr, "ci95": hw, **again.summary(), "examples": again.texts[:4]}
    return Reference(seed, model, pair_path, ref, row, secs)


# ----------------------------------------------------------------------------- command line
def parse_spec(spec: str) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """'ipo:beta=0.5' -> (label, loss, hyperparameters, run settings): LOSSES[loss] updated by
    the given keys; keys in RUN_KEYS (lr, adam_eps, steps) go to the run settings."""
    name, *pairs = spec.strip().split(":")
    if name not in LOSSES:
        raise SystemExit(f"unknown loss '{name}' in '{spec}'; choose from {', '.join(LOSSES)}")
    hp, settings = dict(LOSSES[name]), {}
    for item in pairs:
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"'{item}' in '{spec}': expected KEY=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        (settings if key in RUN_KEYS else hp)[key] = parsed
    return spec.strip(), name, hp, settings


def fmt_hparams(hp: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in hp.items()) or "-"


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown results table of one seed."""
    lines = ["| loss | hparams | gold win-rate vs reference (95% CI) | mean gold | well-formed | mean chars "
             "| train s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {fmt_hparams(r['hparams'])} | {r['win_rate']:.3f} ± {r['ci95']:.3f} | "
                     f"{r['mean_gold']:+.2f} | {r['well_formed']:.2f} | {r['mean_chars']:.1f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def seed_table(rows: list[dict[str, Any]], seeds: list[int]) -> str:
    """Win rate (well-formed fraction) of every loss on every reference seed."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    head = "| loss | " + " | ".join(f"seed {s}" for s in seeds) + " | mean win-rate |"
    lines = [head, "|---|" + "---|" * (len(seeds) + 1)]
    for label in labels:
        mine = {r["seed"]: r for r in rows if r["label"] == label}
        cells = [f"{mine[s]['win_rate']:.3f} ({mine[s]['well_formed']:.2f})" for s in seeds]
        mean = sum(mine[s]["win_rate"] for s in seeds) / len(seeds)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.3f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--losses", default="all",
                   help="all, or comma-separated specs NAME[:KEY=VALUE...], e.g. dpo,ipo:beta=0.5,dpo:adam_eps=1e-8 "
                        "(KEY: a hyperparameter of the loss, or lr / adam_eps / steps)")
    p.add_argument("--steps", type=int, default=PREF["steps"], help="optimizer steps per loss")
    p.add_argument("--lr", type=float, default=PREF["lr"])
    p.add_argument("--adam-eps", type=float, default=PREF["adam_eps"])
    p.add_argument("--batch-size", type=int, default=PREF["batch_size"])
    p.add_argument("--sft-steps", type=int, default=SFT["steps"])
    p.add_argument("--samples", type=int, default=256, help="responses sampled per model (a multiple of 8)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each trains its own reference")
    p.add_argument("--tokenizer", choices=("word", "byte"), default="word")
    p.add_argument("--work", default=None, help="work folder (default: a new temporary one)")
    p.add_argument("--out", default=None, help="write all results as JSON here")
    return p.parse_args(argv)


def run_seed(args: argparse.Namespace, specs: list[tuple[str, str, dict, dict]], seed: int,
             work: Path) -> list[dict[str, Any]]:
    """Stages 1-4 of one seed: the reference row, then one row per loss spec."""
    ref = prepare(work, seed, args.samples, args.sft_steps, tokenizer=args.tokenizer)
    rows = [{"label": "reference (SFT) vs itself", "loss": None, "hparams": {}, "seed": seed,
             "seconds": ref.seconds, **ref.self_play}]
    print(f"[seed {seed}] reference vs itself {ref.self_play['win_rate']:.3f}, well-formed "
          f"{ref.self_play['well_formed']:.2f}", file=sys.stderr)
    for i, (label, loss, hp, settings) in enumerate(specs):
        run = {"steps": args.steps, "lr": args.lr, "adam_eps": args.adam_eps, **settings}
        final, secs, last = train_loss(loss, hp, ref.model, ref.pairs, work / f"pref-{i:02d}-{loss}", run["steps"],
                                       args.batch_size, run["lr"], seed, run["adam_eps"])
        res = evaluate(final, ref.samples, args.samples, seed=seed + 300)
        rows.append({"label": label, "loss": loss, "hparams": hp, "run": run, "seed": seed, "seconds": secs, **res,
                     "last_train": {k: v for k, v in last.items() if isinstance(v, (int, float))}})
        print(f"[seed {seed}] {label}: {res['win_rate']:.3f} ± {res['ci95']:.3f}, gold {res['mean_gold']:+.2f}, "
              f"well-formed {res['well_formed']:.2f} ({secs:.0f} s)", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    specs = [parse_spec(s) for s in (list(LOSSES) if args.losses == "all" else args.losses.split(",")) if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gold-pref-"))
    os.environ.setdefault("RLHFLAB_CACHE", str(work / "cache"))  # reference log-prob caches stay in the work folder
    t0 = time.perf_counter()
    rows = [r for s in seeds for r in run_seed(args, specs, s, work / f"seed-{s}")]
    total = time.perf_counter() - t0
    print(f"## seed {seeds[0]}\n\n" + table([r for r in rows if r["seed"] == seeds[0]]))
    if len(seeds) > 1:
        print("\n## win rate (well-formed fraction) by seed\n\n" + seed_table(rows, seeds))
    print(f"\ntotal {total:.0f} s")
    result = {"argv": sys.argv[1:] if argv is None else argv, "seeds": seeds, "samples": args.samples,
              "pref": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "adam_eps": args.adam_eps,
                       "pairs": PREF["pairs"]},
              "sft": {**SFT, "steps": args.sft_steps}, "base_model": BASE_MODEL, "tokenizer": args.tokenizer,
              "rows": rows, "total_seconds": total}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
