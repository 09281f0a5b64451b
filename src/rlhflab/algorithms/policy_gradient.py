"""PPO, Safe RLHF's PPO-Lagrangian, and the critic-free family (GRPO, Dr.GRPO, RLOO, REINFORCE++,
ReMax): one step function, configured by the advantage estimator (docs/online_rl.md).

Per rollout round: per-token log-probs of the sampling policy (the engine's, checked against
the trainer's), the reference's when a KL is used or logged, the critics' values for GAE; the
KL penalty in the reward (InstructGPT) or in the loss (GRPO); the advantage estimator; for
safe_ppo the Lagrange multiplier update and the combined advantage (A_r - lambda A_c) / (1 + lambda).
Per micro-batch: the clipped policy loss (+ KL, - entropy), aggregated by the configured mode,
plus the clipped value loss of each critic.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from rlhflab.advantages import AdvantageInput, compute_advantages
from rlhflab.algorithms.base import StepOutput, TrainContext
from rlhflab.algorithms.online import OnlineAlgorithm
from rlhflab.algorithms.rollout_batch import RolloutBatch, add_round_times, per_token_to_sequences
from rlhflab.config import RunConfig
from rlhflab.config_rl import resolve_rl
from rlhflab.losses.policy import aggregate, engine_mismatch, policy_loss, truncated_is_weights
from rlhflab.losses.value import value_loss
from rlhflab.models.load import eval_mode
from rlhflab.models.logps import completion_token_logps, reference_context, shared_prefix_token_logps
from rlhflab.ops import kl_estimate, whiten
from rlhflab.rewards.base import Scores
from rlhflab.rollout import Completion


class PolicyWithCritics(nn.Module):
    """The policy and its value networks in one module, so the loop optimizes and checkpoints all."""

    def __init__(self, policy: nn.Module, critics: dict[str, nn.Module]):
        super().__init__()
        self.policy = policy
        self.critics = nn.ModuleDict(critics)


def critic_values(critic: nn.Module, batch: RolloutBatch) -> Tensor:
    """(B, T) value of the state before each token: the head at position t-1 for token t."""
    from rlhflab.models import scalar_values

    v = scalar_values(critic, batch.input_ids, batch.attention_mask)
    out = torch.zeros_like(v)
    out[:, 1:] = v[:, :-1]
    return torch.where(batch.loss_mask, out, torch.zeros_like(out))


def _mean_pair(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(sum over masked tokens, count) for token-weighted logging."""
    return torch.where(mask, x, torch.zeros_like(x)).sum().detach(), mask.sum()


