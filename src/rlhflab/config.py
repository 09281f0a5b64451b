"""Run configuration: YAML plus `key=value` overrides, into frozen dataclasses.

Every field has a docstring-style comment; unknown keys are errors that suggest the closest name;
everything is checked here, before any model or tokenizer loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlhflab.config_rl import RL_ALGORITHMS, BestOfNConfig, OnlineDPOConfig, RLConfig, validate_online
from rlhflab.config_feedback import SelfRewardingConfig, check_self_rewarding
from rlhflab.config_dist import DistributedConfig, check_distributed
from rlhflab.config_eval import EvalConfig
from rlhflab.config_logging import MlflowConfig, WandbConfig, check_trackers
from rlhflab.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class DataConfig:
    train: str | tuple[str, ...] | None = None
    """Training data: a JSONL, JSON, Parquet or CSV file, or a `datasets` folder saved to disk;
    or a list of them, of one algorithm kind, concatenated in order (each file is read and
    checked on its own, so errors name their own file and row; docs/data.md)."""
    eval: str | tuple[str, ...] | None = None
    """Held-out data in the same format (a file or a list of files); None = no evaluation unless
    `eval_fraction` > 0."""
    eval_fraction: float = 0.0
    """When `eval` is None, hold out this fraction of `train` (chosen with `seed`) for evaluation."""
    format: str = "auto"
    """auto (detected from the columns) | messages | prompt_completion | pairwise | transcript |
    unpaired | scored | safety | prompt."""
    max_length: int = 1024
    """Longest tokenized sequence (prompt + completion)."""
    max_prompt_length: int | None = None
    """Longest tokenized prompt; None = max_length - 1 (at least one completion token)."""
    truncation: Literal["truncate", "drop", "error"] = "truncate"
    """What to do with a too-long example: truncate the completion (keep the prompt), drop it
    (counted and reported), or stop with an error naming the row. A prompt longer than
    max_prompt_length is dropped under `truncate` and `drop`."""
    chat_template: str | None = None
    """A Jinja chat template (a file path or the template text) overriding the tokenizer's."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1.0e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1.0e-8
    """AdamW epsilon."""
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    """Learning-rate decay after warmup, down to `min_lr_ratio * lr` at `max_steps`."""
    warmup_steps: int = 0
    """Linear warmup from 0 to `lr` over this many optimizer steps."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of `lr` (linear and cosine schedules)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; None = no clipping (the norm is still logged)."""


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    """LoRA rank."""
    alpha: float = 32.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: tuple[str, ...] | str = "all-linear"
    """Module names to adapt, or 'all-linear'."""


@dataclass(frozen=True)
class SFTConfig:
    packing: bool = False
    """Pack several examples into each row of `max_length` tokens; attention never crosses
    examples (block-diagonal mask, positions restart per example)."""


@dataclass(frozen=True)
class RewardModelConfig:
    loss: Literal["bradley_terry", "margin", "cost"] = "bradley_terry"
    """bradley_terry: -log sigmoid(r_c - r_r); margin: -log sigmoid(r_c - r_r - m) with m from the
    data's `margin` column (or `margin` below); cost: the Safe RLHF cost-model loss (2310.12773
    Sec. 3.2 eq. 6) on pairs with `chosen_safe` / `rejected_safe` labels."""
    margin: float = 0.0
    """Constant margin for `loss: margin` when the data has no `margin` column."""
    center_rewards_coef: float = 0.0
    """Weight of the auxiliary (r_c + r_r)^2 term that keeps scores centred at 0 (0 = off)."""
    calibration_bins: int = 10
    """Bins for the expected calibration error of sigmoid(score gap) on the eval split."""


