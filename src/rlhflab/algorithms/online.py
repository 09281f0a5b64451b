"""What every online algorithm shares: prompts -> rollouts -> scores -> per-token tensors.

Per rollout round r (every `updates_per_rollout` optimizer steps): draw `batch_size` prompts
(the loop's sampler rule: epoch permutations of the prompt set), generate `num_generations`
samples per prompt with the policy's current weights, score them (rewards, costs, gold), compute
whatever per-token tensors the algorithm needs (old and reference log-probs, values), and keep
the padded batch. The optimizer steps of the round then read micro-batches of it. Checkpoints are
only written at round boundaries, so a resumed run regenerates nothing it had already used.

Sampling is seeded by (seed, round), so a run is reproducible and a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from rlhflab.algorithms.base import Algorithm, TrainContext
from rlhflab.algorithms.rollout_batch import RaggedPlan, RolloutBatch, add_round_times, build_batch
from rlhflab.config import RunConfig
from rlhflab.rewards.base import Sample, Scores
from rlhflab.rollout import Completion, SamplingParams


class OnlineAlgorithm(Algorithm):
    """Generation, scoring and the round/minibatch bookkeeping; subclasses add per-token tensors
    (`prepare`) and the loss."""

    data_kind = "prompt"
    item_name = "prompts"

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.s = cfg.algo
        self.gen_cfg = self.s.generation
        self.scorer = self.cost_scorer = self.gold_scorer = None
        self.generator = None
        self.items: list[Any] = []
        self.round_prompts: list[Any] = []
        self.buffer: RolloutBatch | None = None
        self.buffer_round = -1
        self.pending: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.weights_changed = True
        """The policy changed since the engine last synced (set by `after_update`)."""

    # ------------------------------------------------------------------ what subclasses set
    @property
    def epochs(self) -> int:
        return 1

    @property
    def minibatches(self) -> int:
        return 1

    @property
    def updates_per_rollout(self) -> int:
        return self.epochs * self.minibatches

    def prepare(self, model: nn.Module, batch: RolloutBatch, completions: list[Completion], scores: dict[str, Scores],
                round_: int) -> RolloutBatch | None:
        """Attach what the loss needs (advantages, reference log-probs, ...) and log diagnostics
        into `self.pending`; None = nothing to train on this round."""
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    plan_unit = "sequences"

    def batch_plan(self) -> Any:
        """An optimizer step trains on batch_size prompts x num_generations samples / minibatches
        sequences, in micro-batches of micro_batch_size sequences."""
        from rlhflab.errors import ConfigError
        from rlhflab.train.plan import BatchPlan

        n = self.cfg.batch_size * self.gen_cfg.num_generations * self.samples_per_completion
        per_step = n // self.minibatches
        if self.cfg.micro_batch_size > per_step:
            raise ConfigError(f"micro_batch_size {self.cfg.micro_batch_size} is larger than the {per_step} sequences of an "
                              f"optimizer step (batch_size {self.cfg.batch_size} prompts x {self.gen_cfg.num_generations} "
                              f"samples{' / ' + str(self.minibatches) + ' minibatches' if self.minibatches > 1 else ''})")
        from rlhflab.train.distributed import launched_world_size

        world = launched_world_size()
        if world > 1 and per_step < self.cfg.micro_batch_size * world:
            raise ConfigError(f"impossible batch plan: an optimizer step has {per_step} sequences, fewer than micro_batch_size "
                              f"{self.cfg.micro_batch_size} x world size {world}, so some processes would have nothing to "
                              f"train on; use micro_batch_size <= {max(1, per_step // world)} or a larger batch_size")
        if per_step % (self.cfg.micro_batch_size * world) == 0:
            return BatchPlan.build(per_step, self.cfg.micro_batch_size, world)
        # uneven: the last micro-batch is smaller and, over several processes, a rank short of a
        # micro-batch repeats one with weight 0 (Loop._share)
        return RaggedPlan(per_step, self.cfg.micro_batch_size, world)

    samples_per_completion = 1
    """How many training sequences one sample becomes (online_dpo: pairs of two)."""

    def check_data(self, loaded: Any) -> None:
        from rlhflab.rewards.inputs import check_scorer_columns

        configs = tuple(c for key in ("rewards", "costs", "gold") for c in (getattr(self.s, key, ()) or ()))
        check_scorer_columns(loaded, configs)

    def setup(self, tokenizer: Any) -> None:
        super().setup(tokenizer)
        from rlhflab.data.template import end_of_turn_ids

        self.tokenizer = tokenizer
        self.stop_ids = end_of_turn_ids(tokenizer)

    def policy(self, model: nn.Module) -> nn.Module:
        return getattr(model, "policy", model)

    def load_model(self, path: str, device: torch.device) -> nn.Module:
        from rlhflab.models import load_causal_lm

        return load_causal_lm(path, device=device, trust_remote_code=self.cfg.trust_remote_code, lora=self.cfg.lora)

    def before_training(self, model: nn.Module, items: list[Any], eval_items: list[Any] | None, ctx: TrainContext) -> None:
        from rlhflab.rewards import build_scorer
        from rlhflab.rollout import make_generator

        self.items, self.device, self.console = items, ctx.device, ctx.console
        dev = str(ctx.device)
        self.scorer = build_scorer(self.s.rewards, dev, self.cfg.trust_remote_code)
        if getattr(self.s, "costs", ()):
            self.cost_scorer = build_scorer(self.s.costs, dev, self.cfg.trust_remote_code)
        if self.s.gold:
            self.gold_scorer = build_scorer(self.s.gold, dev, self.cfg.trust_remote_code)
        self.generator = make_generator(self.gen_cfg, self.policy(model), self.tokenizer, self.stop_ids, self.pad_id,
                                        ctx.device, seed=self.cfg.seed, trust_remote_code=self.cfg.trust_remote_code)
        self.setup_models(model, ctx)
        self.check_engine(model)

    def setup_models(self, model: nn.Module, ctx: TrainContext) -> None:
        """Reference / critic models (subclasses)."""

    def check_engine(self, model: nn.Module) -> float:
        """The engine's log-probs on a fixed prompt must match the trainer's (after every weight
        sync; the HF engine is the trainer's model, so once, which checks padding and the cache).
        Returns the largest difference; an engine may set its own limit (`probe_tol`)."""
        from rlhflab.rollout.probe import check_logprobs

        dev = check_logprobs(self.policy(model), self.generator, self.items[0].input_ids, self.gen_cfg, self.pad_id,
                             seed=self.cfg.seed, tol=getattr(self.generator, "probe_tol", None))
        self.extra["engine_logprob_max_abs_diff"] = max(dev, self.extra.get("engine_logprob_max_abs_diff", 0.0))
        return dev

    # ------------------------------------------------------------------ rollouts
    @property
    def sampling(self) -> SamplingParams:
        g = self.gen_cfg
        return SamplingParams(g.num_generations, g.max_new_tokens, g.temperature, g.top_p, g.top_k, g.stop)

    def round_seed(self, round_: int, extra: int = 0) -> int:
        return (self.cfg.seed * 1_000_003 + round_ * 7_919 + extra * 104_729) % 2**62

    def prompts_of_round(self, round_: int, refill: int = 0) -> list[Any]:
        from rlhflab.train.loop import Sampler

        seed = self.cfg.seed if refill == 0 else self.round_seed(round_, refill)
        sampler = Sampler(len(self.items), self.cfg.batch_size, seed)
        return [self.items[i] for i in sampler.indices(round_ if refill == 0 else 0)]

    def samples(self, prompts: list[Any], completions: list[Completion]) -> list[Sample]:
        from rlhflab.rewards.inputs import samples_from

        return samples_from(prompts, completions)

    def generate_and_score(self, model: nn.Module, prompts: list[Any], seed: int,
                           params: SamplingParams | None = None) -> tuple[list[Completion], dict[str, Scores], dict[str, float]]:
        """Completions of `prompts` and their scores. In a multi-process run each rank generates and
        scores a contiguous slice of the prompts (so a prompt's whole group stays on one rank) and
        every rank gets the gathered result, identical to what one process would have produced."""
        times = {}
        lo, hi = self.dist.block(len(prompts))
        mine = prompts[lo:hi]
        if self.weights_changed:  # once per update: evaluation and refills reuse the synced engine
            t = time.perf_counter()
            self.generator.sync_weights()
            times["time/sync_s"] = time.perf_counter() - t
            if getattr(self.generator, "holds_copy", False):  # a weight copy (vllm): probe it after every sync
                t = time.perf_counter()
                times["engine/probe_max_abs_diff"] = self.check_engine(model)
                times["time/probe_s"] = time.perf_counter() - t
            self.weights_changed = False
        t = time.perf_counter()
        completions = self.generator.generate([p.input_ids for p in mine], params or self.sampling, seed, offset=lo) \
            if mine else []
        times["time/generate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        samples = self.samples(mine, completions)
        scorers = {"reward": self.scorer, "cost": self.cost_scorer, "gold": self.gold_scorer}
        scores = {k: sc.score(samples) if samples else Scores(torch.zeros(0)) for k, sc in scorers.items() if sc is not None}
        times["time/score_s"] = time.perf_counter() - t
        if self.dist.enabled:
            t = time.perf_counter()
            completions, scores = self._gather_round(lo, completions, scores, scorers)
            times["time/gather_s"] = time.perf_counter() - t
        return completions, scores, times

    def _gather_round(self, lo: int, completions: list[Completion], scores: dict[str, Scores],
                      scorers: dict[str, Any]) -> tuple[list[Completion], dict[str, Scores]]:
        """Every rank's completions (prompt indices made global) and scores, in prompt order; a
        scorer that normalizes over the batch recombines its raw parts over the whole round."""
        for c in completions:
            c.prompt_index += lo
        with self.dist.phase("rollout", self.dist.phase_step):
            parts = self.dist.all_gather_object((completions, scores))
        completions = [c for part, _ in parts for c in part]
        merged = {}
        for k in scores:
            got = [sc[k] for _, sc in parts if sc[k].values.numel()]
            keys = got[0].parts.keys() if got else ()
            merged[k] = Scores(torch.cat([g.values for g in got]) if got else torch.zeros(0),
                               {p: torch.cat([g.parts[p] for g in got]) for p in keys})
            recombine = getattr(scorers[k], "recombine", None)
            if recombine is not None and completions:  # a sample's group is its prompt's (now global) index
                merged[k] = recombine(merged[k], torch.tensor([c.prompt_index for c in completions]))
        return completions, merged

    def sharded_map(self, fn: Any, chunks: list[Any]) -> list[Tensor]:
        """[fn(c) for c in chunks] (CPU tensors), each rank computing chunks rank, rank + W, ... and
        every rank receiving all of them in order: the per-token passes of a round (old-policy,
        reference, critic values) split over the ranks."""
        if not self.dist.enabled:
            return [fn(c) for c in chunks]
        mine = {i: fn(chunks[i]) for i in range(self.dist.rank, len(chunks), self.dist.world_size)}
        with self.dist.phase("rollout", self.dist.phase_step):
            gathered = self.dist.all_gather_object(mine)
        everything = {i: v for part in gathered for i, v in part.items()}
        return [everything[i] for i in range(len(chunks))]

    def make_rollout(self, model: nn.Module, round_: int) -> RolloutBatch | None:
        t0 = time.perf_counter()
        policy = self.policy(model)
        prompts = self.prompts_of_round(round_)
        completions, scores, times = self.generate_and_score(policy, prompts, self.round_seed(round_))
        completions, scores, prompts, refill_times = self.refill(policy, prompts, completions, scores, round_)
        add_round_times(times, refill_times)
        self.pending = dict(times)
        if not completions:  # e.g. dynamic sampling found no group with a reward spread
            self.pending["skipped_round"] = 1.0
            return None
        self.round_prompts = prompts  # after any refill: the prompts the completions answer
        batch = build_batch([p.input_ids for p in prompts], completions, self.pad_id)
        batch.rows = [prompts[c.prompt_index].row for c in completions]
        batch.seq["group"] = torch.tensor([c.prompt_index for c in completions])
        self.log_rollout(completions, scores)
        self.log_samples(round_, prompts, completions, scores)
        t = time.perf_counter()
        out = self.prepare(model, batch, completions, scores, round_)
        self.pending["time/reference_s"] = time.perf_counter() - t
        rollout_s = time.perf_counter() - t0
        gen_tokens = sum(len(c.token_ids) for c in completions)
        self.pending["time/rollout_s"] = rollout_s
        self.pending["throughput/generated_tokens_per_s"] = gen_tokens / max(times["time/generate_s"], 1e-9)
        self.pending["throughput/completions_per_s"] = len(completions) / max(times["time/generate_s"], 1e-9)
        return out

    def refill(self, model: nn.Module, prompts: list[Any], completions: list[Completion], scores: dict[str, Scores],
               round_: int) -> tuple[list[Completion], dict[str, Scores], list[Any], dict[str, float]]:
        """DAPO's dynamic sampling (subclasses that support it)."""
        return completions, scores, prompts, {}

    def log_rollout(self, completions: list[Completion], scores: dict[str, Scores]) -> None:
        p = self.pending
        G = self.gen_cfg.num_generations
        for name, sc in scores.items():
            v = sc.values
            p[f"{name}/mean"] = float(v.mean())
            p[f"{name}/std"] = float(v.std()) if v.numel() > 1 else 0.0
            for part, pv in sc.parts.items():
                if len(sc.parts) > 1 or part != name:
                    p[f"{name}/{part}"] = float(pv.float().mean())
        r = scores["reward"].values
        if G > 1 and r.numel() % G == 0:
            groups = r.view(-1, G)
            p["zero_variance_groups"] = float((groups.max(1).values == groups.min(1).values).float().mean())
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
        p["response_length/mean"] = float(lengths.mean())
        p["response_length/max"] = float(lengths.max())
        p["truncated_fraction"] = sum(c.finish_reason == "length" for c in completions) / len(completions)

    def log_samples(self, round_: int, prompts: list[Any], completions: list[Completion],
                    scores: dict[str, Scores]) -> None:
        """A handful of the round's completions with their scores to samples.jsonl, at about 8 rounds
        of the run: the first, the last and evenly between (report.runlog.sample_rounds)."""
        from pathlib import Path

        from rlhflab.report.runlog import sample_rounds, write_rollout_samples

        k = self.updates_per_rollout
        if self.dist.is_main and round_ in sample_rounds(-(-self.cfg.max_steps // k)):
            write_rollout_samples(Path(self.cfg.output_dir), round_ * k + 1, prompts, completions, scores)

    # ------------------------------------------------------------------ the loop's hooks
    def after_update(self) -> None:
        self.weights_changed = True

    def batches_for_step(self, model: nn.Module, step: int) -> list[Any] | None:
        k = self.updates_per_rollout
        round_ = step // k
        if self.buffer_round != round_:
            self.buffer = self.make_rollout(model, round_)
            self.buffer_round = round_
        buf = self.buffer
        if buf is None or len(buf) == 0:
            return []
        j = step % k
        epoch, mb = divmod(j, self.minibatches)
        n = len(buf)
        if self.minibatches > 1 or self.epochs > 1:
            g = torch.Generator().manual_seed(self.round_seed(round_, 1000 + epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        part = torch.tensor_split(order, self.minibatches)[mb]
        m = self.cfg.micro_batch_size
        return [buf.select(part[i:i + m]) for i in range(0, len(part), m)]

    def collate(self, items: list[Any]) -> Any:
        raise RuntimeError("online algorithms build their batches from rollouts")

    def step_metrics(self, step: int) -> dict[str, Any]:
        out, self.pending = self.pending, {}
        return out

    def can_checkpoint(self, step: int) -> bool:
        return step % self.updates_per_rollout == 0

    def summary_extra(self) -> dict[str, Any]:
        return dict(self.extra)

    def check_history(self, history: list[dict[str, Any]]) -> list[str]:
        """The `reward_hacking` warning (once per run) when rounds log a gold metric (`gold:`
        scorers): over recent rounds the reward rises while the gold falls and the KL grows
        (rlhflab.eval.hacking.detect; thresholds in docs/reward_hacking.md)."""
        if getattr(self, "_hacking_warned", False) or not history or "gold/mean" not in history[-1]:
            return []  # checked once per round, on the step that logged it
        from rlhflab.eval.hacking import HackingSeries, detect

        found = detect(HackingSeries.from_rows(history))
        if found is None:
            return []
        self._hacking_warned = True
        return [found.message()]

    # ------------------------------------------------------------------ evaluation and saving
    def evaluate(self, model: nn.Module, items: list[Any], micro_batch_size: int) -> dict[str, float]:
        """Greedy completions of the eval prompts, scored by the rewards (and costs, gold)."""
        params = replace(self.sampling, n=1, temperature=0.0)
        out: dict[str, float] = {}
        totals: dict[str, list[Tensor]] = {}
        lengths = []
        for s in range(0, len(items), 256):
            chunk = items[s:s + 256]
            completions, scores, _ = self.generate_and_score(self.policy(model), chunk, 0, params)
            lengths += [len(c.token_ids) for c in completions]
            for name, sc in scores.items():
                totals.setdefault(name, []).append(sc.values)
                for part, pv in sc.parts.items():
                    if len(sc.parts) > 1 or part != name:
                        totals.setdefault(f"{name}/{part}", []).append(pv.float())
        for k, vs in totals.items():
            out[k] = float(torch.cat(vs).mean())
        out["response_length"] = sum(lengths) / max(len(lengths), 1)
        return out

    def save_final(self, model: nn.Module, tokenizer: Any, out_dir: str) -> None:
        from rlhflab.models import save_pretrained_hf

        save_pretrained_hf(self.policy(model), tokenizer, out_dir)
        for name, critic in self.critics(model).items():
            save_pretrained_hf(critic, tokenizer, f"{out_dir}/critic_{name}")

    def critics(self, model: nn.Module) -> dict[str, nn.Module]:
        return dict(getattr(model, "critics", {}) or {})

    def units(self, batch: Any) -> int:
        raise NotImplementedError
