"""Parameter counts and the per-rank memory plan of a run, from the model folders' files: no
weights are loaded (`rlhflab preflight`, docs/distributed.md "Preflight").

Counts come from the safetensors headers when a folder has them (exact: an 8-byte little-endian
header length, then a JSON table of every tensor's dtype and shape; a tied output layer is not
stored, so it is counted once), else from config.json (exact for the Llama family: llama,
mistral, qwen2, SmolLM; an estimate for other architectures).

Bytes per rank, with P parameters, T trainable parameters and W ranks:

- weights 4 P (rlhflab keeps fp32 weights; on a GPU autocast computes in bf16), gradients 4 T,
  AdamW states 8 T (exp_avg and exp_avg_sq in fp32). Under FSDP the trained models' weights,
  gradients and AdamW states are divided by W, two decoder layers are unsharded at a time in a
  training pass, and generation, evaluation and checkpointing gather the full weights.
- LoRA: T = sum over adapted Linear layers (in x out) of r (in + out); a scalar-head model with
  LoRA also trains (and keeps a second copy of) its head.
- a frozen reference (a copy of the initial policy, or `ref_model`), reward / judge models of
  the scorers: 4 P each, on every rank, never sharded.
- activations of one micro-batch (a rough upper bound, no gradient checkpointing): sequences x
  length x layers x (8 h + 4 kv + 4 I) x compute-dtype bytes, for hidden size h, key/value width
  kv and MLP width I: the tensors a Llama block keeps for backward (both norms' inputs and
  outputs, q/k/v before and after RoPE, the attention output, four SwiGLU intermediates);
  logits and their log-softmax: 2 x sequences x length x vocab x 4 (an upper bound: rlhflab runs
  the LM head on the scored tokens only).
- online algorithms' KV cache while generating: generation.batch_size x (prompt + max_new_tokens)
  x layers x 2 kv x compute-dtype bytes.

Peak = what is held all run + the larger of the training pass and the generation / gathered phase.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlhflab.errors import ConfigError

GIB = 1024 ** 3
_NOT_LINEAR = re.compile(r"(^|\.)(lm_head|embed_tokens|embed_out|wte|wpe|score|classifier)$")
"""2-D weights peft's `all-linear` leaves out: embeddings and the output layer / scalar head."""
_LAYER = re.compile(r"\.(layers|h|blocks)\.\d+\.")
_DIMS = {"hidden": ("hidden_size", "n_embd", "d_model"), "layers": ("num_hidden_layers", "n_layer", "num_layers"),
         "heads": ("num_attention_heads", "n_head"), "vocab": ("vocab_size",),
         "intermediate": ("intermediate_size", "n_inner", "ffn_dim")}


@dataclass(frozen=True)
class ModelShape:
    """The tensors of a model folder (name -> shape) and the sizes the activation estimate uses."""

    folder: str
    tensors: dict[str, tuple[int, ...]]
    source: str
    """'safetensors' (exact) or 'config.json' (computed from the architecture's sizes)."""
    hidden: int
    layers: int
    intermediate: int
    kv_dim: int
    vocab: int

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.tensors.values())

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (the unit FSDP gathers)."""
        in_layers = sum(math.prod(s) for n, s in self.tensors.items() if _LAYER.search("." + n))
        return in_layers // max(1, self.layers)


# ---------------------------------------------------------------------------------------- reading folders


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in a safetensors file, read from its header only."""
    from rlhflab.merge import MergeError, read_header

    try:
        tensors, _ = read_header(path)
    except MergeError as e:
        raise ConfigError(f"{path}: the safetensors header is not a valid tensor table ({e})") from None
    return {name: info.shape for name, info in tensors.items()}


