"""`rlhflab preflight`: the checks, the exit codes, the parameter counts and memory plan against
closed forms and real models, and two-process runs (torchrun, and ranks given different configs)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhflab.cli import main
from rlhflab.config import config_from_dict
from rlhflab.errors import ConfigError
from rlhflab.preflight import Check, exit_code, merge
from rlhflab.preflight_dist import agreement, check_agreement
from rlhflab.preflight_memory import (activation_bytes, build_plan, config_tensors, lora_params, model_shape,
                                      safetensors_shapes)
from rlhflab.testing import tiny_causal_lm, tiny_model_dir
from rlhflab.train.distributed import DistContext

# tiny_causal_lm(vocab_size=64, hidden=32, layers=2, heads=2): intermediate 2 h, untied LM head
V, H, L, I = 64, 32, 2, 64


def tiny_params(vocab: int) -> int:
    """Embedding, per layer q/k/v/o + gate/up/down + 2 norms, final norm, untied LM head."""
    return vocab * H + L * (4 * H * H + 3 * H * I + 2 * H) + H + vocab * H


TINY_PARAMS = tiny_params(V)
TINY_LORA_ALL = L * (4 * 4 * (H + H) + 2 * 4 * (H + I) + 4 * (I + H))  # r = 4: r (in + out) per adapted Linear


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich: one table row per line, whole messages
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)


def _run_dir(tmp_path: Path, **extra) -> Path:
    """A tiny model, 40 SFT rows and a config: returns the config's path."""
    model = tiny_model_dir(tmp_path)
    rows = [{"prompt": f"spell {i}", "completion": " ".join("one two three".split()[: 1 + i % 3])} for i in range(40)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"algorithm": "sft", "model": str(model), "output_dir": str(tmp_path / "run"), "max_steps": 2,
           "batch_size": 8, "micro_batch_size": 4,
           "data": {"train": str(tmp_path / "sft.jsonl"), "eval_fraction": 0.1, "max_length": 64}, **extra}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def _cfg(tmp_path: Path, **extra):
    model = tiny_model_dir(tmp_path) if not (tmp_path / "tiny-model").exists() else tmp_path / "tiny-model"
    tree = {"algorithm": "sft", "model": str(model), "data": {"train": "unused.jsonl", "max_length": 64},
            "batch_size": 8, "micro_batch_size": 4, **extra}
    return config_from_dict(tree)


# ---------------------------------------------------------------------------------------- the command


def test_single_process_passes_and_prints_the_table(tmp_path, capsys):
    code = main(["preflight", str(_run_dir(tmp_path))])
    out = capsys.readouterr().out
    assert code == 0, out
    for line in ("config", "batch plan", "data", "output_dir", "process group", "device", "memory plan", "disk"):
        assert line in out
    assert "FAIL" not in out and "ready" in out
    assert "36 training examples, 4 eval" in out
    assert f"{tiny_params(259):,} params (safetensors)" in out  # vocab 259: the tiny tokenizer's
    assert not (tmp_path / "run").exists()  # preflight writes nothing


def test_bad_config_exits_2_with_the_config_error(tmp_path, capsys):
    assert main(["preflight", str(_run_dir(tmp_path)), "optim.lrr=1"]) == 2
    out = capsys.readouterr().out
    assert "FAIL" in out and "unknown config key 'optim.lrr'" in out and "Did you mean 'lr'" in out


