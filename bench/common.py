"""What every suite of bench/run.py shares: the run context, one process per configuration (peak
RSS from wait4), the child environment, the machine description, the tiny model, synthetic data and
the per-row summaries (median step time after the warm-up).

Imported only inside rlhflab's environment (.venv); the TRL workers have their own trl_common.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"
RLHFLAB_WORKER = BENCH / "rlhflab_worker.py"
MODELS = ("tiny-llama", "smollm2")

WORDS = (
    "the model answers questions about rivers mountains cities music history science cooking gardens "
    "weather travel books animals oceans planets computers languages painting football winter summer "
    "bridges trains coffee bread apples forests deserts islands stars moons clouds storms lakes roads "
    "simple careful quick quiet bright warm cold green small large old new early late good clear "
    "explain describe compare list suggest choose build write read learn teach plan visit measure "
    "because while after before with without around between under over through during about"
).split()


@dataclass
class Ctx:
    """One benchmark run: its arguments, scratch folder, device and the model folders."""

    args: argparse.Namespace
    scratch: Path
    device: str  # "cpu" or "cuda"
    models: dict[str, Path] = field(default_factory=dict)
    tokenizer: Any = None

    @property
    def plain(self) -> str:
        """The precision both sides train in: fp32 on a CPU, bf16 autocast on a GPU."""
        return "fp32" if self.device == "cpu" else "bf16"

    def rlhflab_precision(self) -> dict[str, str]:
        return {"dtype": "float32" if self.device == "cpu" else "bfloat16", "device": self.device}

    def trl_precision(self) -> dict[str, Any]:
        """TRL overrides for the matching variant: rlhflab's precision, no gradient checkpointing."""
        bf16 = self.device != "cpu"
        return {"bf16": bf16, "fp16": False, "gradient_checkpointing": False}


# --------------------------------------------------------------------------- inputs


