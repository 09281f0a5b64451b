"""The vLLM rollout backend against a fake `vllm` module (tests/rollout_vllm/fake_vllm.py; vLLM itself
needs a CUDA machine): engine construction, our SamplingParams as vLLM's with per-prompt seeds that
do not depend on how the prompts are split, outputs as Completions, the sleep / wake / push order,
full-weight sync of a plain and a LoRA model under Hugging Face names, the probe after every sync in
a GRPO run (and that it catches an engine that stopped receiving weights), and the errors a user
sees without vllm or a GPU."""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from unittest.mock import patch

import fake_vllm
import pytest
import torch

from rlhflab.config_rl import GenerationConfig, VLLMConfig
from rlhflab.errors import ConfigError, UserError
from rlhflab.models import load_causal_lm, load_tokenizer
from rlhflab.rollout import SamplingParams, make_generator
from rlhflab.rollout import vllm as backend
from rlhflab.rollout.probe import check_logprobs
from rlhflab.rollout.vllm import VLLMGenerator, merged_weights, request_seed

EOS = 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from rlhflab.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("vllm-tiny"))


@pytest.fixture
def fake(monkeypatch):
    """The fake vllm importable, no GPU check, and os.environ restored afterwards."""
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setattr(fake_vllm.LLM, "instances", [])
    monkeypatch.setattr(backend, "check_device", lambda device: None)
    with patch.dict(os.environ):
        yield fake_vllm


def build(folder: Path, lora=None, **cfg) -> tuple[VLLMGenerator, torch.nn.Module, object]:
    policy = load_causal_lm(folder, lora=lora).eval()
    tok = load_tokenizer(folder)
    gen = make_generator(GenerationConfig(backend="vllm", vllm=VLLMConfig(**cfg)), policy, tok, {EOS}, EOS, "cpu")
    return gen, policy, tok


def prompts(tok, n: int) -> list[list[int]]:
    return [tok.encode(f"count to {i}:") for i in range(n)]


# ----------------------------------------------------------------------------- construction and mapping
def test_engine_is_built_for_colocated_rl(fake, folder):
    gen, _, _ = build(folder, gpu_memory_utilization=0.25, max_model_len=128, dtype="bfloat16", enforce_eager=True)
    kw = fake.LLM.instances[0].kwargs
    assert fake.LLM.instances[0].model_path == str(folder)
    assert kw["logprobs_mode"] == "processed_logprobs" and kw["enable_sleep_mode"] is True
    assert kw["gpu_memory_utilization"] == 0.25 and kw["max_model_len"] == 128 and kw["dtype"] == "bfloat16"
    assert kw["enforce_eager"] is True and kw["distributed_executor_backend"] == "external_launcher"
    assert os.environ["WORLD_SIZE"] == "1" and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert gen.holds_copy and gen.probe_tol == 0.5  # 16-bit engine
    assert fake.LLM.instances[0].events == [("sleep", 1)]  # asleep until the first rollout


def test_sampling_params_are_ours(fake, folder):
    gen, _, _ = build(folder, sleep=False)
    sp = gen._sampling_params(SamplingParams(4, 9, 0.7, 1.0, 0, ("\n\n",)), seed=123)
    assert (sp.n, sp.temperature, sp.max_tokens, sp.seed, sp.logprobs) == (4, 0.7, 9, 123, 0)
    assert sp.stop_token_ids == [EOS] and sp.ignore_eos is True  # exactly our stop tokens
    assert sp.stop == ["\n\n"] and sp.include_stop_str_in_output is True
    assert gen._sampling_params(SamplingParams(), seed=1).stop is None
    with pytest.raises(UserError, match="top_p 1 and top_k off"):
        gen.generate([[5, 6]], SamplingParams(2, 4, 1.0, 0.9, 0, ()), seed=0)


