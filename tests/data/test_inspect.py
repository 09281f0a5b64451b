import subprocess
import sys

from rlhflab.config import DataConfig
from rlhflab.data.inspect import inspect_file, run_inspect

U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731


def test_inspect_without_tokenizer(jsonl):
    rows = [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "longer q", "chosen": "fine", "rejected": "worse"},
    ]
    res = inspect_file(str(jsonl(rows, name="prefs.jsonl")))
    text = res.plain
    assert "format: pairwise" in text and "rows: 3, kept: 2" in text
    assert "dropped (chosen equals rejected): 1" in text
    assert "chars prompt: min 1, mean 4.5, p50 1, p95 8, max 8" in text
    assert "<user> q\n<assistant> ⟦good⟧" in text and "<assistant> ⟦bad⟧" in text


def test_inspect_with_tokenizer_shows_mask(jsonl, tok):
    p = jsonl([{"messages": [U("hi"), A("yo"), U("again"), A("ok")]}], name="chat.jsonl")
    res = inspect_file(str(p), tokenizer=tok, data_cfg=DataConfig(max_length=128))
    text = res.plain
    assert "format: messages" in text
    assert "tokens: kept 1, truncated 0, dropped 0" in text
    assert "<|im_start|>assistant\n⟦yo<|im_end|>⟧\n<|im_start|>user\nagain" in text
    assert text.rstrip().endswith("⟦ok<|im_end|>⟧")
    assert "[black on green]yo<|im_end|>[/]" in res.markup


def test_run_inspect_prints_with_rich(jsonl):
    from rich.console import Console

    p = jsonl([{"prompt": "2+2?", "answer": "4"}], name="prompts.jsonl")
    console = Console(record=True, width=120)
    run_inspect(str(p), "auto", None, console)
    out = console.export_text()
    assert "format: prompt" in out and "prompts.jsonl" in out and "<user> 2+2?" in out


def test_import_is_light():
    code = "import sys, rlhflab.data; bad = [m for m in ('datasets', 'transformers', 'rich') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