@dataclass(frozen=True)
class DPOConfig:
    loss: str | tuple[str, ...] = "dpo"
    """A pairwise loss of `rlhflab.losses.preference.PAIRWISE` (dpo, cdpo, robust_dpo, ipo, hinge,
    slic, orpo, simpo, dpo_nll, rpo, dpop, tdpo, sppo, nca, gpo, sft), or a list of them to add up
    with `loss_weights` (e.g. [dpo, sft])."""
    loss_weights: tuple[float, ...] | None = None
    """One weight per loss in `loss`; None = all 1.0."""
    beta: float | None = None
    """Inverse temperature beta (tau for ipo); None = each loss's own default (0.1; simpo 2.0)."""
    label_smoothing: float | None = None
    """cdpo / robust_dpo: the assumed rate e of flipped labels (default 0)."""
    delta: float | None = None
    """slic: the hinge margin on chosen - rejected log-probs (default 1.0)."""
    nll_weight: float | None = None
    """slic: weight of the chosen per-token NLL term (default 0)."""
    lam: float | None = None
    """orpo: weight of the odds-ratio term (default 0.1); dpop: penalty weight (default 50)."""
    gamma: float | None = None
    """simpo: target reward margin (default 0.5)."""
    alpha: float | None = None
    """dpo_nll: NLL weight (default 1.0); tdpo: weight of the KL term in version 2 (default 0.5)."""
    eta: float | None = None
    """rpo: scale of the external reward gap (default 1.0)."""
    distance: str | None = None
    """rpo: kl (Bernoulli KL, default) | sq (squared difference)."""
    version: int | None = None
    """tdpo: 1 or 2 (default 2)."""
    f: str | None = None
    """gpo: logistic (default) | hinge | square | exponential | truncated_square | savage."""
    reference: Literal["auto", "precompute", "online"] = "auto"
    """Reference log-probs: precompute = one pass over the data before training, cached on disk
    and reused (needs a frozen reference); online = a reference forward every step; auto =
    precompute unless a loss needs the reference's full distributions (tdpo)."""
    mask_format_tokens: bool = False
    """Llama 3's stabilizer: leave the tokenizer's special tokens (chat-template headers and
    end-of-turn tokens such as <|im_end|>) out of every preference log-prob."""
    eval_kl: bool = True
    """Report eval/kl, the exact per-token KL(policy || reference) on the eval completions. Full
    fine-tuning then keeps a frozen copy of the reference in memory."""
    chosen_logp_warn_steps: int = 20
    """Warn when the chosen log-prob has fallen over this many consecutive-step window (the DPO
    failure mode that DPOP addresses); 0 = never warn."""



RefMode = Literal["auto", "precompute", "online"]


@dataclass(frozen=True)
class KTOConfig:
    beta: float = 0.1
    """Inverse temperature beta of the value function (arXiv 2402.01306)."""
    desirable_weight: float = 1.0
    """lambda_D, the weight of desirable examples."""
    undesirable_weight: float = 1.0
    """lambda_U, the weight of undesirable examples. The paper wants
    lambda_D n_D / (lambda_U n_U) in [1, 4/3]; the run warns outside it."""
    reference: RefMode = "auto"
    """Reference log-probs of the data: precompute (default for auto) or online, as in dpo."""


@dataclass(frozen=True)
class NPOConfig:
    beta: float = 0.1
    """Inverse temperature beta (arXiv 2404.05868)."""
    retain_weight: float = 0.0
    """Weight of a per-token NLL on the desirable (retain) rows, the paper's NPO+RT; 0 = negatives
    only, and the data must then hold only undesirable rows."""
    reference: RefMode = "auto"
    """Reference log-probs of the data, as in dpo."""


@dataclass(frozen=True)
class DROConfig:
    tau: float = 1.0
    """KL-regularization strength tau (arXiv 2405.19107; 1.0 was best in its sweep)."""
    rescale_policy_grad: bool = True
    """Scale the policy gradient by 1/tau, as the paper does in practice."""
    reference: RefMode = "auto"
    """Reference log-probs of the data, as in dpo."""


ALGORITHM_CONFIGS: dict[str, type] = {
    "sft": SFTConfig,
    "reward_model": RewardModelConfig,
    "dpo": DPOConfig,
    "kto": KTOConfig,
    "npo": NPOConfig,
    "dro": DROConfig,
    **{name: RLConfig for name in RL_ALGORITHMS},
    "online_dpo": OnlineDPOConfig,
    "best_of_n": BestOfNConfig,
    "self_rewarding": SelfRewardingConfig,
}
"""Each algorithm's own settings live in a section named after it."""