def build_tiny_llama(dest: Path, tokenizer_dir: Path, seed: int) -> Path:
    """A random LlamaForCausalLM (hidden 256, 4 layers, 4 heads, MLP 688, tied embeddings) with
    SmolLM2's tokenizer and 49,152-token vocabulary, so the vocabulary projection dominates."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=49152, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        attention_dropout=0.0, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    return dest


def make_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """Synthetic preference pairs: a question of random words, two answers of random words
    (~72 tokens per sequence with SmolLM2's chat template)."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = []
    for i in range(n):
        prompt = f"Question {i}: {words(rng.randint(9, 11))}?"
        chosen = words(rng.randint(20, 24)).capitalize() + "."
        rejected = words(rng.randint(20, 24)).capitalize() + "."
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def trl_ids(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> list[int]:
    """Ids as TRL renders conversational rows (apply_chat_template, no BOS dedup: SmolLM2 has none)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def rlhflab_items(ctx: Ctx, path: Path, kind: str, max_length: int) -> list[Any]:
    """The data file as rlhflab's trainer tokenizes it (read, validate, chat template, masks);
    refuses a max_length that would truncate a row, so both sides see whole sequences."""
    from rlhflab.config import DataConfig
    from rlhflab.data.load import load_examples
    from rlhflab.data.tokenize import tokenize_examples

    loaded = load_examples(path, kind)
    items, report = tokenize_examples(loaded.examples, ctx.tokenizer, DataConfig(train=str(path), max_length=max_length))
    if report.truncated or len(items) != loaded.num_rows:
        sys.exit(f"{path}: max_length {max_length} truncates or drops rows ({report.truncated} truncated, "
                 f"{loaded.num_rows - len(items)} dropped); raise --max-length")
    return items


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


# --------------------------------------------------------------------------- one process per configuration


def child_env(threads: int, scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1",
        "HF_DATASETS_CACHE": str(scratch / "hf_datasets"), "RLHFLAB_CACHE": str(scratch / "rlhflab_cache"),
        "RLHFLAB_REFERENCE_CACHE": str(scratch / "rlhflab_cache" / "reference"), "PYTHONUNBUFFERED": "1",
    })
    return env


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float]:
    """Run one configuration; (exit code, wall seconds, peak RSS MiB of that process, from wait4)."""
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t, usage.ru_maxrss / 1024


def launch(ctx: Ctx, suite: str, model: str, framework: str, variant: str, cmd: list[str], work: Path) -> dict:
    """Run `cmd` (which writes work/result.json) in its own process; the row for the results JSON,
    with the child's own result under `detail`, or `error` (the log's tail) when it failed."""
    print(f"  {suite} / {model} / {framework} / {variant} ...", end="", flush=True)
    code, wall, rss = run_child(cmd, child_env(ctx.args.threads, work), work / "log.txt")
    row = {"suite": suite, "model": model, "framework": framework, "variant": variant, "wall_s": wall,
           "peak_rss_mib": rss, "exit_code": code}
    result = work / "result.json"
    if code != 0 or not result.exists():
        tail = (work / "log.txt").read_text(errors="replace").strip().splitlines()[-15:]
        row["error"] = "\n".join(tail)
        print(f" FAILED (exit {code}; log {work / 'log.txt'})\n    " + "\n    ".join(tail[-5:]))
        return row
    row["detail"] = json.loads(result.read_text())
    row["peak_rss_self_mib"] = row["detail"].pop("peak_rss_mib", None)
    row["peak_gpu_mib"] = row["detail"].pop("peak_gpu_mib", None)
    return row


def workdir(ctx: Ctx, *parts: str) -> Path:
    work = ctx.scratch.joinpath(*parts)
    work.mkdir(parents=True, exist_ok=False)
    return work


def run_rlhflab(ctx: Ctx, suite: str, model: str, variant: str, config: dict) -> dict:
    """`rlhflab train` on `config` (output_dir filled in) through bench/rlhflab_worker.py."""
    import yaml

    work = workdir(ctx, suite, model, f"rlhflab-{variant}")
    config = {**config, "output_dir": str(work / "run"), "checkpoint_every": 0, "tensorboard": False,
              **ctx.rlhflab_precision()}
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, str(RLHFLAB_WORKER), str(work / "config.yaml"), str(work / "result.json"),
           str(ctx.args.threads)]
    return launch(ctx, suite, model, "rlhflab", variant, cmd, work)


def run_trl(ctx: Ctx, suite: str, model: str, variant: str, worker: str, spec: dict) -> dict:
    """A TRL worker (bench/trl_<suite>_worker.py) in .venv-trl on `spec` (+ out, device, threads)."""
    work = workdir(ctx, suite, model, f"trl-{variant}")
    spec = {**spec, "variant": variant, "device": ctx.device, "threads": ctx.args.threads,
            "out": str(work / "result.json"), "output_dir": str(work / "trl_out")}
    (work / "spec.json").write_text(json.dumps(spec, indent=2))
    cmd = [str(TRL_PYTHON), str(BENCH / worker), str(work / "spec.json")]
    return launch(ctx, suite, model, "trl", variant, cmd, work)


def wants(ctx: Ctx, framework: str) -> bool:
    """Whether --only lets `framework` (rlhflab | trl | hf-generate) run."""
    return not ctx.args.only or framework in ctx.args.only


def run_both(ctx: Ctx, suite: str, model: str, rlhflab_cfgs: dict[str, dict], trl_worker: str, trl_spec: dict,
             trl_variants: dict[str, dict], finish: Callable[[dict], dict] | None = None) -> list[dict]:
    """Every rlhflab variant (a train config each), then every TRL variant (overrides of the
    worker's config), one process each, one after the other; rows summarized by summarize_steps
    and then `finish(row)`."""
    configs = [("rlhflab", v, cfg) for v, cfg in rlhflab_cfgs.items()] + \
              [("trl", v, over) for v, over in trl_variants.items()]
    rows = []
    for framework, variant, conf in configs:
        if not wants(ctx, framework):
            continue
        if framework == "rlhflab":
            row = run_rlhflab(ctx, suite, model, variant, conf)
        else:
            row = run_trl(ctx, suite, model, variant, trl_worker, {**trl_spec, "overrides": conf})
        row = summarize_steps(row, ctx.args.warmup)
        if finish is not None and "detail" in row:
            row = finish(row)
        if "step_s_median" in row:
            print(f" {row['step_s_median']:.3f} s/step (median), {row['peak_rss_mib']:.0f} MiB, {row['wall_s']:.0f} s")
        elif "error" not in row:
            print(" no step times recorded")
        rows.append(row)
    return rows


def optim_config(lr: float) -> dict:
    """TRL / transformers AdamW defaults: no weight decay, betas (0.9, 0.999), eps 1e-8, clip at 1.0,
    constant learning rate."""
    return {"lr": lr, "schedule": "constant", "warmup_steps": 0, "max_grad_norm": 1.0, "weight_decay": 0.0,
            "betas": [0.9, 0.999], "eps": 1e-8}


def offline_run(ctx: "Ctx", model: str, prep: dict, algorithm: str, lr: float, **spec_extra) -> tuple[dict, dict]:
    """The rlhflab run config and the TRL worker spec the offline suites (sft, rm, dpo) share: the
    same model, data, steps, batch in one micro-batch, seed, max_length and optimizer on both sides."""
    a, path = ctx.args, str(ctx.models[model])
    cfg = {"algorithm": algorithm, "model": path, "seed": a.seed, "max_steps": a.steps,
           "batch_size": a.batch_size, "micro_batch_size": a.batch_size,
           "data": {"train": prep["data"], "max_length": a.max_length}, "optim": optim_config(lr)}
    spec = {"model": path, "data": prep["data"], "expected_ids": prep["expected_ids"], "steps": a.steps,
            "batch_size": a.batch_size, "lr": lr, "seed": a.seed, "max_length": a.max_length, **spec_extra}
    return cfg, spec


# --------------------------------------------------------------------------- summaries


def median_after(values: list, warmup: int) -> tuple[float | None, list]:
    """Median of the values after the first `warmup` (all of them when that leaves none); Nones skipped."""
    vals = [x for x in values[warmup:] if x is not None] or [x for x in values if x is not None]
    return (statistics.median(vals) if vals else None), vals


def summarize_steps(row: dict, warmup: int) -> dict:
    """Step-time figures of a training row (rlhflab `time/step_s`, TRL on_step_begin -> on_step_end)."""
    child = row.get("detail")
    if not child or not child.get("step_s"):
        return row
    med, times = median_after(child["step_s"], warmup)
    row.update({"steps_done": len(child["step_s"]), "steps_measured": len(times), "step_s_median": med,
                "step_s_min": min(times), "step_s_max": max(times), "steps_per_s": 1.0 / med,
                "first_loss": (child.get("losses") or [None])[0]})
    row["effective_step_s"] = row.get("amortized_step_s", med)
    return row


# --------------------------------------------------------------------------- provenance


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def trl_versions() -> dict[str, str] | None:
    if not TRL_PYTHON.exists():
        return None
    code = "import json, torch, transformers, trl; print(json.dumps({'torch': torch.__version__, " \
           "'transformers': transformers.__version__, 'trl': trl.__version__}))"
    try:
        out = subprocess.run([str(TRL_PYTHON), "-c", code], capture_output=True, text=True, check=True, timeout=300)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def machine_info(ctx: Ctx) -> dict[str, Any]:
    """The machine and software the run measured: CPU model, cores, threads, versions, GPU, vLLM,
    date, git commit, and the exact command."""
    import torch
    import transformers

    dirty = _git("status", "--porcelain", "--", "bench", "src")
    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "threads": ctx.args.threads, "device": ctx.device,
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "trl_env": trl_versions(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(dirty) if dirty is not None else None,
        "command": shlex.join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "load_average_start": os.getloadavg(),
    }
    if ctx.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    info["vllm"] = vllm_status(ctx.device, getattr(ctx.args, "rollout_backend", "hf") == "vllm")
    return info


def vllm_status(device: str, used: bool = False) -> str:
    """Whether vLLM rollouts are part of this run: the grpo suite adds a vLLM-engine rlhflab run
    with --rollout-backend vllm (GPU); otherwise every side generates with Hugging Face."""
    import importlib.util

    if device != "cuda":
        return "not available (vLLM rollouts need a GPU; every side generates with Hugging Face)"
    if importlib.util.find_spec("vllm") is None:
        return "not available (vllm is not installed: pip install 'rlhflab[vllm]')"
    if used:
        return "used by the grpo suite's rlhflab *_vllm run (--rollout-backend vllm)"
    return "installed, not used (add --rollout-backend vllm for a vLLM-engine grpo run)"
