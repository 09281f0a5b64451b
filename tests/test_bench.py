"""The benchmark suite's own arithmetic (bench/ is not part of the package): model FLOPs in closed
form, the amortized precompute step, the ratios and tables rendered from a results JSON, the
argument checks, and the GPU branch's settings (parse-checked here; no GPU in the tests)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import flops  # noqa: E402
from flops import ModelShape, causal_pairs  # noqa: E402

SHAPE = ModelShape(layers=2, d_model=3, d_attn=4, vocab=7, body=10, lora_dims=11)


def test_forward_train_generate_closed_form():
    # forward(T=5, C=2) = 2*10*5 + 2*7*3*2 + 4*2*4*(5*6/2) = 100 + 84 + 480 = 664
    assert SHAPE.forward(5, 2) == 664
    assert SHAPE.train(5, 2) == 3 * 664
    # LoRA r=2: 4*10*5 + 6*2*11*5 + 4*21*2 + 12*2*4*15 = 200 + 660 + 168 + 1440 = 2468
    assert SHAPE.train(5, 2, lora_r=2) == 2468
    # generate(P=3, n=2): 4 tokens fed: 2*10*4 + 2*21*2 + 4*2*4*(4*5/2) = 80 + 84 + 320 = 484
    assert SHAPE.generate(3, 2) == 484
    assert SHAPE.generate(3, 0) == 0
    # with no attention and no head, training is the 6 N per token of the Chinchilla convention
    bare = ModelShape(layers=2, d_model=3, d_attn=0, vocab=0, body=1000, lora_dims=0)
    assert bare.train(17, 5) == 6 * 1000 * 17


def test_generate_equals_step_by_step_decoding():
    """Prefill P tokens (the head once, at the last position), then one token per decode step."""
    shape = ModelShape(layers=3, d_model=8, d_attn=12, vocab=50, body=999, lora_dims=0)
    P, n = 6, 5
    head = 2 * shape.vocab * shape.d_model
    total = 2 * shape.body * P + 4 * shape.layers * shape.d_attn * sum(range(1, P + 1)) + head
    for j in range(1, n):  # token j is fed back at position P + j and attends to P + j keys
        total += 2 * shape.body + 4 * shape.layers * shape.d_attn * (P + j) + head
    assert shape.generate(P, n) == total


def test_mean_causal_pairs_is_not_square_of_mean():
    assert causal_pairs([1, 2, 3]) == pytest.approx((1 + 3 + 6) / 3, abs=1e-12)
    assert SHAPE.forward(2, 0, TT=causal_pairs([1, 3])) == 2 * 10 * 2 + 4 * 2 * 4 * (1 + 6) / 2


def test_model_shape_counts_gqa_projections(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=True).save_pretrained(tmp_path)
    s = flops.model_shape(tmp_path)
    # per layer: q 64x64, k and v 64x32 each (2 kv heads of 16), o 64x64, MLP 3 x 64x96
    assert s.body == 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 96) == 61440
    assert (s.layers, s.d_model, s.d_attn, s.vocab) == (2, 64, 64, 100)
    assert s.lora_dims == 2 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 96) + (96 + 64))


def test_measure_peak_small_cpu():
    import torch

    threads = torch.get_num_threads()
    try:
        peak = flops.measure_peak("cpu", 1, (32, 64), 1)
    finally:
        torch.set_num_threads(threads)  # measure_peak sets the count for its own process
    assert peak["dtype"] == "float32" and peak["flops_per_s"] > 0 and peak["best_size"] in (32, 64)
    assert peak["flops_per_s"] == max(peak["by_size"].values())


def test_mfu_uses_the_higher_peak():
    import run

    peak = run.best_peak({"flops_per_s": 50e9}, {"flops_per_s": 80e9})
    assert peak["flops_per_s"] == 80e9 and peak["measurements_flops_per_s"] == [50e9, 80e9]
    rows = [{"model_flops_per_step": 40e9, "effective_step_s": 2.0}, {"effective_step_s": 1.0}]
    run.apply_peak(rows, peak)
    assert rows[0]["mfu"] == pytest.approx(40e9 / 2.0 / 80e9, abs=1e-15) and "mfu" not in rows[1]
    assert run.best_peak(None, None) is None


def test_dpo_amortized_step():
    from suites import dpo

    row = {"framework": "trl", "step_s_median": 1.0, "detail": {"precompute_s": 8.0, "precompute_rows": 64}}
    dpo.amortize(row, steps=4, batch=8, n_rows=64)
    # 4 steps x 8 pairs = 32 of 64 rows used: 1.0 + 8.0 * (32 / 64) / 4 = 2.0
    assert row["amortized_step_s"] == pytest.approx(2.0, abs=1e-12) and row["effective_step_s"] == row["amortized_step_s"]
    online = {"framework": "rlhflab", "step_s_median": 1.0, "detail": {"summary": {"reference_mode": "online"}}}
    assert "amortized_step_s" not in dpo.amortize(online, steps=4, batch=8, n_rows=64)


def _row(framework, variant, step, rss, suite="dpo", **extra):
    return {"suite": suite, "model": "tiny-llama", "framework": framework, "variant": variant,
            "effective_step_s": step, "step_s_median": step, "steps_per_s": 1 / step, "peak_rss_mib": rss,
            "wall_s": 10.0, "exit_code": 0, "detail": {"losses": extra.pop("losses", [])}, **extra}


def _results():
    rows = [
        _row("rlhflab", "precompute", 2.0, 1000, losses=[0.70, 0.69], mfu=0.1),
        _row("rlhflab", "online", 4.0, 1100),
        _row("trl", "fp32", 8.0, 2000, losses=[0.70, 0.68]),
        _row("trl", "fp32_precompute", 5.0, 2500, mfu=0.04),
        _row("rlhflab", "HFGenerator", 1.0, 900, suite="generate", tokens_per_s=300.0, mean_completion_length=30.0,
             call_s_median=1.0, call_s_min=0.9),
        _row("hf-generate", "model.generate", 2.0, 900, suite="generate", tokens_per_s=100.0,
             mean_completion_length=31.0, call_s_median=2.0, call_s_min=1.9),
    ]
    machine = {"device": "cpu", "command": "x", "cpu": "cpu", "cores": 2, "threads": 2, "python": "3", "torch": "t",
               "transformers": "t", "date": "d", "git_commit": "abc"}
    return {"machine": machine, "rows": rows, "peak": None, "suites": {}}


def test_summary_ratios_match_the_right_trl_variant():
    import report

    s = {e["rlhflab"]: e for e in report.training_summary(_results())}
    pre, online = s["precompute"], s["online"]
    assert pre["trl"] == "fp32_precompute" and pre["ratio"] == pytest.approx(5.0 / 2.0)
    assert pre["memory_ratio"] == pytest.approx(1000 / 2500) and pre["rlhflab_mfu"] == 0.1 and pre["trl_mfu"] == 0.04
    assert online["trl"] == "fp32" and online["ratio"] == pytest.approx(8.0 / 4.0)
    assert online["best_trl"] == "fp32_precompute" and online["ratio_vs_best"] == pytest.approx(5.0 / 4.0)
    assert pre["max_loss_diff"] is None and online["max_loss_diff"] is None  # losses only on precompute / fp32
    gen = report.generation_summary(_results())
    assert gen[0]["ratio"] == pytest.approx(3.0)
    text = report.markdown(_results())
    assert "| dpo | tiny-llama | precompute | 0.5 | fp32_precompute | 0.2 | **2.50x** |" in text
    assert "| generate | tiny-llama | 300 | 100 | **3.00x** |" in text


def test_fill_doc_replaces_only_its_block():
    import report

    start, end = report.doc_markers("smoke")
    doc = f"intro\n{start}\nold figures\n{end}\noutro\n"
    out = report.fill_doc(doc, _results(), "smoke")
    assert out.startswith(f"intro\n{start}\n") and out.endswith(f"{end}\noutro\n") and "old figures" not in out
    assert "### Summary" in out and "# rlhflab benchmark suite" not in out  # a block: no title of its own
    assert report.fill_doc(out, _results(), "smoke") == out  # filling twice gives the same document
    with pytest.raises(ValueError, match="no 'results' block"):
        report.fill_doc(doc, _results(), "results")


def test_loss_diff_against_matching_variant():
    import report

    a = _row("rlhflab", "fp32", 1.0, 1, losses=[0.70, 0.69])
    b = _row("trl", "fp32", 1.0, 1, losses=[0.70, 0.68])
    assert report.max_loss_diff(a, b) == pytest.approx(0.01, abs=1e-12)


def test_argument_checks():
    import run

    with pytest.raises(SystemExit):
        run.parse_args(["--steps", "2", "--warmup", "2"])
    with pytest.raises(SystemExit):
        run.parse_args(["--micro-batch", "48"])  # 64 completions per GRPO step
    assert run.parse_args(["--models", "tiny-llama", "--steps", "3", "--warmup", "1"]).steps == 3


def test_gpu_branch_settings_and_every_module_parses():
    from common import Ctx

    gpu, cpu = Ctx(argparse.Namespace(), Path("."), "cuda"), Ctx(argparse.Namespace(), Path("."), "cpu")
    assert gpu.plain == "bf16" and gpu.trl_precision()["bf16"] and gpu.rlhflab_precision()["dtype"] == "bfloat16"
    assert cpu.plain == "fp32" and not cpu.trl_precision()["bf16"] and cpu.rlhflab_precision()["dtype"] == "float32"
    for name in ("run", "report", "gen_worker", "rlhflab_worker", "addition_reward", "trl_common", "trl_sft_worker",
                 "trl_rm_worker", "trl_dpo_worker", "trl_grpo_worker", "suites"):
        importlib.import_module(name)  # the TRL workers import trl only inside main()


def teardown_module():
    """Leave no bench module or path behind for other test files (their names are generic)."""
    sys.path.remove(str(BENCH))
    for name in [m for m, mod in sys.modules.items() if str(getattr(mod, "__file__", "") or "").startswith(str(BENCH))]:
        del sys.modules[name]
