"""What the TRL workers share: reading the spec, the arguments every TRL config gets, the step
timer, method timing and writing the result. Imported inside .venv-trl, next to the worker scripts
(bench/trl_{sft,rm,dpo,grpo}_worker.py); imports nothing from rlhflab.

A spec (written by bench/common.py:run_trl) holds at least: model (folder), data (jsonl), steps,
batch_size, grad_accum, lr, seed, threads, device ("cpu" | "cuda"), variant, overrides (TRL
config fields of the variant: bf16, gradient_checkpointing, ...), out (result JSON), output_dir.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any, Callable


def load_spec(argv: list[str]) -> dict:
    """The worker's spec (argv[1]); sets torch's thread count before anything else runs."""
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} SPEC.json")
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    import torch

    torch.set_num_threads(int(spec["threads"]))
    return spec


def read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def common_args(spec: dict) -> dict[str, Any]:
    """TrainingArguments shared by every worker: the same optimizer settings as rlhflab (AdamW,
    no weight decay, clip 1.0, constant lr), no evaluation or saving, a log every step (logging
    runs after on_step_end, outside the timed step), float32 weights with SDPA attention; on a CPU
    `use_cpu=True` (which is also what lets bf16 autocast run there at all)."""
    return {
        "output_dir": spec["output_dir"], "max_steps": int(spec["steps"]),
        "per_device_train_batch_size": int(spec["batch_size"]),
        "gradient_accumulation_steps": int(spec.get("grad_accum", 1)),
        "learning_rate": float(spec["lr"]), "lr_scheduler_type": "constant", "warmup_steps": 0,
        "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": int(spec["seed"]),
        "use_cpu": spec["device"] == "cpu", "dataloader_num_workers": 0, "eval_strategy": "no",
        "save_strategy": "no", "report_to": "none", "logging_steps": 1, "disable_tqdm": True,
        "model_init_kwargs": {"dtype": "float32", "attn_implementation": "sdpa"},
        **spec.get("overrides", {}),
    }


def settings_of(args: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """The named config fields as JSON-safe values (enums by value, the rest as str)."""
    out = {}
    for k in keys:
        v = getattr(args, k, None)
        v = getattr(v, "value", v)
        out[k] = v if isinstance(v, (int, float, bool, str, type(None), list)) else str(v)
    return out


def compare_ids(spec: dict, got: list[list[int]]) -> dict[str, Any]:
    """TRL's token ids per sequence against rlhflab's (spec['expected_ids']: a JSON list of lists
    in the same order): how many sequences are identical, and the first that is not."""
    with open(spec["expected_ids"], encoding="utf-8") as f:
        expected = json.load(f)
    same = [list(a) == list(b) for a, b in zip(expected, got)]
    first = next((i for i, ok in enumerate(same) if not ok), None)
    out = {"sequences": len(expected), "compared": len(same), "identical": sum(same), "first_mismatch": first}
    if first is not None:
        out["example"] = {"rlhflab": expected[first], "trl": list(got[first])}
    return out


BASE_SETTINGS = ("bf16", "fp16", "gradient_checkpointing", "optim", "learning_rate", "lr_scheduler_type",
                 "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                 "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "use_cpu")


def step_timer_class(callback_base: type) -> type:
    """A `transformers.TrainerCallback` subclass that times each optimizer step (on_step_begin to
    on_step_end), the interval between step ends, and keeps every numeric log entry; `losses`
    lists the logged training losses."""

    class StepTimer(callback_base):
        def __init__(self):
            self.step_s: list[float] = []
            self.interval_s: list[float] = []
            self.logs: list[dict] = []
            self._t0 = self._last_end = None

        @property
        def losses(self) -> list[float]:
            return [float(lg["loss"]) for lg in self.logs if "loss" in lg]

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            now = time.perf_counter()
            self.step_s.append(now - self._t0)
            if self._last_end is not None:
                self.interval_s.append(now - self._last_end)
            self._last_end = now

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                self.logs.append({k: v for k, v in logs.items() if isinstance(v, (int, float))})

    return StepTimer


def _sync() -> None:
    """Wait for queued GPU work so a step's time is its own (nothing on a CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def build_trainer(trainer_cls: type, spec: dict, args: Any, dataset: Any, **kwargs: Any) -> tuple[Any, Any, float]:
    """`trainer_cls` on spec["model"] with `args`, `dataset`, the model's tokenizer and a step timer
    callback. Returns (trainer, timer, seconds the constructor took: model load, dataset preparation)."""
    from transformers import AutoTokenizer, TrainerCallback

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    timer = step_timer_class(TrainerCallback)()
    t = time.perf_counter()
    trainer = trainer_cls(model=spec["model"], args=args, train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[timer], **kwargs)
    return trainer, timer, time.perf_counter() - t


def timed_subclass(base: type, names: tuple[str, ...], on_result: Callable[[str, Any, Any], None] | None = None):
    """(subclass of `base` whose methods `names` are timed, {name: [seconds per call]}).
    `on_result(name, self, output)` sees each call's output (for lengths, rewards...)."""
    times: dict[str, list[float]] = {n: [] for n in names}

    def timed(name: str):
        def wrap(self, *a, **k):
            t = time.perf_counter()
            out = getattr(base, name)(self, *a, **k)
            times[name].append(time.perf_counter() - t)
            if on_result is not None:
                on_result(name, self, out)
            return out
        return wrap

    missing = [n for n in names if not hasattr(base, n)]
    if missing:
        import trl

        sys.exit(f"trl {trl.__version__}: {base.__name__} has no {missing}; this worker times them (written for 1.16)")
    return type(f"Timed{base.__name__}", (base,), {n: timed(n) for n in names}), times


def train_and_report(spec: dict, trainer: Any, timer: Any, init_s: float, settings: dict, extra: dict) -> None:
    """Run `trainer.train()` and write spec['out']: step times, losses, logs, timings, settings,
    versions, peak RSS (and peak GPU memory on a GPU), plus `extra` (computed after training when
    it is a callable)."""
    import torch
    import transformers
    import trl

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    result = {
        "framework": "trl", "variant": spec["variant"], "trl": trl.__version__,
        "transformers": transformers.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "steps_done": len(timer.step_s), "step_s": timer.step_s, "interval_s": timer.interval_s,
        "losses": timer.losses, "logs": timer.logs, "timings": {"init_s": init_s, "train_s": train_s},
        "settings": settings, "peak_rss_before_train_mib": rss_before,
    }
    result.update(extra() if callable(extra) else extra)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    with open(spec["out"], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=str)
