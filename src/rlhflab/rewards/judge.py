"""LLM judges: any local causal LM scores responses through a prompt template (docs/judges.md).

How a verdict is read (parse: constrained). The judge prompt is rendered as a user turn with the
judge's chat template; the assistant turn is written by the harness: the judge's own rationale
(greedy, when `rationale` is on) and then the verdict prefix ("Score:"). At that position the
judge's next-token log-probabilities of the allowed answers (" 1" ... " 5", or " A" / " B") are
read and normalized over the allowed set:

    p(c) = exp(log p(c | context)) / sum_c' exp(log p(c' | context))

A pointwise score is the expectation sum_c p(c) * value(c) (G-Eval, Liu et al. 2023, arXiv
2303.16634); a pairwise verdict is p(first is better). The answer is read at a position the
harness controls and only among allowed answers, so a response cannot write its own score; the
mass the judge put on the allowed answers is reported (`mass`) as a format-following check.

Pairwise judging with `swap` judges both orders: p1 = P(x better) with x shown first, p2 = P(x
better) with x shown second; the verdict is p = (p1 + p2) / 2 when both orders pick the same
response, else a tie (p = 0.5) or dropped (`inconsistent`). Position bias over a set of pairs is
mean((p1 + (1 - p2)) / 2) - 0.5: how much more often the first position wins than chance.

parse: text is the unprotected reading many pipelines use (the judge writes freely, the first
number or label in its text is the verdict); it exists to measure what the constrained reading
protects against (examples/judges/).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhflab.config_feedback import JudgeConfig
from rlhflab.rewards import judge_templates as T
from rlhflab.rewards.base import Sample, Scorer, Scores, require_column

Messages = list[dict[str, str]]


@dataclass
class PointwiseVerdict:
    score: float
    """Expected score over the allowed answers (constrained) or the parsed number (text; nan when
    the text has none)."""
    probs: dict[int, float] = field(default_factory=dict)
    """P(score) over the allowed scores (constrained)."""
    mass: float = 1.0
    """Total probability the judge put on the allowed answers before normalizing."""
    rationale: str | None = None
    """The judge's rationale (rationale on) or its whole text (parse: text)."""


@dataclass
class PairwiseVerdict:
    p_a: float
    """P(response a is better), averaged over the judged orders; 0.5 for an inconsistent tie."""
    winner: str | None
    """'a', 'b', 'tie', or None when an inconsistent verdict is dropped."""
    consistent: bool
    """Both orders picked the same response (always True without swap)."""
    p_a_first: float
    """P(a better) when a was shown first."""
    p_a_second: float | None
    """P(a better) when a was shown second (None without swap)."""
    rationales: list[str] = field(default_factory=list)
    """The rationale of each judged order."""


@dataclass
class _Request:
    messages: Messages
    """The judge's conversation (system + user)."""
    answers: list[str]
    """The allowed answer strings, e.g. ["1", ..., "5"] or ["A", "B"]."""
    prefix: str
    """The verdict prefix written before the answer."""
    rationale: bool


@dataclass
class _Result:
    logps: list[float]
    """log p(answer | context) of each allowed answer (constrained), or [] (text)."""
    rationale: str | None
    text: str | None = None
    """parse: text: the judge's full output."""


def _file_fingerprint(path: Path) -> str:
    parts = []
    for f in sorted(path.glob("*")):
        if f.suffix in (".safetensors", ".bin", ".json", ".gguf"):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return ";".join(parts)


def model_identity(path: Path) -> str:
    """A model folder's name in the verdict cache: its path and the size and time of its weights."""
    return f"{path.resolve()}|{_file_fingerprint(path)}"