def test_request_seeds_do_not_depend_on_the_split(fake, folder):
    """Request i gets request_seed(seed, offset + i): two halves with offsets = one call."""
    gen, _, tok = build(folder, sleep=False)
    llm = fake.LLM.instances[0]
    ps, params = prompts(tok, 4), SamplingParams(3, 6, 0.9, 1.0, 0, ())
    whole = gen.generate(ps, params, seed=11)
    seeds_whole = [sp.seed for _, sp in llm.requests]
    llm.requests.clear()
    halves = gen.generate(ps[:2], params, seed=11) + gen.generate(ps[2:], params, seed=11, offset=2)
    assert [sp.seed for _, sp in llm.requests] == seeds_whole == [request_seed(11, i) for i in range(4)]
    assert len(set(seeds_whole)) == 4 and all(0 <= s < 2**62 for s in seeds_whole)
    for a, b in zip(whole, halves):
        assert (a.token_ids, a.logprobs) == (b.token_ids, b.logprobs)
    assert [c.prompt_index for c in whole] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [c.prompt_index for c in halves[6:]] == [0, 0, 0, 1, 1, 1]  # indices into the call's own list
    assert request_seed(12, 0) != request_seed(11, 0)


# ----------------------------------------------------------------------------- outputs
def test_outputs_become_completions(fake, folder):
    gen, _, tok = build(folder, sleep=False)
    L = fake.Logprob
    ids = tok.encode("xa yb", add_special_tokens=False)
    stop_out = fake.CompletionOutput(0, "?", ids + [EOS], None, [{t: L(-0.5), 99: L(-0.1)} for t in ids] + [{EOS: L(-0.25)}],
                                     "stop")
    length_out = fake.CompletionOutput(1, "?", [7, 8], None, [{7: L(-1.0)}, {8: L(-2.0)}], "length")
    out = fake.RequestOutput("0", [5], [length_out, stop_out])  # vLLM does not promise the order
    first, second = gen._completions(0, out, SamplingParams(2, 8, 1.0, 1.0, 0, ("a",)))
    assert first.token_ids == ids + [EOS] and first.logprobs == [-0.5] * len(ids) + [-0.25]
    assert first.finish_reason == "stop" and first.text == "xa"  # decoded by us, cut after the stop string
    assert (second.token_ids, second.logprobs, second.finish_reason) == ([7, 8], [-1.0, -2.0], "length")
    bad = [fake.CompletionOutput(0, "", [7], None, None, "stop"), fake.CompletionOutput(0, "", [7], None, [{7: L(-1.0)}], "abort")]
    for o, msg in zip(bad, ("log-probs", "abort")):
        with pytest.raises(RuntimeError, match=msg):
            gen._completions(0, fake.RequestOutput("0", [5], [o]), SamplingParams(1, 8, 1.0, 1.0, 0, ()))
    with pytest.raises(RuntimeError, match="2 samples"):
        gen._completions(0, out, SamplingParams(3, 8, 1.0, 1.0, 0, ()))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_engine_logprobs_match_the_trainer(fake, folder, temperature):
    """The probe: engine log-probs of its samples = the trainer's log softmax(logits / T); the
    stop token is part of the completion; finish reasons come through."""
    gen, policy, tok = build(folder)
    cfg = GenerationConfig(backend="vllm", max_new_tokens=12, temperature=temperature)
    assert check_logprobs(policy, gen, prompts(tok, 1)[0], cfg, EOS, n=6) < 1e-5
    done = gen.generate(prompts(tok, 3), SamplingParams(4, 12, temperature, 1.0, 0, ()), seed=3)
    for c in done:
        assert len(c.token_ids) == len(c.logprobs) and all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason == ("stop" if c.token_ids[-1] == EOS else "length")
        assert c.finish_reason == "stop" or len(c.token_ids) == 12