@dataclass(frozen=True)
class RunConfig:
    algorithm: str = "sft"
    """Which algorithm to run: one of ALGORITHM_CONFIGS."""
    model: str = "smollm2-135m"
    """The embedded default `smollm2-135m`, or a local Hugging Face model folder."""
    ref_model: str | None = None
    """Reference model; None = the initial policy (the adapter disabled when using LoRA)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the data is and how to read it."""
    output_dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/, tensorboard/."""
    seed: int = 0
    """One seed for data order, initialization and sampling."""
    max_steps: int = 100
    """Optimizer steps to run."""
    batch_size: int = 8
    """Examples (sequences, pairs or prompts) per optimizer step, over all processes."""
    micro_batch_size: int = 8
    """Examples per forward/backward pass on one process."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    lora: LoraConfig | None = None
    """LoRA adapter settings; null = full fine-tuning."""
    checkpoint_every: int = 50
    """Optimizer steps between resumable checkpoints (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    eval_every: int = 0
    """Optimizer steps between evaluations (0 = only at the end). Needs eval data."""
    log_every: int = 1
    """Optimizer steps between progress-bar metric updates (metrics.jsonl gets every step)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in output_dir."""
    overwrite: bool = False
    """Allow starting a fresh run in an output_dir that already holds one."""
    nonfinite: Literal["halt", "skip"] = "halt"
    """On a non-finite loss or gradient: stop with a report (halt), or skip the step and go on."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype: auto = bfloat16 autocast on a GPU that supports it, float32 on CPU."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    deterministic: bool = False
    """Use deterministic kernels (torch.use_deterministic_algorithms)."""
    trust_remote_code: bool = False
    """Allow model folders to run their own code."""
    tensorboard: bool = True
    """Write TensorBoard event files to output_dir/tensorboard."""
    wandb: WandbConfig | None = None
    """Log metrics and the config to Weights & Biases (needs the wandb package); null = off."""
    mlflow: MlflowConfig | None = None
    """Log metrics and the config to MLflow (needs the mlflow package); null = off."""
    sft: SFTConfig | None = None
    """Settings of `algorithm: sft`."""
    reward_model: RewardModelConfig | None = None
    """Settings of `algorithm: reward_model`."""
    dpo: DPOConfig | None = None
    """Settings of `algorithm: dpo` (every pairwise preference loss)."""
    kto: KTOConfig | None = None
    """Settings of `algorithm: kto` (unpaired desirable / undesirable completions)."""
    npo: NPOConfig | None = None
    """Settings of `algorithm: npo` (negatives only, e.g. unlearning)."""
    dro: DROConfig | None = None
    """Settings of `algorithm: dro` (single completions with a scalar reward and a learned value)."""
    ppo: RLConfig | None = None
    """Settings of `algorithm: ppo` (policy + critic + reward + reference, InstructGPT-style)."""
    safe_ppo: RLConfig | None = None
    """Settings of `algorithm: safe_ppo` (Safe RLHF: reward and cost with a Lagrange multiplier)."""
    grpo: RLConfig | None = None
    """Settings of `algorithm: grpo` (group-normalized advantages, no critic)."""
    dr_grpo: RLConfig | None = None
    """Settings of `algorithm: dr_grpo` (GRPO without std and length normalization)."""
    rloo: RLConfig | None = None
    """Settings of `algorithm: rloo` (leave-one-out baseline)."""
    reinforce_pp: RLConfig | None = None
    """Settings of `algorithm: reinforce_pp` (REINFORCE++: globally normalized advantages)."""
    remax: RLConfig | None = None
    """Settings of `algorithm: remax` (the greedy completion's reward as the baseline)."""
    online_dpo: OnlineDPOConfig | None = None
    """Settings of `algorithm: online_dpo` (best vs worst of the policy's samples, a DPO-family step)."""
    best_of_n: BestOfNConfig | None = None
    """Settings of `algorithm: best_of_n` (rejection-sampling fine-tuning)."""
    self_rewarding: SelfRewardingConfig | None = None
    """Settings of `algorithm: self_rewarding` (the policy judges its own samples; iterative DPO; Con-J)."""
    evaluation: EvalConfig | None = None
    """Generation-based evaluation during training (every `evaluation.every` steps and after the last
    step): rewards, accuracy, lengths, KL to the reference, best checkpoint (docs/evaluation.md)."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Multi-process runs launched by torchrun or accelerate: DDP or FSDP2, backend, per-phase
    collective timeouts (docs/distributed.md). Ignored in a single process."""

    @property
    def algo(self) -> Any:
        """The settings section of the chosen algorithm."""
        return getattr(self, self.algorithm)


# --------------------------------------------------------------------------- building


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
        if 1 < len(args) < len(typing.get_args(tp)):  # e.g. str | tuple[str, ...] | None
            return typing.Union[tuple(args)], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) one value against a field type."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' must not be null")
    if dataclasses.is_dataclass(inner):
        if value is True or value == {}:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping of settings, got {value!r}")
        return _build(inner, value, prefix=key + ".")
    origin = typing.get_origin(inner)
    if origin is Literal:
        choices = typing.get_args(inner)
        if value not in choices:
            raise ConfigError(
                f"config key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}."
                + did_you_mean(str(value), map(str, choices))
            )
        return value
    if origin in (typing.Union, types.UnionType):  # e.g. tuple[str, ...] | str
        for arg in typing.get_args(inner):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' has an invalid value {value!r}")
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        args = typing.get_args(inner)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"config key '{key}' must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if inner is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'." + did_you_mean(key, names))
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. optim.lr=1e-5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-5 as a string; accept scientific notation as a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key.split("."), value