class Judge:
    """A judge model behind `pointwise`, `pairwise` and `yes_no`.

    model/tokenizer: judge with an already loaded model (e.g. the policy judging itself in the
    self-rewarding loop); `identity` then names its weights for the cache (None = cache in memory
    only, for this object's lifetime)."""

    def __init__(self, cfg: JudgeConfig, device: str = "cpu", model: Any = None, tokenizer: Any = None,
                 identity: str | None = None, trust_remote_code: bool = False):
        from rlhflab.data.template import end_of_turn_ids, resolve_chat_template
        from rlhflab.models import load_causal_lm, load_tokenizer, resolve_model_path

        self.cfg = cfg
        self.template = T.load_template(cfg.template, cfg.mode)
        if model is None:
            path = resolve_model_path(cfg.model)
            tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
            model = load_causal_lm(path, device=device, trust_remote_code=trust_remote_code)
            model.requires_grad_(False).eval()
            identity = identity or model_identity(path)
        elif tokenizer is None:
            raise ValueError("a judge given a model needs its tokenizer too")
        self.model, self.tokenizer = model, tokenizer
        self.chat_template = resolve_chat_template(tokenizer)
        self.stop_ids = end_of_turn_ids(tokenizer)
        self.identity = identity
        self._memory: dict[str, _Result] = {}
        self._cache_path = Path(cfg.cache) if cfg.cache and identity else None
        if self._cache_path and self._cache_path.is_file():
            for line in self._cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self._memory[rec["key"]] = _Result(rec["logps"], rec.get("rationale"), rec.get("text"))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from an interrupted run
        self.calls = 0
        """Judge prompts actually run (cache misses)."""

    @classmethod
    def reusing(cls, cfg: JudgeConfig, device: str, chat: Any, chat_name: str) -> "Judge":
        """A judge of `cfg.model` that judges with `chat` (a loaded ChatModel of the folder or
        embedded name `chat_name`) when that is the judge's own model: one copy in memory, and the
        same cache identity as loading it. Otherwise the judge loads its model."""
        from rlhflab.models import resolve_model_path

        path = resolve_model_path(cfg.model)
        if path.resolve() == resolve_model_path(chat_name).resolve():
            return cls(cfg, device, chat.model, chat.tokenizer, identity=model_identity(path))
        return cls(cfg, device)

    # ------------------------------------------------------------------ public API

    def pointwise(self, prompts: list[Messages], responses: list[str]) -> list[PointwiseVerdict]:
        """One verdict per (prompt, response)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        lo, hi = self.cfg.scale
        values = list(range(lo, hi + 1))
        prefix = self.cfg.verdict_prefix or T.DEFAULT_PREFIX["pointwise"]
        reqs = [self._request(self.template, "pointwise", {"prompt": _prompt_text(p), "response": r},
                              [str(v) for v in values], prefix) for p, r in zip(prompts, responses)]
        out = []
        for res in self._run(reqs):
            if self.cfg.parse == "text":
                out.append(PointwiseVerdict(_parse_number(res.text or "", prefix), {}, 1.0, res.text))
                continue
            p, mass = _normalize(res.logps)
            score = float(sum(pi * v for pi, v in zip(p, values)))
            out.append(PointwiseVerdict(score, dict(zip(values, p)), mass, res.rationale))
        return out

    def pairwise(self, prompts: list[Messages], responses_a: list[str], responses_b: list[str]) -> list[PairwiseVerdict]:
        """One verdict per (prompt, a, b); both orders are judged when `swap` is on."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError("prompts, responses_a and responses_b must have the same length")
        first = self._pair_probs(prompts, responses_a, responses_b)  # P(a) with a first
        second = self._pair_probs(prompts, responses_b, responses_a) if self.cfg.swap else None
        out = []
        for i in range(len(prompts)):
            p1, r1 = first[i]
            q, r2 = second[i] if second is not None else (None, None)
            out.append(combine_orders(p1, q, self.cfg.inconsistent, [r for r in (r1, r2) if r]))
        return out

    def yes_no(self, prompts: list[Messages], responses: list[str], questions: list[str]) -> Tensor:
        """(N,) P(Yes) among {Yes, No} for a yes/no question about each response (the built-in
        yes_no template; always constrained)."""
        if not len(prompts) == len(responses) == len(questions):
            raise ValueError("prompts, responses and questions must have the same length")
        prefix = T.DEFAULT_PREFIX["yes_no"]
        reqs = [self._request(T.YES_NO, "yes_no", {"prompt": _prompt_text(p), "response": r, "question": q},
                              ["Yes", "No"], prefix, constrained=True) for p, r, q in zip(prompts, responses, questions)]
        return torch.tensor([_normalize(res.logps)[0][0] for res in self._run(reqs, constrained=True)], dtype=torch.float32)

    def judge_messages(self, prompt: Messages, response_a: str, response_b: str | None = None) -> Messages:
        """The judge conversation of one (prompt, response) or (prompt, a, b): what the judge reads
        (for Con-J training data and inspection)."""
        if response_b is None:
            return self._request(self.template, "pointwise", {"prompt": _prompt_text(prompt), "response": response_a},
                                 [], self.cfg.verdict_prefix or T.DEFAULT_PREFIX["pointwise"]).messages
        return self._pair_request(prompt, response_a, response_b).messages

    # ------------------------------------------------------------------ building requests

    def _pair_probs(self, prompts: list[Messages], first: list[str], second: list[str]) -> list[tuple[float, str | None]]:
        """P(first is better) and the rationale, for each pair in this order."""
        reqs = [self._pair_request(p, a, b) for p, a, b in zip(prompts, first, second)]
        out = []
        for res in self._run(reqs):
            if self.cfg.parse == "text":
                out.append((_parse_label(res.text or "", self.cfg.labels, reqs[0].prefix), res.text))
            else:
                out.append((_normalize(res.logps)[0][0], res.rationale))
        return out

    def _pair_request(self, prompt: Messages, a: str, b: str) -> _Request:
        la, lb = (x.strip() for x in self.cfg.labels)
        prefix = self.cfg.verdict_prefix or T.DEFAULT_PREFIX["pairwise"]
        return self._request(self.template, "pairwise", {"prompt": _prompt_text(prompt), "response_a": a,
                                                         "response_b": b, "label_a": la, "label_b": lb},
                             [la, lb], prefix)

    def _request(self, template: str, mode: str, values: dict[str, str], answers: list[str], prefix: str,
                 constrained: bool = False) -> _Request:
        lo, hi = self.cfg.scale
        labels = tuple(x.strip() for x in self.cfg.labels)
        rationale = self.cfg.rationale and not constrained
        fixed = {"min": str(lo), "max": str(hi), "label_a": labels[0], "label_b": labels[1],
                 "labels": f"{labels[0]} or {labels[1]}",
                 "instructions": T.instructions(mode, prefix, rationale or (self.cfg.parse == "text" and not constrained),
                                                lo, hi, labels)}
        judged = [k for k in ("prompt", "response", "response_a", "response_b") if k in values]
        if self.cfg.escape:
            fences = T.markers(template, {**fixed, **{k: "" for k in judged}})
            values = {k: (T.escape_markers(v, fences, prefix) if k in judged else v) for k, v in values.items()}
        values = self._fit_length(template, {**fixed, **values}, judged)
        messages: Messages = []
        if self.cfg.system_prompt:
            messages.append({"role": "system", "content": self.cfg.system_prompt})
        messages.append({"role": "user", "content": T.fill(template, values)})
        return _Request(messages, answers, prefix, rationale)

    def _fit_length(self, template: str, values: dict[str, str], judged: list[str]) -> dict[str, str]:
        """Cut the longest judged response from its end until the prompt fits `max_length` tokens
        (leaving room for the rationale and the verdict)."""
        budget = self.cfg.max_length - (self.cfg.max_rationale_tokens if self.cfg.rationale else 0) - 16
        cuttable = [k for k in judged if k != "prompt"] or judged
        for _ in range(12):
            n = len(self.tokenizer(T.fill(template, values), add_special_tokens=False)["input_ids"])
            if n <= budget:
                break
            k = max(cuttable, key=lambda key: len(values[key]))
            keep = max(0, int(len(values[k]) * min(0.9, budget / n)) - 1)
            values = {**values, k: values[k][:keep] + " [...]"}
        return values

    # ------------------------------------------------------------------ running

    def _key(self, req: _Request, constrained: bool) -> str:
        c = self.cfg
        settings = [c.parse if not constrained else "constrained", c.rationale, c.max_rationale_tokens, c.max_length]
        blob = json.dumps([self.identity, settings, req.messages, req.answers, req.prefix, req.rationale],
                          ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _run(self, reqs: list[_Request], constrained: bool = False) -> list[_Result]:
        keys = [self._key(r, constrained) for r in reqs]
        todo: list[int] = []
        seen: set[str] = set()
        for i, k in enumerate(keys):
            if k not in self._memory and k not in seen:
                seen.add(k)
                todo.append(i)
        bs = self.cfg.batch_size
        for s in range(0, len(todo), bs):
            chunk = todo[s:s + bs]
            results = self._compute([reqs[i] for i in chunk], constrained)
            self.calls += len(chunk)
            for i, res in zip(chunk, results):
                self._memory[keys[i]] = res
            self._append_cache([(keys[i], r) for i, r in zip(chunk, results)])
        return [self._memory[k] for k in keys]

    def _append_cache(self, items: list[tuple[str, _Result]]) -> None:
        if not self._cache_path or not items:
            return
        self._cache_path.parent.mkdir(parents=True, exist_ok=True)
        with self._cache_path.open("a", encoding="utf-8") as f:
            for key, r in items:
                f.write(json.dumps({"key": key, "logps": r.logps, "rationale": r.rationale, "text": r.text},
                                   ensure_ascii=False) + "\n")

    def _context_ids(self, req: _Request) -> list[int]:
        from rlhflab.data.template import render_ids

        return render_ids(self.tokenizer, req.messages, True, self.chat_template)

    def _generate(self, contexts: list[list[int]], max_new_tokens: int, stop: tuple[str, ...]) -> list[str]:
        from rlhflab.rollout import HFGenerator, SamplingParams

        engine = HFGenerator(self.model, self.tokenizer, self.stop_ids, batch_size=max(len(contexts), 1))
        params = SamplingParams(1, max_new_tokens, 0.0, 1.0, 0, stop)
        return [c.text for c in engine.generate(contexts, params, seed=0)]

    def _compute(self, reqs: list[_Request], constrained: bool) -> list[_Result]:
        contexts = [self._context_ids(r) for r in reqs]
        if self.cfg.parse == "text" and not constrained:
            texts = self._generate(contexts, self.cfg.max_rationale_tokens, ())
            return [_Result([], None, t) for t in texts]
        rationales: list[str | None] = [None] * len(reqs)
        if any(r.rationale for r in reqs):
            idx = [i for i, r in enumerate(reqs) if r.rationale]
            texts = self._generate([contexts[i] for i in idx], self.cfg.max_rationale_tokens,
                                   tuple({reqs[i].prefix for i in idx}))
            for i, t in zip(idx, texts):
                rationales[i] = _cut_at(t, reqs[i].prefix)
        heads = [((rationales[i] + "\n") if rationales[i] else "") + r.prefix for i, r in enumerate(reqs)]
        logps = answer_logps(self.model, self.tokenizer, contexts, heads, [[" " + a for a in r.answers] for r in reqs])
        return [_Result(lp, rat) for lp, rat in zip(logps, rationales)]


def combine_orders(p1: float, q: float | None, inconsistent: str = "tie",
                   rationales: list[str] | None = None) -> PairwiseVerdict:
    """The verdict on (a, b) from p1 = P(first better) with a first and, with swap, q = P(first
    better) with b first (so P(a better) = 1 - q there). Both orders must pick the same response;
    else the verdict is a tie (p = 0.5), dropped (winner None), or decided by the order-averaged
    probability (p1 + p2) / 2 ('average': a constant position bias cancels) per `inconsistent`."""
    rationales = rationales or []
    if q is None:
        winner = "a" if p1 > 0.5 else "b" if p1 < 0.5 else "tie"
        return PairwiseVerdict(p1, winner, True, p1, None, rationales)
    p2 = 1.0 - q
    if _side(p1) == _side(p2) != 0:
        p = (p1 + p2) / 2
        return PairwiseVerdict(p, "a" if p > 0.5 else "b", True, p1, p2, rationales)
    if _side(p1) == _side(p2) == 0:
        return PairwiseVerdict(0.5, "tie", True, p1, p2, rationales)
    if inconsistent == "average":
        p = (p1 + p2) / 2
        return PairwiseVerdict(p, "a" if p > 0.5 else "b" if p < 0.5 else "tie", False, p1, p2, rationales)
    return PairwiseVerdict(0.5, "tie" if inconsistent == "tie" else None, False, p1, p2, rationales)


def answer_logps(model: Any, tokenizer: Any, contexts: list[list[int]], heads: list[str],
                 answers: list[list[str]]) -> list[list[float]]:
    """log p(answer | context + head) of each allowed answer string of each row (answers carry
    their own leading space, e.g. " 5").

    Each head + answer is tokenized; the tokens all answers share (the head, and a space token
    when a tokenizer splits " 5" into " " and "5") extend the context, the rest is each answer's
    continuation (one token for " 1".." 5" with most tokenizers). Single-token answers need one forward pass per row (the next-token distribution);
    longer ones run on the context's KV cache (`shared_prefix_token_logps`)."""
    from rlhflab.models.logps import next_token_logits, shared_prefix_token_logps
    from rlhflab.models.load import eval_mode

    rows: list[tuple[list[int], list[list[int]]]] = []
    for ctx, head, ans in zip(contexts, heads, answers):
        head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        full = [tokenizer(head + a, add_special_tokens=False)["input_ids"] for a in ans]
        start = min(common_prefix_len(head_ids, f) for f in full)  # where the answers' tokens begin
        common = min(common_prefix_len(full[0], f) for f in full)  # e.g. "Score:" + " " when digits are split
        common = min([common] + [len(f) - 1 for f in full])  # every answer keeps at least one token
        rows.append((ctx + full[0][:common], [f[common:] for f in full], common - start))
    device = next(model.parameters()).device
    out: list[list[float]] = [[] for _ in rows]
    with eval_mode(model), torch.no_grad():
        single = [i for i, (_, tails, _) in enumerate(rows) if all(len(t) == 1 for t in tails)]
        if single:
            k = 1 + max(rows[i][2] for i in single)  # the shared answer tokens (a space) are scored too
            lp = torch.log_softmax(next_token_logits(model, [rows[i][0] for i in single], last=k).view(len(single), k, -1), -1)
            for j, i in enumerate(single):
                seq, tails, n = rows[i]
                shared = sum(float(lp[j, k - 1 - n + m, seq[len(seq) - n + m]]) for m in range(n))
                out[i] = [shared + float(lp[j, k - 1, t[0]]) for t in tails]
        multi = [i for i in range(len(rows)) if i not in set(single)]
        if multi:
            seqs, lens, group = [], [], []
            for i in multi:
                seq, tails, n = rows[i]
                for t in tails:
                    seqs.append(seq + t)
                    lens.append(len(t) + n)
                    group.append(i)
            batch = right_padded_batch(seqs, lens, device)
            tok_lp, _ = shared_prefix_token_logps(model, batch, torch.tensor(group, device=device))
            sums = tok_lp.sum(1).tolist()
            for j, i in enumerate(group):
                out[i].append(float(sums[j]))
    return out


def right_padded_batch(seqs: list[list[int]], tail_lens: list[int], device: Any):
    """An LMBatch of `seqs`, right-padded, with the loss mask on each row's last `tail_lens[b]` tokens."""
    from rlhflab.types import LMBatch

    T_ = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T_, dtype=torch.long)
    att = torch.zeros(len(seqs), T_, dtype=torch.long)
    loss = torch.zeros(len(seqs), T_, dtype=torch.bool)
    for b, (s, n) in enumerate(zip(seqs, tail_lens)):
        ids[b, :len(s)] = torch.tensor(s)
        att[b, :len(s)] = 1
        loss[b, len(s) - n:len(s)] = True
    return LMBatch(ids, att, loss).to(device)


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _normalize(logps: list[float]) -> tuple[list[float], float]:
    """Probabilities over the allowed answers (softmax of their log-probs) and their total mass."""
    t = torch.tensor(logps, dtype=torch.float64)
    return torch.softmax(t, 0).tolist(), float(torch.logsumexp(t, 0).exp())