# ----------------------------------------------------------------------------- sleep, wake, sync
@pytest.mark.parametrize("level", [1, 2])
def test_sleep_wake_and_push_order(fake, folder, level):
    gen, _, tok = build(folder, sleep_level=level)
    llm = fake.LLM.instances[0]
    ev = lambda: [e[0] if e[0] != "wake_up" else e[1][0] for e in llm.events]  # noqa: E731
    gen.sync_weights()
    assert ev() == ["sleep", "weights", "load_weights", "reset_prefix_cache"]
    llm.events.clear()
    gen.generate(prompts(tok, 2), SamplingParams(2, 4, 1.0, 1.0, 0, ()), seed=0)
    assert ev() == ["kv_cache", "generate", "sleep"]
    llm.events.clear()
    done = gen.generate(prompts(tok, 2), SamplingParams(2, 4, 1.0, 1.0, 0, ()), seed=0)
    # level 1 kept the pushed weights on the CPU; level 2 dropped them, so they are pushed again
    again = ["weights", "load_weights", "reset_prefix_cache"] if level == 2 else ["weights"]
    assert ev() == again + ["kv_cache", "generate", "sleep"]
    assert all(torch.isfinite(torch.tensor(c.logprobs)).all() for c in done)  # never sampled from dropped weights


def test_first_generation_pushes_without_an_explicit_sync(fake, folder):
    """The engine starts with the folder's weights: the first generation pushes the trainer's."""
    gen, policy, tok = build(folder, sleep=False)
    with torch.no_grad():
        policy.model.embed_tokens.weight.mul_(2.0)
    gen.generate(prompts(tok, 1), SamplingParams(1, 2, 1.0, 1.0, 0, ()), seed=0)
    assert gen.pushes == 1 and torch.equal(fake.LLM.instances[0].hf.model.embed_tokens.weight, policy.model.embed_tokens.weight)