class PolicyGradient(OnlineAlgorithm):
    name = "grpo"
    unit = "tokens"
    metric_docs = {
        "reward/mean": "mean reward of the round's samples (reward/std: their std; reward/<scorer>: each scorer)",
        "zero_variance_groups": "fraction of prompts whose samples all got the same reward (no learning signal)",
        "kl/k1": "mean over samples of sum_t (logp - ref_logp) under the sampling policy (an estimate of KL(pi || ref))",
        "kl/k3": "mean over completion tokens of Schulman's k3 = exp(ref - logp) - 1 - (ref - logp)",
        "entropy": "mean per-token entropy of the policy on the completions",
        "clip_fraction": "fraction of tokens whose clipped branch was taken (zero gradient)",
        "ratio_mean": "mean importance ratio pi / pi_old over tokens (1 at the first update)",
        "approx_kl": "mean k3 between the old and current policy over tokens",
        "pg_loss": "the policy loss alone (token-weighted mean; times the engine IS weight when engine_is_cap is set)",
        "engine/logprob_abs_diff_mean": "mean over completion tokens of |old_logp - engine_logp|, the trainer's vs the "
                                        "rollout engine's log-prob of the sampled token (engine/logprob_abs_diff_max: "
                                        "the largest; also logged as engine_trainer_max_abs_diff)",
        "engine/is_weight_mean": "engine_is_cap: mean over tokens of the TIS weight w = min(exp(old_logp - engine_logp), "
                                 "cap) (engine/is_truncated_fraction: fraction of tokens with the ratio above the cap)",
        "engine/probe_max_abs_diff": "vllm: the probe after each weight sync, max |trainer - engine| log-prob on a "
                                     "fixed prompt (time/probe_s its seconds)",
        "value_loss/<critic>": "clipped value loss of each critic (token-weighted mean)",
        "response_length/mean": "mean completion length in tokens",
        "truncated_fraction": "fraction of completions that hit max_new_tokens",
        "lagrange": "safe_ppo: the Lagrange multiplier lambda",
        "cost/violation_rate": "safe_ppo: fraction of samples whose cost is above cost_threshold",
        "time/generate_s": "seconds in generation (time/score_s scoring, time/reference_s reference, old-policy and "
                           "critic passes, time/sync_s weight sync, time/update_s the optimizer step)",
    }

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.s = resolve_rl(cfg.algorithm, cfg.algo)
        self.gen_cfg = self.s.generation
        self.unit = "tokens" if self.s.aggregation == "token-mean" else "sequences"
        self.ref_model: nn.Module | None = None
        self.uses_critic = self.s.advantage == "gae"
        self.log_lambda = math.log(self.s.lagrange_init)
        self.ratio_checked = False
        self.current_step = 0

    @property
    def epochs(self) -> int:
        return self.s.epochs

    @property
    def minibatches(self) -> int:
        return self.s.minibatches

    @property
    def kl_coef(self) -> float:
        return float(self.s.kl_coef or 0.0)

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0 or self.s.log_kl

    # ------------------------------------------------------------------ models
    def critic_names(self) -> list[str]:
        if not self.uses_critic:
            return []
        return ["reward", "cost"] if self.cfg.algorithm == "safe_ppo" else ["reward"]

    def _critic_path(self, name: str, policy_path: str) -> str:
        if self.s.critic_model:
            return self.s.critic_model
        scorers = self.s.costs if name == "cost" else self.s.rewards
        models = [c.path for c in scorers if c.type == "reward_model" and c.path]
        return models[0] if models else policy_path

    def load_model(self, path: str, device: torch.device) -> nn.Module:
        policy = super().load_model(path, device)
        if not self.uses_critic:
            return policy
        from rlhflab.models import load_scalar_model

        critics = {n: load_scalar_model(self._critic_path(n, path), device=device, trust_remote_code=self.cfg.trust_remote_code,
                                        lora=self.cfg.lora) for n in self.critic_names()}
        return PolicyWithCritics(policy, critics)

    def setup_models(self, model: nn.Module, ctx: TrainContext) -> None:
        from rlhflab.algorithms.reference import load_reference_model
        from rlhflab.models import frozen_copy, is_peft

        if not self.needs_reference:
            return
        if self.cfg.ref_model is not None:
            self.ref_model = load_reference_model(self.cfg, ctx.device)
        elif not is_peft(self.policy(model)):
            self.ref_model = frozen_copy(self.policy(model))

    # ------------------------------------------------------------------ rollout round
    @property
    def lagrange(self) -> float:
        return math.exp(self.log_lambda)

    def refill(self, model, prompts, completions, scores, round_):
        if not self.s.dynamic_sampling:
            return completions, scores, prompts, {}
        G, want = self.gen_cfg.num_generations, self.cfg.batch_size
        kept_prompts: list[Any] = []
        kept: list[Completion] = []
        kept_scores: dict[str, list[Tensor]] = {k: [] for k in scores}
        kept_parts: dict[str, dict[str, list[Tensor]]] = {k: {p: [] for p in v.parts} for k, v in scores.items()}
        times: dict[str, float] = {}
        total_groups = 0
        for attempt in range(self.s.max_refill_rounds + 1):
            if attempt > 0:
                prompts = self.prompts_of_round(round_, refill=attempt)
                completions, scores, t = self.generate_and_score(model, prompts, self.round_seed(round_, attempt))
                add_round_times(times, t)
            r = scores["reward"].values.view(-1, G)
            total_groups += r.shape[0]
            for g in range(r.shape[0]):
                if len(kept_prompts) >= want or bool((r[g] == r[g, 0]).all()):
                    continue
                new_index = len(kept_prompts)
                kept_prompts.append(prompts[g])
                for c in completions[g * G:(g + 1) * G]:
                    kept.append(Completion(new_index, c.token_ids, c.logprobs, c.finish_reason, c.text, c.extra))
                for k, sc in scores.items():
                    kept_scores[k].append(sc.values[g * G:(g + 1) * G])
                    for p, pv in sc.parts.items():
                        kept_parts[k][p].append(pv[g * G:(g + 1) * G])
            if len(kept_prompts) >= want:
                break
        self.pending_refill = {"dynamic_sampling/kept_groups": len(kept_prompts), "dynamic_sampling/rounds": attempt + 1,
                               "dynamic_sampling/groups_sampled": total_groups}
        if not kept:
            return [], {k: Scores(torch.zeros(0)) for k in scores}, [], times
        merged = {k: Scores(torch.cat(v), {p: torch.cat(pv) for p, pv in kept_parts[k].items()}) for k, v in kept_scores.items()}
        return kept, merged, kept_prompts, times

    def make_rollout(self, model: nn.Module, round_: int) -> RolloutBatch | None:
        self.pending_refill = {}
        out = super().make_rollout(model, round_)
        self.pending.update(self.pending_refill)
        return out

    def prepare(self, model: nn.Module, batch: RolloutBatch, completions: list[Completion], scores: dict[str, Scores],
                round_: int) -> RolloutBatch | None:
        policy = self.policy(model)
        mask = batch.loss_mask
        engine = torch.zeros(mask.shape, dtype=torch.float32).masked_scatter(
            mask, torch.tensor([x for c in completions for x in c.logprobs], dtype=torch.float32))
        # the trainer's own log-probs of the sampling weights: for several updates per rollout, the
        # first-update ratio check, the engine IS correction, and always for an engine holding a copy
        need_old = self.updates_per_rollout > 1 or (self.current_step == 0 and not self.ratio_checked) or \
            self.s.engine_is_cap is not None or getattr(self.generator, "holds_copy", False)
        dev = next(policy.parameters()).device
        m = self.cfg.micro_batch_size
        passes = need_old or self.needs_reference or self.uses_critic
        chunks = [batch.select(list(range(s, min(s + m, len(batch))))) for s in range(0, len(batch), m)] if passes else []
        width = mask.shape[1]

        def per_token(fn: Any) -> Tensor:  # (B, T) over the round, each rank computing its share of the chunks
            return torch.cat(self.sharded_map(lambda c: _pad_to(fn(c.to(dev)).cpu(), width), chunks))

        if need_old:
            with eval_mode(policy), torch.no_grad():
                old = per_token(lambda c: self.token_logps(policy, c)[0])
            batch.tensors["old_logp"] = old
            self.pending["engine_trainer_max_abs_diff"] = float((old - engine)[mask].abs().max())
            self._engine_correction(batch, old, engine, mask)
        behaviour = batch.tensors.get("old_logp", engine)
        kl_tok = None  # the per-token KL penalized in the reward (kl_in: reward)
        if self.needs_reference:
            with reference_context(policy, self.ref_model) as ref:
                ref_lp = per_token(lambda c: self.token_logps(ref, c)[0])
            k1 = torch.where(mask, behaviour - ref_lp, torch.zeros_like(ref_lp))
            self.pending["kl/k1"] = float(per_token_to_sequences(k1, mask).mean())
            self.pending["kl/k3"] = float(kl_estimate(behaviour, ref_lp, "k3")[mask].mean())
            if self.s.kl_in == "loss" and self.kl_coef > 0:
                batch.tensors["ref_logp"] = ref_lp
            elif self.kl_coef > 0:
                kl_tok = torch.where(mask, kl_estimate(behaviour, ref_lp, self.s.kl_estimator), torch.zeros_like(ref_lp))
        reward = scores["reward"].values.float()
        values = {}
        if self.uses_critic:
            with eval_mode(model), torch.no_grad():
                for name, critic in self.critics(model).items():
                    values[name] = per_token(lambda c, critic=critic: critic_values(critic, c))
        adv, extra = self._advantages(batch, reward, kl_tok, values, scores, completions)
        if self.s.whiten_advantages and self.s.advantage != "reinforce_pp":
            adv = whiten(adv, mask)
        batch.tensors["advantages"] = adv
        batch.tensors.update(extra)
        for name, v in values.items():
            batch.tensors[f"values/{name}"] = v
        return batch

    def _engine_correction(self, batch: RolloutBatch, old: Tensor, engine: Tensor, mask: Tensor) -> None:
        """Log the engine/trainer mismatch; with engine_is_cap, store the TIS weights the loss uses."""
        if self.s.engine_is_cap is None:
            metrics = engine_mismatch(old, engine, mask)
        else:
            batch.tensors["is_weight"], metrics = truncated_is_weights(old, engine, mask, self.s.engine_is_cap)
        for k, v in metrics.items():
            self.pending[f"engine/{k}"] = float(v)

    def _advantages(self, batch: RolloutBatch, reward: Tensor, kl_tok: Tensor | None, values: dict[str, Tensor],
                    scores: dict[str, Scores], completions: list[Completion]) -> tuple[Tensor, dict[str, Tensor]]:
        mask = batch.loss_mask
        G = self.gen_cfg.num_generations
        s = self.s
        penalty = None if kl_tok is None else -self.kl_coef * kl_tok
        extra: dict[str, Tensor] = {}
        if s.advantage == "gae":
            out = compute_advantages("gae", AdvantageInput(reward, mask, 1, token_rewards=penalty if penalty is not None
                                                           else torch.zeros_like(values["reward"]), values=values["reward"]),
                                     gamma=s.gamma, lam=s.lam)
            adv = out.advantages
            extra["returns/reward"] = out.returns
            if self.cfg.algorithm == "safe_ppo":
                cost = scores["cost"].values.float()
                oc = compute_advantages("gae", AdvantageInput(cost, mask, 1, token_rewards=torch.zeros_like(values["cost"]),
                                                              values=values["cost"]), gamma=s.gamma, lam=s.lam)
                extra["returns/cost"] = oc.returns
                self._update_lagrange(cost)
                lam = self.lagrange
                # the raw advantages are combined (never whitened one by one: a constant cost would
                # leave only critic noise, which whitening would blow up to unit variance)
                adv = (adv - lam * oc.advantages) / (1.0 + lam)
        else:
            seq_reward = reward if penalty is None or s.advantage == "reinforce_pp" else reward + per_token_to_sequences(penalty, mask)
            inp = AdvantageInput(seq_reward, mask, G)
            kwargs: dict[str, Any] = {}
            if s.advantage == "grpo":
                kwargs["scale_rewards"] = bool(s.scale_rewards)
            elif s.advantage == "reinforce_pp":
                inp.token_rewards = penalty if penalty is not None else torch.zeros(mask.shape)
                kwargs.update(gamma=s.gamma, baseline=s.reinforce_pp_baseline)
            elif s.advantage == "remax":
                inp.baseline = self._greedy_baseline(batch, completions)
            out = compute_advantages(s.advantage, inp, **kwargs)
            adv = out.advantages
        for k, v in out.metrics.items():
            self.pending[f"advantage/{k}" if not k.startswith(("zero_variance", "group_")) else k] = float(v)
        return adv, extra

    def _greedy_baseline(self, batch: RolloutBatch, completions: list[Completion]) -> Tensor:
        """ReMax: the reward of each prompt's greedy completion, repeated for its samples."""
        from dataclasses import replace

        prompts = self.round_prompts
        greedy, scores, times = self.generate_and_score(self.generator.model, prompts, 0,
                                                        replace(self.sampling, n=1, temperature=0.0))
        add_round_times(self.pending, times)
        base = scores["reward"].values.float()
        self.pending["remax/greedy_reward"] = float(base.mean())
        return base[torch.tensor([c.prompt_index for c in completions])]

    def _update_lagrange(self, cost: Tensor) -> None:
        """Safe RLHF: gradient ascent on lambda * (E[C] - d) through log lambda (2310.12773 Sec. 3)."""
        jc = float(cost.mean()) - self.s.cost_threshold
        self.log_lambda += self.s.lagrange_lr * self.lagrange * jc
        self.log_lambda = max(min(self.log_lambda, 10.0), -20.0)
        self.pending["lagrange"] = self.lagrange
        self.pending["cost/constraint"] = jc
        self.pending["cost/violation_rate"] = float((cost > self.s.cost_threshold).float().mean())

    # ------------------------------------------------------------------ loss
    def token_logps(self, model: nn.Module, batch: RolloutBatch, entropy: bool = False,
                    entropy_grad: bool = False) -> tuple[Tensor, Tensor | None]:
        """Per-token log-probs (B, T) at the sampling temperature; each distinct prompt of the
        batch runs through the decoder once (`shared_prompt_forward`)."""
        temp = self.gen_cfg.temperature
        if self.s.shared_prompt_forward and "group" in batch.seq:
            return shared_prefix_token_logps(model, batch.lm, batch.seq["group"], temp, entropy, entropy_grad)
        return completion_token_logps(model, batch.lm, temp, entropy, entropy_grad)

    def batches_for_step(self, model: nn.Module, step: int) -> list[Any] | None:
        self.current_step = step
        return super().batches_for_step(model, step)

    def units(self, batch: RolloutBatch) -> int:
        return int(batch.loss_mask.sum()) if self.unit == "tokens" else len(batch)

    def loss(self, model: nn.Module, batch: RolloutBatch) -> StepOutput:
        s = self.s
        policy = self.policy(model)
        mask = batch.loss_mask
        logp, ent = self.token_logps(policy, batch, entropy=True, entropy_grad=s.entropy_coef > 0)
        old = batch.tensors.get("old_logp")
        if old is None:
            old = logp.detach()
        elif self.current_step == 0 and not self.ratio_checked:
            self._check_first_ratio(logp.detach(), old, mask)
        per_tok, m = policy_loss(logp, old, batch.tensors["advantages"], mask, clip_low=s.clip_low, clip_high=s.clip_high,
                                 dual_clip=s.dual_clip, ratio_level=s.ratio_level)
        metrics: dict[str, Any] = {}
        n_tok = mask.sum()
        for k in ("clip_fraction", "ratio_mean", "approx_kl"):
            metrics[k] = (m[k] * n_tok, n_tok)
        if "is_weight" in batch.tensors:  # TIS: the clipped surrogate times the engine weight (data, no gradient)
            per_tok = per_tok * batch.tensors["is_weight"]
        metrics["pg_loss"] = _mean_pair(per_tok.detach(), mask)
        if "ref_logp" in batch.tensors:
            kl = kl_estimate(logp, batch.tensors["ref_logp"], s.kl_estimator)
            per_tok = per_tok + self.kl_coef * torch.where(mask, kl, torch.zeros_like(kl))
            metrics["kl_loss"] = _mean_pair(kl.detach(), mask)
        if s.entropy_coef > 0:
            per_tok = per_tok - s.entropy_coef * torch.where(mask, ent, torch.zeros_like(ent))
        metrics["entropy"] = _mean_pair(ent.detach(), mask)
        norm = self.gen_cfg.max_new_tokens
        loss_sum, _ = aggregate(per_tok, mask, s.aggregation, norm_length=norm)
        for name, critic in self.critics(model).items():
            v = critic_values(critic, batch)
            vl, vm = value_loss(v, batch.tensors[f"values/{name}"], batch.tensors[f"returns/{name}"], mask, clip=s.value_clip)
            vsum, _ = aggregate(vl, mask, s.aggregation, norm_length=norm)
            loss_sum = loss_sum + s.value_coef * vsum
            metrics[f"value_loss/{name}"] = _mean_pair(vl.detach(), mask)
        return StepOutput(loss_sum, metrics)

    def _check_first_ratio(self, logp: Tensor, old: Tensor, mask: Tensor) -> None:
        dev = float((torch.exp(logp - old) - 1.0)[mask].abs().max()) if bool(mask.any()) else 0.0
        self.extra["first_update_max_ratio_deviation"] = max(dev, self.extra.get("first_update_max_ratio_deviation", 0.0))
        if dev > self.s.ratio_check_tol:
            raise RuntimeError(
                f"at the first update the importance ratio pi/pi_old is {1 + dev:.6g} on some token, not 1 (tolerance "
                f"{self.s.ratio_check_tol:g}): the training forward differs from the rollout-time forward (dropout left on? "
                "a model that depends on the batch?). Stopped before the first update.")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_lambda = float(state.get("log_lambda", self.log_lambda))
        self.ratio_checked = True  # a resumed run is past its first update

    def state_dict(self) -> dict[str, Any]:
        self.ratio_checked = self.ratio_checked or self.current_step > 0
        return {"log_lambda": self.log_lambda}

    def step_metrics(self, step: int) -> dict[str, Any]:
        if step == 0:
            self.ratio_checked = True
        return super().step_metrics(step)

    # ------------------------------------------------------------------ warnings
    def check_history(self, history: list[dict[str, Any]]) -> list[str]:
        out = super().check_history(history)  # reward_hacking
        k = self.s.zero_variance_warn_steps
        zv = [h["zero_variance_groups"] for h in history if "zero_variance_groups" in h]
        if k and len(zv) >= k and all(z >= 1.0 for z in zv[-k:]):
            out.append(f"zero_variance_groups: every group had equal rewards for the last {k} rollouts, so the advantages are "
                       "0 and nothing is learned; make the task easier, sample more (num_generations, temperature) or "
                       "turn on dynamic_sampling")
        kls = [h["kl/k1"] for h in history if "kl/k1" in h][-10:]
        if len(kls) >= 5 and sum(kls) / len(kls) < -1e-3:
            out.append("kl_negative: the estimated KL(policy || reference) is negative on average over the last rollouts; "
                       "the sampled tokens are not from the policy the log-probs describe (temperature, top_p/top_k or a "
                       "stale engine)")
        return out


def _pad_to(x: Tensor, width: int) -> Tensor:
    if x.shape[1] == width:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1])], dim=1)


def _make(name: str) -> type[PolicyGradient]:
    return type(name.upper(), (PolicyGradient,), {"name": name, "__doc__": f"`algorithm: {name}` (see PolicyGradient)."})


PPO, SAFE_PPO, GRPO, DR_GRPO, RLOO, REINFORCE_PP, REMAX = (
    _make(n) for n in ("ppo", "safe_ppo", "grpo", "dr_grpo", "rloo", "reinforce_pp", "remax"))