def _side(p: float) -> int:
    return 1 if p > 0.5 else -1 if p < 0.5 else 0


def _cut_at(text: str, prefix: str) -> str:
    """The rationale: the judge's text before it wrote the verdict prefix itself."""
    i = text.lower().find(prefix.lower())
    return (text[:i] if i >= 0 else text).strip()


def _prompt_text(prompt: Messages | str) -> str:
    """The conversation being judged as text: the user's last message, with earlier turns above it."""
    if isinstance(prompt, str):
        return prompt
    turns = [m for m in prompt if m.get("role") != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _parse_number(text: str, prefix: str) -> float:
    """parse: text: the first number after the verdict prefix, else the first number; nan if none."""
    i = text.lower().find(prefix.lower().rstrip(":"))
    m = _NUMBER.search(text[i:]) if i >= 0 else None
    m = m or _NUMBER.search(text)
    return float(m.group(0)) if m else math.nan


def _parse_label(text: str, labels: tuple[str, str], prefix: str) -> float:
    """parse: text: 1.0 if the first label word found (after the prefix when present) is the
    first label, 0.0 if the second, 0.5 if neither."""
    la, lb = (x.strip() for x in labels)
    i = text.lower().find(prefix.lower().rstrip(":"))
    pattern = re.compile(rf"\b({re.escape(la)}|{re.escape(lb)})\b")
    m = (pattern.search(text[i:]) if i >= 0 else None) or pattern.search(text)
    return 0.5 if not m else (1.0 if m.group(1) == la else 0.0)


class JudgeScorer(Scorer):
    """An LLM judge as a reward: pointwise, its expected score; pairwise, P(sample better than the
    row's `reference_field`) (both orders when swap is on). Parts: judge_mass (pointwise)."""

    name = "judge"

    def __init__(self, cfg: JudgeConfig, reference_field: str = "reference", device: str = "cpu",
                 trust_remote_code: bool = False):
        self.judge = Judge(cfg, device, trust_remote_code=trust_remote_code)
        self.reference_field = reference_field

    def score(self, samples: list[Sample]) -> Scores:
        prompts = [s.prompt for s in samples]
        texts = [s.completion for s in samples]
        if self.judge.cfg.mode == "pointwise":
            verdicts = self.judge.pointwise(prompts, texts)
            lo = float(self.judge.cfg.scale[0])
            values = [v.score if math.isfinite(v.score) else lo for v in verdicts]
            return Scores(torch.tensor(values), {"judge_mass": torch.tensor([v.mass for v in verdicts])})
        require_column(samples, self.reference_field, self.name)
        refs = [str(s.row[self.reference_field]) for s in samples]
        verdicts = self.judge.pairwise(prompts, texts, refs)
        return Scores(torch.tensor([v.p_a for v in verdicts]))

    def close(self) -> None:
        self.judge.model = None