def test_sync_pushes_full_weights_under_hf_names(fake, folder):
    gen, policy, _ = build(folder, sleep=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    gen.sync_weights()
    llm = fake.LLM.instances[0]
    names = [e for e in llm.events if e[0] == "load_weights"][-1][1]
    assert names == list(policy.state_dict())
    for n, p in llm.hf.named_parameters():
        assert torch.equal(p, policy.state_dict()[n]), n


def test_sync_merges_lora_without_touching_the_trainer(fake, folder):
    from peft.tuners.lora import LoraLayer

    from rlhflab.config import LoraConfig

    gen, policy, _ = build(folder, lora=LoraConfig(r=4, alpha=8.0), sleep=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # peft starts B at 0 (a zero update); make the adapter matter
        for n, p in policy.named_parameters():
            if "lora_" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    expected = {k: v.detach() for k, v in copy.deepcopy(policy).merge_and_unload().state_dict().items()}
    gen.sync_weights()
    pushed = dict(merged_weights(policy))
    assert set(pushed) == set(expected) and not any("lora_" in k or "base_layer" in k or k.startswith("base_model")
                                                     for k in pushed)
    engine = {k: v.detach() for k, v in fake.LLM.instances[0].hf.named_parameters()}
    worst = max(float((engine[k] - expected[k]).abs().max()) for k in expected)
    assert worst < 1e-6
    base = load_causal_lm(folder).state_dict()
    assert sum(not torch.allclose(expected[k], base[k]) for k in expected) == 14  # 7 linear layers x 2 blocks
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())  # trainer untouched
    assert not any(m.merged for m in policy.modules() if isinstance(m, LoraLayer))


# ----------------------------------------------------------------------------- in a run, and errors
def grpo_config(folder: Path, tmp_path: Path, **over):
    from rlhflab.config import config_from_dict

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say a word {i}"}) + "\n" for i in range(8)))
    scorer = tmp_path / "scorer.py"  # a reward that varies between samples, so every step updates the policy
    scorer.write_text("def varied(samples):\n    return [sum(map(ord, s.completion)) % 13 / 13 for s in samples]\n")
    gen = {"backend": "vllm", "num_generations": 2, "max_new_tokens": 6, **over.pop("generation", {})}
    tree = {"algorithm": "grpo", "model": str(folder), "output_dir": str(tmp_path / "run"), "seed": 0, "max_steps": 3,
            "batch_size": 2, "micro_batch_size": 4, "checkpoint_every": 0, "tensorboard": False,
            "optim": {"lr": 5e-2, "schedule": "constant"}, "data": {"train": str(data), "max_length": 48},
            "grpo": {"rewards": [{"type": "python", "function": f"{scorer}:varied"}], "generation": gen,
                     "kl_coef": 0.0, "log_kl": False}}
    tree.update(over)
    return config_from_dict(tree)


@pytest.mark.parametrize("lora", [False, True])
def test_grpo_probes_the_engine_after_every_sync(fake, folder, tmp_path, lora):
    from rlhflab.train.run import run

    res = run(grpo_config(folder, tmp_path, **({"lora": {"r": 4, "alpha": 8.0}} if lora else {})))
    assert len(res.history) == 3
    for h in res.history:
        assert h["engine/probe_max_abs_diff"] < 1e-5 and "time/probe_s" in h
        assert h["engine/logprob_abs_diff_max"] < 1e-5  # the trainer's log-probs, always recomputed for vllm
        assert h["engine_trainer_max_abs_diff"] == pytest.approx(h["engine/logprob_abs_diff_max"])
    gen_pushes = [e for e in fake.LLM.instances[0].events if e[0] == "load_weights"]
    assert len(gen_pushes) == 1 + 3  # the probe at the start, then one sync per round


def test_probe_catches_an_engine_that_stopped_receiving_weights(fake, folder, tmp_path, monkeypatch):
    from rlhflab.rollout.probe import EngineMismatchError
    from rlhflab.train.run import run

    real_push = VLLMGenerator._push

    def push_once(self):  # the first push works, later ones are lost
        if self.pushes == 0:
            return real_push(self)
        self.stale, self.pushes = False, self.pushes + 1

    monkeypatch.setattr(VLLMGenerator, "_push", push_once)
    with pytest.raises(EngineMismatchError, match="not sampling from the model being trained"):
        run(grpo_config(folder, tmp_path, generation={"vllm": {"probe_tol": 1e-4}}))


def test_without_vllm_the_cli_exits_2_with_the_install_hint(folder, tmp_path, monkeypatch, capsys):
    from rlhflab.cli import main

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, even where it is installed
    cfg = grpo_config(folder, tmp_path)
    path = tmp_path / "c.yaml"
    from rlhflab.config import dump_config

    dump_config(cfg, path)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "vllm cannot be imported" in err and "pip install 'rlhflab[vllm]' on a CUDA machine" in err


def test_without_a_gpu_the_run_says_so(folder, tmp_path, monkeypatch):
    from rlhflab.train.run import run

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    with patch.dict(os.environ), pytest.raises(UserError, match="needs a CUDA GPU, but this run trains on cpu"):
        run(grpo_config(folder, tmp_path))


def test_importing_rlhflab_does_not_import_vllm():
    import subprocess

    code = ("import sys, rlhflab, rlhflab.rollout, rlhflab.algorithms.policy_gradient, rlhflab.rollout.factory; "
            "assert 'vllm' not in sys.modules, 'vllm imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("over, match", [
    ({"top_p": 0.9}, "top_p: 1.0 and top_k: 0"),
    ({"top_k": 20}, "top_p: 1.0 and top_k: 0"),
    ({"vllm": {"mode": "separate"}}, "not supported yet"),
    ({"vllm": {"gpu_memory_utilization": 1.5}}, "gpu_memory_utilization"),
    ({"vllm": {"sleep_level": 3}}, "sleep_level"),
])
def test_config_rejects_unsupported_vllm_settings(folder, tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        grpo_config(folder, tmp_path, generation=over)


def test_the_example_config_is_valid(monkeypatch):
    from rlhflab.config import load_config

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # the example names its data relative to the repository root
    cfg = load_config(root / "examples" / "grpo_vllm.yaml")
    assert cfg.algo.generation.backend == "vllm" and cfg.algo.engine_is_cap == 2.0
