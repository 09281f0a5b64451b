"""End-to-end invariants of the loop on a tiny model: accumulation, determinism, resume, guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from conftest import pref_rows, sft_rows, unpaired_rows, write_jsonl
from rlhflab.algorithms import get_algorithm
from rlhflab.algorithms.base import StepOutput, TrainContext
from rlhflab.data import load_examples, tokenize_examples
from rlhflab.models import load_tokenizer
from rlhflab.train.loop import Loop, NonFiniteError
from rlhflab.train.run import run, seed_everything

QUIET = Console(quiet=True)


def _loop(cfg, tmp_path):
    algo = get_algorithm(cfg)
    tok = load_tokenizer(cfg.model)
    items, _ = tokenize_examples(load_examples(cfg.data.train, algo.data_kind, "auto").examples, tok, cfg.data)
    algo.setup(tok)
    items = algo.prepare_items(items)
    seed_everything(cfg.seed)
    model = algo.load_model(cfg.model, torch.device("cpu"))
    algo.before_training(model, items, None, TrainContext(cfg.model, torch.device("cpu"), QUIET, cfg.micro_batch_size))
    return Loop(cfg, algo, model, items, None, tmp_path, torch.device("cpu"), QUIET)


def _grads(loop):
    return {n: p.grad.clone() for n, p in loop.model.named_parameters() if p.grad is not None}


ACCUMULATION_CASES = {
    "sft": ("sft", sft_rows, {}),
    "sft-packed": ("sft", sft_rows, {"sft": {"packing": True}}),
    "reward_model": ("reward_model", pref_rows, {}),
    "dpo-precomputed-ref": ("dpo", pref_rows, {"dpo": {"reference": "precompute"}}),
    "dpo-online-ref": ("dpo", pref_rows, {"dpo": {"reference": "online"}}),
    "tdpo-sequential-kl": ("dpo", pref_rows, {"dpo": {"loss": "tdpo"}}),
    "dpo+sft-format-masked": ("dpo", pref_rows, {"dpo": {"loss": ["dpo", "sft"], "loss_weights": [1.0, 0.3],
                                                         "mask_format_tokens": True}}),
    "kto-step-reference-point": ("kto", unpaired_rows, {}),
    "npo": ("npo", lambda n: [r for r in unpaired_rows(2 * n) if not r["label"]], {}),
    "dro-policy-and-value": ("dro", lambda n: unpaired_rows(n, scored=True), {}),
}


@pytest.mark.parametrize("case", list(ACCUMULATION_CASES))
def test_accumulation_8x1_equals_1x8(make_cfg, tmp_path, case):
    algorithm, rows, extra = ACCUMULATION_CASES[case]
    data = write_jsonl(tmp_path / "d.jsonl", rows(40))
    grads = []
    for micro in (8, 1):
        cfg = make_cfg(algorithm=algorithm, data={"train": str(data)}, batch_size=8, micro_batch_size=micro,
                       optim={"max_grad_norm": None}, **extra)
        loop = _loop(cfg, tmp_path / f"m{micro}")
        row = loop.train_step(0)
        grads.append((_grads(loop), row["loss"]))
    (g8, l8), (g1, l1) = grads
    assert l8 == pytest.approx(l1, abs=1e-5)
    assert g8.keys() == g1.keys() and len(g8) > 0
    for name in g8:
        torch.testing.assert_close(g8[name], g1[name], atol=1e-5, rtol=1e-5, msg=name)


def _losses(out_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in rows]


def test_two_runs_give_identical_metrics(make_cfg, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(40))
    a = run(make_cfg(data={"train": str(data)}, output_dir=str(tmp_path / "a")), QUIET)
    b = run(make_cfg(data={"train": str(data)}, output_dir=str(tmp_path / "b")), QUIET)
    assert _losses(a.out_dir) == _losses(b.out_dir)
    c = run(make_cfg(data={"train": str(data)}, output_dir=str(tmp_path / "c"), seed=1), QUIET)
    assert _losses(c.out_dir) != _losses(a.out_dir)


@pytest.mark.parametrize("algorithm,rows,lora", [("sft", sft_rows, None), ("sft", sft_rows, {"r": 4}),
                                                ("reward_model", pref_rows, None), ("dpo", pref_rows, None),
                                                ("dpo", pref_rows, {"r": 4})])
def test_resume_equals_uninterrupted(make_cfg, tmp_path, algorithm, rows, lora):
    data = write_jsonl(tmp_path / "d.jsonl", rows(40))
    common = dict(algorithm=algorithm, data={"train": str(data)}, max_steps=6, checkpoint_every=3, lora=lora,
                  optim={"schedule": "cosine", "warmup_steps": 2})
    full = run(make_cfg(output_dir=str(tmp_path / "full"), **common), QUIET)
    part = tmp_path / "part"
    first = run(make_cfg(output_dir=str(part), **common), QUIET, stop_at=4)  # killed after step 4
    assert first.final_dir is None and len(_losses(part)) == 4
    resumed = run(make_cfg(output_dir=str(part), resume=True, **common), QUIET)
    assert _losses(part) == _losses(full.out_dir)  # steps 1-3, then 4-6 recomputed from the step-3 checkpoint
    wa = load_file(str(full.final_dir / "model.safetensors"))
    wb = load_file(str(resumed.final_dir / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_existing_run_dir_needs_resume_or_overwrite(make_cfg, tmp_path):
    from rlhflab.errors import UserError

    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(16))
    cfg = make_cfg(data={"train": str(data)}, max_steps=1)
    run(cfg, QUIET)
    with pytest.raises(UserError, match="already holds a run.*resume=true.*overwrite=true"):
        run(cfg, QUIET)
    run(make_cfg(data={"train": str(data)}, max_steps=1, overwrite=True), QUIET)


class _NaNAt:
    """Wraps an algorithm so that the loss of step `at` (0-based call count) is NaN."""

    def __init__(self, algo, at):
        self.algo, self.at, self.calls = algo, at, 0

    def __getattr__(self, name):
        return getattr(self.algo, name)

    def loss(self, model, batch):
        out = self.algo.loss(model, batch)
        self.calls += 1
        if self.calls - 1 == self.at:
            return StepOutput(out.loss_sum * float("nan"), out.metrics)
        return out


def test_nonfinite_guard_halts_with_step_and_rows(make_cfg, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(16))
    loop = _loop(make_cfg(data={"train": str(data)}, micro_batch_size=8), tmp_path)
    loop.algo = _NaNAt(loop.algo, at=1)
    loop.train_step(0)
    with pytest.raises(NonFiniteError, match=r"step 2: non-finite loss \(nan\).*rows \[\d+"):
        loop.train_step(1)


def test_nonfinite_guard_skip_leaves_weights(make_cfg, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(16))
    loop = _loop(make_cfg(data={"train": str(data)}, micro_batch_size=8, nonfinite="skip"), tmp_path)
    loop.algo = _NaNAt(loop.algo, at=0)
    before = {n: p.detach().clone() for n, p in loop.model.named_parameters()}
    row = loop.train_step(0)
    assert row["skipped"] == 1
    assert all(torch.equal(before[n], p) for n, p in loop.model.named_parameters())
    assert loop.train_step(1)["skipped"] == 0


def test_nonfinite_gradient_names_parameter(make_cfg, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(16))
    loop = _loop(make_cfg(data={"train": str(data)}, micro_batch_size=8), tmp_path)
    name, param = next((n, p) for n, p in loop.model.named_parameters() if "layers.1" in n)
    param.register_hook(lambda g: g * float("inf"))
    with pytest.raises(NonFiniteError, match="non-finite gradient.*'" + name.replace(".", r"\.")):
        loop.train_step(0)


def test_sigkill_then_resume_equals_uninterrupted(make_cfg, tmp_path, tiny_dir):
    """A real kill at an arbitrary moment (possibly mid-checkpoint) loses nothing but time."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from rlhflab.config import to_dict

    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(40))
    common = dict(data={"train": str(data)}, max_steps=30, checkpoint_every=1, micro_batch_size=2)
    full = run(make_cfg(output_dir=str(tmp_path / "full"), **common), QUIET)
    killed = tmp_path / "killed"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(make_cfg(output_dir=str(killed), **common))))
    proc = subprocess.Popen([sys.executable, "-m", "rlhflab.cli", "train", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    resumed = run(make_cfg(output_dir=str(killed), resume=True, **common), QUIET)
    assert _losses(killed) == _losses(full.out_dir)
    wa = load_file(str(full.final_dir / "model.safetensors"))
    wb = load_file(str(resumed.final_dir / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