def weight_files(folder: Path) -> list[Path]:
    """The folder's model safetensors files (sharded ones through their index); [] when none."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        from rlhflab.config import read_json

        weight_map = read_json(index, "safetensors index").get("weight_map") or {}
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ConfigError(f"{index}: names shards that are missing: {', '.join(missing)}")
        return files
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def _dims(config: dict[str, Any], where: str) -> dict[str, Any]:
    c = config.get("text_config") or config
    found: dict[str, Any] = {}
    for key, names in _DIMS.items():
        found[key] = next((int(c[n]) for n in names if isinstance(c.get(n), (int, float))), None)
    for key in ("hidden", "layers", "heads", "vocab"):
        if not found[key]:
            raise ConfigError(f"{where}: config.json has no {_DIMS[key][0]}; cannot size the model without loading it")
    found["intermediate"] = found["intermediate"] or 4 * found["hidden"]
    found["kv_heads"] = int(c.get("num_key_value_heads") or found["heads"])
    found["head_dim"] = int(c.get("head_dim") or found["hidden"] // found["heads"])
    found["config"] = c
    return found


def config_tensors(config: dict[str, Any], where: str = "config.json") -> dict[str, tuple[int, ...]]:
    """The tensors of a Llama-family causal LM, computed from its config.json."""
    d = _dims(config, where)
    c, h, inter, vocab = d["config"], d["hidden"], d["intermediate"], d["vocab"]
    q, kv = d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"]
    attn_bias = bool(c.get("attention_bias", False))
    qkv_bias = attn_bias or c.get("model_type") in ("qwen2", "qwen2_moe")
    mlp_bias = bool(c.get("mlp_bias", False))
    t: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(d["layers"]):
        p = f"model.layers.{i}."
        for name, shape, bias in (("self_attn.q_proj", (q, h), qkv_bias), ("self_attn.k_proj", (kv, h), qkv_bias),
                                  ("self_attn.v_proj", (kv, h), qkv_bias), ("self_attn.o_proj", (h, q), attn_bias),
                                  ("mlp.gate_proj", (inter, h), mlp_bias), ("mlp.up_proj", (inter, h), mlp_bias),
                                  ("mlp.down_proj", (h, inter), mlp_bias)):
            t[p + name + ".weight"] = shape
            if bias:
                t[p + name + ".bias"] = (shape[0],)
        t[p + "input_layernorm.weight"] = (h,)
        t[p + "post_attention_layernorm.weight"] = (h,)
    t["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings", True):
        t["lm_head.weight"] = (vocab, h)
    return t


def model_shape(folder: str | Path) -> ModelShape:
    """The tensors of a local Hugging Face folder: from its safetensors headers (exact), else its config."""
    from rlhflab.config import read_json

    folder = Path(folder)
    config = read_json(folder / "config.json", "model config")
    if not isinstance(config, dict):
        raise ConfigError(f"{folder / 'config.json'}: expected a JSON object")
    d = _dims(config, str(folder))
    files = weight_files(folder)
    if files:
        tensors: dict[str, tuple[int, ...]] = {}
        for f in files:
            tensors.update(safetensors_shapes(f))
        source = "safetensors"
    else:
        tensors, source = config_tensors(config, str(folder)), "config.json"
    return ModelShape(str(folder), tensors, source, d["hidden"], d["layers"], d["intermediate"],
                      d["kv_heads"] * d["head_dim"], d["vocab"])


def as_scalar(shape: ModelShape) -> ModelShape:
    """The shape of the folder loaded with a scalar head (reward model, critic): the LM head is
    dropped, a (1, hidden) `score` head added (kept as is when the folder is a reward model)."""
    if any(n.split(".")[0] == "score" for n in shape.tensors):
        return shape
    tensors = {n: s for n, s in shape.tensors.items() if not n.startswith("lm_head.")}
    tensors["score.weight"] = (1, shape.hidden)
    return replace(shape, tensors=tensors)


def _is_target(module: str, targets: str | tuple[str, ...]) -> bool:
    """peft's rule: 'all-linear', a regex (full match) or names matched as a module-name suffix."""
    if targets == "all-linear":
        return not _NOT_LINEAR.search(module)
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def lora_params(tensors: dict[str, tuple[int, ...]], r: int, targets: str | tuple[str, ...]) -> int:
    """Trainable LoRA parameters: r (in + out) per adapted 2-D weight (A is r x in, B is out x r)."""
    total = 0
    for name, shape in tensors.items():
        if len(shape) == 2 and name.endswith(".weight") and _is_target(name[:-len(".weight")], targets):
            total += r * (shape[0] + shape[1])
    return total


# ---------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class MemoryLine:
    name: str
    bytes: int
    detail: str
    phase: str = "held"
    """held: for the whole run; train: during a forward/backward; generate: while generating or
    with the FSDP weights gathered (evaluation, checkpoints)."""


@dataclass
class MemoryPlan:
    lines: list[MemoryLine] = field(default_factory=list)
    checkpoint_bytes: int = 0
    """One resumable checkpoint: trainable weights + AdamW states (full tensors whatever W)."""
    final_bytes: int = 0
    """The final/ folder(s): the trained models' full fp32 weights."""

    def total(self, phase: str) -> int:
        return sum(line.bytes for line in self.lines if line.phase == phase)

    @property
    def peak(self) -> int:
        return self.total("held") + max(self.total("train"), self.total("generate"))


@dataclass(frozen=True)
class _Trained:
    name: str
    shape: ModelShape
    trainable: int
    extra: int
    """Parameters beside the folder's own (the LoRA adapter, a LoRA head's trainable copy)."""