def _set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[path[-1]] = value


def _fix_yaml_numbers(node: Any) -> Any:
    """PyYAML (YAML 1.1) reads `1e-5` as a string; treat such strings as numbers."""
    if isinstance(node, dict):
        return {k: _fix_yaml_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_numbers(v) for v in node]
    if isinstance(node, str):
        try:
            if any(c in node for c in "eE") and node.strip()[0] in "0123456789.-+":
                return float(node)
        except (ValueError, IndexError):
            return node
    return node


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """The YAML tree of a file, with numbers in scientific notation read as numbers (None for an
    empty file). ConfigError naming `what` and the file when it is missing, not UTF-8 or not YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        return _fix_yaml_numbers(yaml.safe_load(p.read_text(encoding="utf-8")))
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {p}: not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {p}: not UTF-8 text") from None


def read_json(path: str | os.PathLike, what: str, hint: str = "") -> Any:
    """The JSON value of a file; ConfigError naming `what` and the file when it is missing (with
    `hint` on how to make one) or not valid JSON."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}{hint}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {p}: not valid JSON: {e}") from None


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply dotted `key=value` overrides, validate, and freeze."""
    tree: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of settings")
        tree = loaded
    for text in overrides or []:
        keys, value = _parse_override(text)
        _set_dotted(tree, keys, value)
    try:
        return config_from_dict(tree)
    except ConfigError as e:
        if path is None:
            raise
        raise ConfigError(f"{path}: {e}") from None


def config_from_dict(tree: dict[str, Any]) -> RunConfig:
    tree = dict(tree)
    algorithm = tree.get("algorithm", RunConfig.algorithm)
    if algorithm not in ALGORITHM_CONFIGS:
        raise ConfigError(
            f"unknown algorithm '{algorithm}'; available: {', '.join(sorted(ALGORITHM_CONFIGS))}."
            + did_you_mean(str(algorithm), ALGORITHM_CONFIGS)
        )
    for other in ALGORITHM_CONFIGS:
        if other != algorithm and tree.get(other) is not None:
            raise ConfigError(
                f"config has a '{other}' section but algorithm is '{algorithm}'; "
                f"remove the section or set algorithm: {other}"
            )
    if tree.get(algorithm) is None:
        tree[algorithm] = {}
    cfg = _build(RunConfig, tree)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Checks that need more than one field. Everything here runs before any model loads."""
    if cfg.max_steps < 1:
        raise ConfigError(f"max_steps must be at least 1, got {cfg.max_steps}")
    if cfg.data.train is None:
        raise ConfigError("data.train is required: the path of the training data file")
    for key in ("train", "eval"):
        if getattr(cfg.data, key) == ():
            raise ConfigError(f"data.{key} is an empty list; give a file or a list of files")
    if cfg.data.max_length < 2:
        raise ConfigError(f"data.max_length must be at least 2, got {cfg.data.max_length}")
    if cfg.data.max_prompt_length is not None and not 1 <= cfg.data.max_prompt_length < cfg.data.max_length:
        raise ConfigError("data.max_prompt_length must be at least 1 and below data.max_length")
    if not 0.0 <= cfg.data.eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction must be in [0, 1), got {cfg.data.eval_fraction}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {cfg.optim.lr}")
    if cfg.checkpoint_every < 0 or cfg.eval_every < 0 or cfg.log_every < 1:
        raise ConfigError("checkpoint_every and eval_every must be >= 0 and log_every >= 1")
    if cfg.keep_checkpoints < 1:
        raise ConfigError("keep_checkpoints must be at least 1")
    check_trackers(cfg.wandb, cfg.mlflow)
    check_distributed(cfg.distributed)
    generation = getattr(cfg.algo, "generation", None)
    if getattr(generation, "backend", "hf") == "vllm" and cfg.distributed.strategy == "fsdp":
        raise ConfigError("generation.backend vllm with distributed.strategy fsdp is not supported yet (the weight sync "
                          "from FSDP shards into the engine is untested); use strategy: ddp, or backend: hf")
    if cfg.lora is not None and (cfg.lora.r < 1 or cfg.lora.alpha <= 0):
        raise ConfigError("lora.r must be >= 1 and lora.alpha > 0")
    if cfg.dpo is not None:
        _validate_dpo(cfg.dpo)
    for key in ("kto", "npo"):
        section = getattr(cfg, key)
        if section is not None and not section.beta > 0:
            raise ConfigError(f"{key}.beta must be positive, got {section.beta}")
    if cfg.kto is not None and not (cfg.kto.desirable_weight > 0 and cfg.kto.undesirable_weight > 0):
        raise ConfigError("kto.desirable_weight and kto.undesirable_weight must be positive")
    if cfg.npo is not None and cfg.npo.retain_weight < 0:
        raise ConfigError("npo.retain_weight must be >= 0")
    if cfg.dro is not None and not cfg.dro.tau > 0:
        raise ConfigError(f"dro.tau must be positive, got {cfg.dro.tau}")
    section = cfg.algo
    if isinstance(section, (RLConfig, OnlineDPOConfig, BestOfNConfig)):
        validate_online(cfg.algorithm, section, cfg.batch_size, cfg.micro_batch_size, cfg.max_steps)
    if cfg.self_rewarding is not None:
        check_self_rewarding(cfg)
    if cfg.evaluation is not None:
        from rlhflab.config_eval import check_run_evaluation

        check_run_evaluation(cfg)


