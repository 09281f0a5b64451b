"""Multi-process training on CPU with the gloo backend (torchrun, 2 processes).

The contract (docs/distributed.md): W processes with the same global batch give the parameters of
one process (within 1e-5), for every strategy; a checkpoint written by W processes resumes to the
same result; only rank 0 writes; a collective that waits too long names its rank and phase.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import pref_rows, sft_rows, tiny_config_dict, unpaired_rows, write_jsonl


SCORER = '''
def distinct(samples):
    return [len(set(s.completion)) / 8.0 for s in samples]
'''


def _env(tmp_path: Path, tag: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RLHFLAB_REFERENCE_CACHE=str(tmp_path / f"refcache-{tag}"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def launch(cfg: Path, out: Path, nproc: int, *overrides: str, expect: int = 0) -> subprocess.CompletedProcess:
    """`rlhflab train cfg` in one process, or under torchrun with `nproc` gloo processes."""
    args = [f"output_dir={out}", *overrides]
    if nproc == 1:
        cmd = [sys.executable, "-m", "rlhflab", "train", str(cfg), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "rlhflab", "train", str(cfg), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(out.parent, out.name), timeout=300)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def weights(run: Path) -> dict:
    return load_file(str(run / "final" / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def write_cfg(tmp_path: Path, tiny_dir: Path, algorithm: str, **over) -> Path:
    if algorithm == "sft":
        data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(64))
        over = {"micro_batch_size": 2, **over}
    elif algorithm == "dpo":
        data = write_jsonl(tmp_path / "pref.jsonl", pref_rows(48))
        over = {"micro_batch_size": 2, "dpo": {"beta": 0.1}, **over}
    elif algorithm == "kto":
        data = write_jsonl(tmp_path / "unpaired.jsonl", unpaired_rows(48))
        over = {"micro_batch_size": 2, "kto": {"beta": 0.1}, **over}
    else:  # online
        (tmp_path / "scorer.py").write_text(SCORER)
        data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"say a word {i}"} for i in range(24)])
        section = {"rewards": [{"type": "python", "function": f"{tmp_path / 'scorer.py'}:distinct"}],
                   "generation": {"num_generations": 4, "max_new_tokens": 8}}
        if algorithm == "grpo":  # and evaluation: loss-free eval_every on every rank, `evaluation:` on rank 0
            section.update(kl_coef=0.05, epochs=2)
            over = {"eval_every": 2, "evaluation": {"data": str(data), "every": 2, "at_start": True,
                                                    "best_metric": "reward", "best_mode": "max"},
                    "data": {"train": str(data), "max_length": 64, "eval_fraction": 0.25}, **over}
        over = {"batch_size": 4, "micro_batch_size": 4 if algorithm == "grpo" else 1, algorithm: section, **over}
    over = {"data": {"train": str(data), "max_length": 64}, **over}
    base = tiny_config_dict(tiny_dir, tmp_path / "unused", algorithm=algorithm, max_steps=4,
                            optim={"lr": 1e-3, "schedule": "cosine", "warmup_steps": 1}, device="cpu", **over)
    base.pop("output_dir")
    path = tmp_path / f"{algorithm}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


CASES = [
    ("sft", "ddp"),
    ("dpo", "ddp"),  # reference log-probs precomputed in shards and gathered
    ("grpo", "ddp"),  # rollouts generated in slices, reference and old-policy passes sharded
    ("kto", "ddp"),  # the reference point z0 over the whole step's mismatched pairs
    ("online_dpo", "ddp"),  # a varying number of pairs: ranks short of a micro-batch repeat one at weight 0
    ("sft", "fsdp"),
    ("grpo", "fsdp"),  # generation and reference passes with the full parameters gathered
    ("grpo-lora", "ddp"),  # the reference is the adapter-disabled base: one copy of the base weights per rank
    ("grpo-lora", "fsdp"),  # best/ and final/ merge the adapter from the gathered weights, without copying the model
]


@pytest.mark.parametrize("algorithm,strategy", CASES, ids=[f"{a}-{s}" for a, s in CASES])
def test_two_processes_give_the_parameters_of_one(tmp_path, tiny_dir, algorithm, strategy):
    lora = algorithm.endswith("-lora")
    algorithm = algorithm.removesuffix("-lora")
    cfg = write_cfg(tmp_path, tiny_dir, algorithm, **({"lora": {"r": 4, "alpha": 8}} if lora else {}))
    launch(cfg, tmp_path / "one", 1)
    proc = launch(cfg, tmp_path / "two", 2, f"distributed.strategy={strategy}")
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "two")) < 1e-5
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]  # one writer: no duplicated rows
    for a, b in zip(one, two):
        assert b["units"] == a["units"] and b["examples"] == a["examples"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4, abs=1e-6)
    if algorithm in ("grpo", "online_dpo"):
        assert [r.get("reward/mean") for r in two] == pytest.approx([r.get("reward/mean") for r in one])
    if algorithm == "grpo":
        for key in ("eval/reward", "eval/gen/reward"):
            assert [r.get(key) for r in two] == pytest.approx([r.get(key) for r in one]) and two[1].get(key) is not None
        assert json.loads((tmp_path / "two" / "best.json").read_text()) == json.loads((tmp_path / "one" / "best.json").read_text())
        assert max_diff(load_file(str(tmp_path / "one" / "best" / "model.safetensors")),
                        load_file(str(tmp_path / "two" / "best" / "model.safetensors"))) < 1e-5
    assert "2 process(es)" in proc.stderr + proc.stdout
    run_info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run_info["world_size"] == 2 and run_info["strategy"] == strategy


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_resume_with_two_processes_equals_the_uninterrupted_run(tmp_path, tiny_dir, strategy):
    cfg = write_cfg(tmp_path, tiny_dir, "sft", checkpoint_every=2)
    launch(cfg, tmp_path / "full", 1)
    cut = tmp_path / "cut"
    launch(cfg, cut, 2, f"distributed.strategy={strategy}")
    ckpts = sorted(p.name for p in (cut / "checkpoints").iterdir())
    assert ckpts == ["step-000002", "step-000004"]  # written once, by rank 0, with full tensors
    # lose everything after step 2, as a kill would
    import shutil

    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "checkpoints" / "step-000004")
    proc = launch(cfg, cut, 2, f"distributed.strategy={strategy}", "resume=true")
    assert "resumed from" in proc.stderr + proc.stdout
    assert max_diff(weights(tmp_path / "full"), weights(cut)) < 1e-5
    assert [r["step"] for r in rows(cut)] == [1, 2, 3, 4]
    # the checkpoint format does not depend on the world size: one process continues it too
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "checkpoints" / "step-000004")
    launch(cfg, cut, 1, "resume=true")
    assert max_diff(weights(tmp_path / "full"), weights(cut)) < 1e-5


def test_a_bad_batch_plan_for_the_world_size_exits_2_naming_the_fix(tmp_path, tiny_dir):
    cfg = write_cfg(tmp_path, tiny_dir, "sft", batch_size=6, micro_batch_size=2)
    proc = launch(cfg, tmp_path / "bad", 2, expect=1)  # torchrun reports the workers' exit code 2 as a failure
    text = proc.stdout + proc.stderr
    assert "micro_batch_size 2 x world size 2 = 4" in text and "exitcode  : 2" in text
    assert not (tmp_path / "bad").exists()  # nothing written before the inputs were valid


TIMEOUT_SCRIPT = '''
import time, torch
from rlhflab.train.distributed import CollectiveTimeout, init_distributed
ctx = init_distributed("gloo", {"rollout": 2.0, "step": 30.0})
with ctx.phase("rollout", 7):
    if ctx.rank == 1:
        with ctx.phase("checkpoint", 7):
            time.sleep(8)
    try:
        ctx.all_reduce(torch.ones(1))
        print(f"rank {ctx.rank}: no timeout")
    except CollectiveTimeout as e:
        print(f"TIMEOUT {e}")
'''


def test_a_collective_that_waits_too_long_names_rank_phase_and_the_others(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(TIMEOUT_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path, "t"), timeout=120)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("TIMEOUT rank 0/2")), None)
    assert line is not None, proc.stdout + proc.stderr[-3000:]
    assert "phase 'rollout' (step 7)" in line and "more than 2 s" in line
    assert "rank 1: checkpoint (step 7)" in line  # what the late rank was doing
    assert "distributed.timeouts.rollout" in line


def test_accelerate_launch_starts_the_same_run(tmp_path, tiny_dir):
    """`accelerate launch --multi_gpu` starts torchrun workers; on a CPU machine rlhflab picks gloo."""
    import shutil

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate is a dependency of peft and should be installed"
    cfg = write_cfg(tmp_path, tiny_dir, "sft")
    launch(cfg, tmp_path / "one", 1)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "rlhflab", "train", str(cfg),
           f"output_dir={tmp_path / 'acc'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path, "acc"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 process(es)" in proc.stderr + proc.stdout
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "acc")) < 1e-5