def test_impossible_batch_plan_and_existing_run_are_named(tmp_path, capsys):
    cfg = _run_dir(tmp_path)
    assert main(["preflight", str(cfg), "batch_size=7"]) == 2
    assert "batch plan" in capsys.readouterr().out
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    assert main(["preflight", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert "output_dir" in out and "already holds a run" in out


def test_memory_above_95_percent_fails_and_above_80_warns(tmp_path, monkeypatch, capsys):
    import rlhflab.preflight_dist as pd

    cfg = _run_dir(tmp_path)
    monkeypatch.setattr(pd, "host_available", lambda: 1024)
    assert main(["preflight", str(cfg)]) == 2
    assert "lower micro_batch_size" in capsys.readouterr().out
    from rlhflab.algorithms import get_algorithm
    from rlhflab.config import load_config

    peak = build_plan(load_config(cfg), get_algorithm(load_config(cfg)), 1, "cpu", True).peak
    monkeypatch.setattr(pd, "host_available", lambda: int(peak / 0.9))
    assert main(["preflight", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "WARN" in out and "= 90% of" in out


def test_data_warnings_become_warn_lines(tmp_path):
    from rlhflab.preflight import check_inputs

    model = tiny_model_dir(tmp_path)
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(8)]
    rows[3]["rejected"] = rows[3]["chosen"]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(json.dumps({"algorithm": "dpo", "model": str(model), "data": {"train": str(tmp_path / "pairs.jsonl")},
                               "output_dir": str(tmp_path / "run"), "batch_size": 4, "micro_batch_size": 2}))
    inputs = check_inputs(str(cfg), [])
    warns = [c.detail for c in inputs.checks if c.status == "WARN"]
    assert any("dropped 1 of 8 rows" in w for w in warns), inputs.checks
    assert any("row 4: chosen and rejected are identical" in w for w in warns)
    assert exit_code(inputs.checks) == 0 and inputs.data["train"] == 7


def test_exit_codes_and_merged_rows():
    ok, user, env = Check("a", "PASS", "x"), Check("b", "FAIL", "y"), Check("c", "FAIL", "z", user=False)
    assert exit_code([ok, Check("w", "WARN", "")]) == 0
    assert exit_code([ok, user]) == 2
    assert exit_code([user, env]) == 1  # the environment first: nothing else can be trusted
    rows = merge([[ok, Check("device", "PASS", "cuda:0")], [ok, Check("device", "PASS", "cuda:1")]])
    assert [(r, c.name, c.detail) for r, c in rows] == [("all", "a", "x"), ("0", "device", "cuda:0"),
                                                        ("1", "device", "cuda:1")]


# ---------------------------------------------------------------------------------------- agreement between ranks


class _FakeTwoRanks(DistContext):
    """Rank 0 of two, whose gather returns rank 1's identity as given."""

    def __init__(self, other):
        super().__init__(rank=0, world_size=2, backend="gloo")
        self.other = other

    def all_gather_object(self, obj):
        return [obj, self.other]


def _identity(**change):
    base = {"config": "aaaa", "data": {"train": 36, "eval": 4, "digest": "d1"}, "host": "h", "join_s": 0.1,
            "versions": {"rlhflab": "0.1.0", "torch": "2.13", "transformers": "5.23", "python": "3.11"}}
    return {**base, **change}


def test_a_rank_with_another_config_fails_naming_it():
    rows = check_agreement(_FakeTwoRanks(_identity(config="bbbb")), _identity())
    bad = [c for c in rows if c.status == "FAIL"]
    assert [c.name for c in bad] == ["same config"]
    assert "rank 1 resolved a different config (hash bbbb; rank 0: aaaa)" in bad[0].detail
    assert exit_code(rows) == 2


def test_other_data_and_versions_are_named():
    other = _identity(data={"train": 35, "eval": 4, "digest": "d2"},
                      versions={"rlhflab": "0.1.0", "torch": "2.12", "transformers": "5.22", "python": "3.11"})
    rows = {(c.name, c.status): c for c in agreement([_identity(), other])}
    assert "rank 1 reads 35 train + 4 eval rows, sha256 d2" in rows["same data", "FAIL"].detail
    assert rows["same versions", "FAIL"].detail == "rank 1 has torch 2.12, rank 0 has 2.13"
    assert not rows["same versions", "FAIL"].user  # an environment failure: exit 1
    assert "transformers 5.22" in rows["same versions", "WARN"].detail


# ---------------------------------------------------------------------------------------- parameter counts


def test_parameter_count_is_the_closed_form_and_the_real_models(tmp_path):
    from rlhflab.models import count_parameters

    real = count_parameters(tiny_causal_lm())[1]
    assert real == TINY_PARAMS == 24_736
    folder = tiny_model_dir(tmp_path, vocab_size=V)
    shape = model_shape(folder)
    assert (shape.source, shape.params) == ("safetensors", TINY_PARAMS)
    (folder / "model.safetensors").unlink()
    shape = model_shape(folder)
    assert (shape.source, shape.params) == ("config.json", TINY_PARAMS)
    assert shape.layer_params == 4 * H * H + 3 * H * I + 2 * H


def test_config_count_matches_every_tensor_of_gqa_tied_biased_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, attention_bias=True, mlp_bias=True, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    real = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert config_tensors(cfg.to_dict()) == real


def test_sharded_safetensors_are_counted_through_the_index(tmp_path):
    model = tiny_causal_lm()
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    assert model_shape(tmp_path / "m").params == TINY_PARAMS


def test_lora_count_matches_peft(tmp_path):
    from peft import LoraConfig, get_peft_model

    from rlhflab.models import count_parameters

    shape = model_shape(tiny_model_dir(tmp_path, vocab_size=V))
    assert lora_params(shape.tensors, 4, "all-linear") == TINY_LORA_ALL == 4352
    peft_model = get_peft_model(tiny_causal_lm(), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert count_parameters(peft_model)[0] == TINY_LORA_ALL
    assert lora_params(shape.tensors, 4, ("q_proj", "v_proj")) == L * 2 * 4 * (H + H)


def test_a_broken_safetensors_header_names_the_file(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes((12).to_bytes(8, "little") + b"not json!!!!")
    with pytest.raises(ConfigError, match="model.safetensors: the safetensors header"):
        safetensors_shapes(bad)


# ---------------------------------------------------------------------------------------- the memory plan


def test_memory_plan_closed_form_full_lora_fsdp_and_reference(tmp_path):
    from rlhflab.algorithms import get_algorithm

    cfg = _cfg(tmp_path)
    P = model_shape(tmp_path / "tiny-model").params
    lines = {x.name: x.bytes for x in build_plan(cfg, get_algorithm(cfg), 1, "cpu", False).lines}
    assert (lines["weights: policy"], lines["gradients"], lines["AdamW states"]) == (4 * P, 4 * P, 8 * P)
    assert lines["logits"] == 2 * 4 * 64 * 259 * 4
    plan = build_plan(cfg, get_algorithm(cfg), 2, "cpu", False)
    assert plan.peak == 16 * P + plan.total("train")
    cfg = _cfg(tmp_path, distributed={"strategy": "fsdp"})
    fsdp = {x.name: x.bytes for x in build_plan(cfg, get_algorithm(cfg), 2, "cpu", False).lines}
    assert (fsdp["weights: policy"], fsdp["gradients"], fsdp["AdamW states"]) == (2 * P, 2 * P, 4 * P)
    assert fsdp["gathered weights (FSDP)"] == 2 * P
    cfg = _cfg(tmp_path, algorithm="dpo", dpo={"reference": "online"}, lora={"r": 4})
    plan = build_plan(cfg, get_algorithm(cfg), 1, "cuda", False)
    lines = {x.name: x.bytes for x in plan.lines}
    lora = lora_params(model_shape(tmp_path / "tiny-model").tensors, 4, "all-linear")
    assert "reference" not in lines  # LoRA: the adapter-disabled base is the reference
    assert (lines["weights: policy"], lines["gradients"]) == (4 * (P + lora), 4 * lora)
    assert lines["activations: policy"] == activation_bytes(model_shape(tmp_path / "tiny-model"), 2 * 4 * 64, 2)
    assert plan.checkpoint_bytes == 12 * lora
    cfg = _cfg(tmp_path, algorithm="dpo", dpo={"reference": "online"})
    assert {x.name: x.bytes for x in build_plan(cfg, get_algorithm(cfg), 1, "cpu", False).lines}["reference"] == 4 * P


def test_online_plan_kv_cache_and_vllm_engine(tmp_path):
    from rlhflab.algorithms import get_algorithm
    from rlhflab.preflight_dist import Device, check_engine

    gen = {"num_generations": 4, "max_new_tokens": 16, "batch_size": 64}
    cfg = _cfg(tmp_path, algorithm="grpo", grpo={"generation": gen, "rewards": [{"type": "math"}]})
    algo = get_algorithm(cfg)
    lines = {x.name: x for x in build_plan(cfg, algo, 1, "cpu", False).lines}
    n, length = min(64, 8 * 4), (64 - 1) + 16  # prompts x samples, max_prompt_length + max_new_tokens
    assert lines["KV cache (generation)"].bytes == n * length * L * 2 * H * 4
    assert lines["KV cache (generation)"].phase == "generate"
    assert check_engine(cfg, algo, Device("cpu")) == []
    try:
        cfg = _cfg(tmp_path, algorithm="grpo", grpo={"generation": {**gen, "backend": "vllm"}, "rewards": [{"type": "math"}]})
    except ConfigError:
        pytest.skip("this tree has no vLLM backend")
    algo = get_algorithm(cfg)
    lines = {x.name: x for x in build_plan(cfg, algo, 1, "cuda", False, device_total=10_000).lines}
    assert "KV cache (generation)" not in lines
    assert (lines["vLLM engine"].bytes, lines["vLLM engine"].phase) == (3000, "generate")  # 0.3 of the GPU, asleep
    [check] = check_engine(cfg, algo, Device("cpu"))
    assert check.status == "FAIL" and not check.user and "needs a CUDA GPU" in check.detail


def test_activation_formula_bounds_what_autograd_saves():
    """The formula counts what a Llama block keeps for backward; measured per layer (difference of
    a 3- and a 1-layer model, so embeddings and logits cancel) it must be an upper bound within 15%."""
    saved = {}
    for layers in (1, 3):
        model = tiny_causal_lm(vocab_size=259, hidden=64, layers=layers, heads=4).train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t, seen=seen):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randint(0, 259, (4, 32)), labels=torch.randint(0, 259, (4, 32)))
        saved[layers] = sum(v for k, v in seen.items() if k not in params)
    measured = (saved[3] - saved[1]) / 2
    from rlhflab.preflight_memory import ModelShape

    formula = activation_bytes(ModelShape("", {}, "", hidden=64, layers=1, intermediate=128, kv_dim=64, vocab=259),
                               4 * 32, 4)
    assert measured <= formula <= 1.15 * measured, (measured, formula)


def test_disk_check_compares_free_space_with_the_checkpoints(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from rlhflab.preflight import disk_check
    from rlhflab.preflight_memory import MemoryPlan

    cfg = _cfg(tmp_path, output_dir=str(tmp_path / "a" / "b"))  # missing folders: its nearest parent is checked
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10_000, 0, 1000))
    plan = MemoryPlan(checkpoint_bytes=200, final_bytes=100)  # keep 2 + 1 being written: 3 x 200 + 100 = 700
    assert disk_check(cfg, plan).status == "PASS"
    assert disk_check(cfg, MemoryPlan(checkpoint_bytes=250, final_bytes=100)).status == "WARN"  # 850: above 80%
    check = disk_check(cfg, MemoryPlan(checkpoint_bytes=300, final_bytes=100))  # 1000 > 95%
    assert check.status == "FAIL" and "lower keep_checkpoints" in check.detail
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------------------- two processes


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}


def test_torchrun_two_gloo_ranks_pass(tmp_path):
    cfg = _run_dir(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rlhflab", "preflight", str(cfg)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "2 process(es) x 1 micro-batch(es)" in out and "gloo, 2 ranks on 1 host(s)" in out
    assert "all_reduce (gloo group)" in out and "GB/s busbw" in out
    assert "same config" in out and "on all 2 ranks" in out and "FAIL" not in out


def test_two_ranks_with_different_configs_fail_naming_the_rank(tmp_path):
    cfg = _run_dir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for rank, extra in ((0, []), (1, ["seed=1"])):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-m", "rlhflab", "preflight", str(cfg), *extra], env=env,
                                      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    assert "rank 1 resolved a different config" in outs[0]