DPO_HPARAMS = ("beta", "label_smoothing", "delta", "nll_weight", "lam", "gamma", "alpha", "eta", "distance",
               "version", "f")
"""Keys of the dpo section passed to the chosen losses as hyperparameters."""


def dpo_losses(d: DPOConfig) -> list[tuple[str, float, dict[str, Any]]]:
    """(name, weight, hyperparameters) of each loss in the dpo section; unset keys use each loss's default."""
    names = [d.loss] if isinstance(d.loss, str) else list(d.loss)
    weights = list(d.loss_weights) if d.loss_weights is not None else [1.0] * len(names)
    from rlhflab.losses.preference import hparams_of

    out = []
    for name, w in zip(names, weights):
        accepted = hparams_of(name)
        hp = {k: getattr(d, k) for k in DPO_HPARAMS if k in accepted and getattr(d, k) is not None}
        out.append((name, w, hp))
    return out


def _validate_dpo(d: DPOConfig) -> None:
    from rlhflab.losses.preference import PAIRWISE, hparams_of

    names = [d.loss] if isinstance(d.loss, str) else list(d.loss)
    if not names:
        raise ConfigError("dpo.loss must name at least one loss")
    for name in names:
        if name not in PAIRWISE:
            raise ConfigError(f"unknown dpo.loss '{name}'; available: {', '.join(PAIRWISE)}." + did_you_mean(name, PAIRWISE))
    if len(set(names)) != len(names):
        raise ConfigError(f"dpo.loss lists a loss twice: {names}")
    if d.loss_weights is not None:
        if len(d.loss_weights) != len(names):
            raise ConfigError(f"dpo.loss_weights has {len(d.loss_weights)} weights for {len(names)} losses {names}")
        if any(not w >= 0 for w in d.loss_weights) or not any(w > 0 for w in d.loss_weights):
            raise ConfigError(f"dpo.loss_weights must be >= 0 and not all 0, got {list(d.loss_weights)}")
    used = {k for n in names for k in hparams_of(n)}
    for key in DPO_HPARAMS:
        if getattr(d, key) is not None and key not in used:
            users = [n for n in PAIRWISE if key in hparams_of(n)]
            raise ConfigError(f"dpo.{key} is not a setting of dpo.loss {names}; it applies to {', '.join(users)}")
    if d.beta is not None and not d.beta > 0:
        raise ConfigError(f"dpo.beta must be positive, got {d.beta}")
    from rlhflab.losses.preference import check_hparams

    for name, _, hp in dpo_losses(d):
        try:
            check_hparams(name, hp)
        except ValueError as e:
            raise ConfigError(f"dpo: {e}") from None
    if d.chosen_logp_warn_steps < 0:
        raise ConfigError("dpo.chosen_logp_warn_steps must be >= 0")
    if d.reference == "precompute" and any("token_kl" in PAIRWISE[n].requires for n in names):
        raise ConfigError("dpo.reference: precompute cannot serve tdpo, which needs the reference's full "
                          "distributions every step; use reference: online (or auto)")


def to_dict(cfg: Any) -> Any:
    """A plain (YAML-writable) dict of a config dataclass."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def dump_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    tree = to_dict(cfg)
    for other in ALGORITHM_CONFIGS:  # keep only the section of the chosen algorithm
        if other != cfg.algorithm:
            tree.pop(other, None)
    Path(path).write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