def _trained(name: str, shape: ModelShape, lora: Any, scalar: bool) -> _Trained:
    if lora is None:
        return _Trained(name, shape, shape.params, 0)
    base = {n: s for n, s in shape.tensors.items() if n.split(".")[0] != "score"}
    adapter = lora_params(base, lora.r, lora.target_modules)
    head = shape.params - sum(math.prod(s) for s in base.values()) if scalar else 0
    return _Trained(name, shape, adapter + head, adapter + head)


def _count(n: int) -> str:
    """A parameter count: 24,736 | 134.5M | 1.71B."""
    return f"{n / 1e9:,.2f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M" if n >= 1e6 else f"{n:,}"


def build_plan(cfg: Any, algo: Any, world: int, device_type: str, has_eval: bool,
               device_total: int | None = None) -> MemoryPlan:
    """The memory plan of one rank of `world` (`has_eval`: the run has eval rows; `device_total`: the
    GPU's memory, of which a vLLM engine takes generation.vllm.gpu_memory_utilization)."""
    from rlhflab.models import resolve_model_path as resolve

    fsdp = world > 1 and cfg.distributed.strategy == "fsdp"
    shard = world if fsdp else 1
    nbytes = 2 if device_type == "cuda" and cfg.dtype != "float32" else 4
    policy = model_shape(resolve(cfg.model))
    plan = MemoryPlan()
    trained = [_trained(n, as_scalar(s) if scalar else s, cfg.lora, scalar)
               for n, s, scalar in trained_models(cfg, algo, policy, lambda p: model_shape(resolve(p)))]
    split = f" / {world} ranks (FSDP)" if fsdp else ""
    for t in trained:
        lora = f" + {_count(t.extra)} LoRA" if t.extra else ""
        plan.lines.append(MemoryLine(f"weights: {t.name}", 4 * (t.shape.params + t.extra) // shard,
                                     f"{_count(t.shape.params)} params ({t.shape.source}){lora}, fp32{split}"))
    trainable = sum(t.trainable for t in trained)
    plan.lines.append(MemoryLine("gradients", 4 * trainable // shard, f"{_count(trainable)} trainable, fp32{split}"))
    plan.lines.append(MemoryLine("AdamW states", 8 * trainable // shard, f"2 x fp32 per trainable parameter{split}"))
    ref = reference_source(cfg, algo, has_eval)
    if ref is not None:
        shape = policy if ref == "copy" else model_shape(resolve(ref))
        what = "frozen copy of the initial policy" if ref == "copy" else f"ref_model {ref}"
        plan.lines.append(MemoryLine("reference", 4 * shape.params, f"{what}: {_count(shape.params)} params, fp32"))
    for label, name, scalar in scorer_models(cfg, algo):
        shape = model_shape(resolve(name))
        shape = as_scalar(shape) if scalar else shape
        plan.lines.append(MemoryLine(label, 4 * shape.params, f"{name}: {_count(shape.params)} params, fp32"))
    _dynamic_lines(plan, cfg, algo, trained, nbytes, fsdp, world, device_total)
    plan.checkpoint_bytes = 12 * trainable
    plan.final_bytes = sum(4 * (t.shape.params + t.extra) for t in trained)  # LoRA: merged weights + the adapter
    return plan


def activation_bytes(shape: ModelShape, tokens: int, nbytes: int) -> int:
    """What the decoder layers keep for backward: tokens x layers x (8 h + 4 kv + 4 I) x bytes."""
    return tokens * shape.layers * (8 * shape.hidden + 4 * shape.kv_dim + 4 * shape.intermediate) * nbytes


def _dynamic_lines(plan: MemoryPlan, cfg: Any, algo: Any, trained: list[_Trained], nbytes: int, fsdp: bool,
                   world: int, device_total: int | None) -> None:
    """Activations and logits of a micro-batch; the KV cache of generation; FSDP's gathered weights."""
    online = algo.data_kind == "prompt"
    prompt = cfg.data.max_prompt_length or cfg.data.max_length - 1
    length = prompt + algo.gen_cfg.max_new_tokens if online else cfg.data.max_length
    pairs = algo.data_kind == "pairwise" or getattr(algo, "plan_unit", "") == "pairs"
    seqs = cfg.micro_batch_size * (2 if pairs else 1)
    dtype = "bf16" if nbytes == 2 else "fp32"
    for t in trained:
        plan.lines.append(MemoryLine(f"activations: {t.name}", activation_bytes(t.shape, seqs * length, nbytes),
                                     f"{seqs} seqs x {length} tokens x {t.shape.layers} layers, {dtype}", "train"))
    policy = trained[0].shape
    plan.lines.append(MemoryLine("logits", 2 * seqs * length * policy.vocab * 4,
                                 f"2 x {seqs} x {length} x vocab {policy.vocab:,} x fp32 (logits, log-softmax)", "train"))
    if fsdp:
        layer = max(t.shape.layer_params for t in trained)
        plan.lines.append(MemoryLine("unsharded layers (FSDP)", 2 * 4 * layer, "two decoder layers gathered", "train"))
        full = sum(4 * (t.shape.params + t.extra) for t in trained)
        plan.lines.append(MemoryLine("gathered weights (FSDP)", full - full // world,
                                     "full weights while generating, evaluating, checkpointing", "generate"))
    if online and getattr(algo.gen_cfg, "backend", "hf") == "vllm":
        v = algo.gen_cfg.vllm  # it reserves a fraction of the GPU; asleep (sleep: true) it gives it back to training
        asleep = ", asleep while training" if v.sleep else ""
        plan.lines.append(MemoryLine("vLLM engine", int(v.gpu_memory_utilization * (device_total or 0)),
                                     f"generation.vllm.gpu_memory_utilization {v.gpu_memory_utilization:g} of the GPU"
                                     + asleep, "generate" if v.sleep else "held"))
    elif online:
        g = algo.gen_cfg
        n = min(g.batch_size, cfg.batch_size * g.num_generations)
        plan.lines.append(MemoryLine("KV cache (generation)", n * length * policy.layers * 2 * policy.kv_dim * nbytes,
                                     f"{n} seqs x {length} tokens x {policy.layers} layers x 2 x {policy.kv_dim}, {dtype}",
                                     "generate"))


# ---------------------------------------------------------------------------------------- which models a run holds


def trained_models(cfg: Any, algo: Any, policy: ModelShape, shape_of: Any) -> list[tuple[str, ModelShape, bool]]:
    """(name, shape, is a scalar-head model) of every model the optimizer trains: the policy, the
    critics of ppo / safe_ppo (GAE), dro's value network."""
    out = [("policy", policy, False)]
    if getattr(algo, "uses_critic", False):
        for name in algo.critic_names():
            path = algo._critic_path(name, policy.folder)  # noqa: SLF001 - the same rule the algorithm loads by
            out.append((f"critic ({name})", policy if path == policy.folder else shape_of(path), True))
    if cfg.algorithm == "dro":
        out.append(("value network", policy, True))
    return out


def reference_source(cfg: Any, algo: Any, has_eval: bool) -> str | None:
    """What the run keeps as a frozen reference during training: 'copy' (of the initial policy),
    the `ref_model` folder, or None (no reference, precomputed log-probs, or LoRA's adapter-disabled base)."""
    name, lora = cfg.algorithm, cfg.lora is not None
    if name == "dpo":
        keep = algo.mode == "online" or (algo.mode == "precompute" and algo.d.eval_kl and has_eval)
    elif name in ("kto", "npo", "dro"):
        keep = not algo.precomputed or algo.needs_online_reference
    elif name == "online_dpo":
        from rlhflab.losses.preference import PAIRWISE

        keep = "reference" in getattr(PAIRWISE[algo.s.loss], "requires", ())
    else:
        keep = bool(getattr(algo, "needs_reference", False))
    if not keep and cfg.evaluation is not None and cfg.evaluation.kl:
        keep = True  # the `evaluation:` section measures KL to the reference (on rank 0)
    if not keep:
        return None
    if cfg.ref_model is not None:
        return cfg.ref_model
    return None if lora else "copy"


def _from_scorers(configs: Any, where: str) -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    for c in configs or ():
        label = f"{where}: {c.name or c.type}"
        if c.type == "reward_model" and c.path:
            out.append((label, c.path, True))
        elif c.type == "ensemble":
            from rlhflab.rewards.ensemble import read_ensemble_file

            members = list(c.paths) if c.paths else read_ensemble_file(c.calibration).members
            out += [(f"{label} member {i}", str(m), True) for i, m in enumerate(members)]
        if c.type in ("judge", "rbr") and c.judge is not None:
            out.append((f"{label} judge", c.judge.model, False))
    return out


def scorer_models(cfg: Any, algo: Any) -> list[tuple[str, str, bool]]:
    """(label, model name, is a scalar-head model) of every reward, cost, gold or judge model the
    run's scorers load (the online rewards on every rank; the `evaluation:` section's on rank 0)."""
    s = getattr(algo, "s", None)
    out = []
    for key in ("rewards", "costs", "gold"):
        out += _from_scorers(getattr(s, key, ()), key.rstrip("s") if key != "gold" else key)
    ev = cfg.evaluation
    if ev is not None:
        out += _from_scorers(ev.rewards, "evaluation")
        if ev.win_rate and ev.judge is not None:
            out.append(("evaluation: judge", ev.judge.model, False))
    return out
