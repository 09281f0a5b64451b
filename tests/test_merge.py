"""`rlhflab merge --average`: weighted averages of tiny models, exact limit cases, and every refusal.

The arithmetic checked here: merged[k] = sum_i w_i * model_i[k] / sum_i w_i for every tensor k,
e.g. weights [1, 2, 3] -> [1/6, 2/6, 3/6]; weights [1, 0] -> the first model bit for bit; a model
averaged with itself -> itself bit for bit (0.5 x + 0.5 x = x exactly in float64, then cast).
Every user error returns exit code 2 with one `error:` line and leaves the output folder absent.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import rlhflab
from rlhflab.cli import main
from rlhflab.merge import average_models
from rlhflab.testing import tiny_causal_lm, tiny_tokenizer

# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Rich wraps (and folds long paths) at 80 columns when not on a terminal; keep lines whole."""
    monkeypatch.setenv("COLUMNS", "4000")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def save_model(folder: Path, tok, seed: int = 0, model=None, **save_kwargs) -> Path:
    """A tiny causal LM (vocab = len(tok)) and its tokenizer as a safetensors Hugging Face folder."""
    model = model if model is not None else tiny_causal_lm(vocab_size=len(tok), seed=seed)
    model.save_pretrained(folder, safe_serialization=True, **save_kwargs)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, tok) -> dict[str, Path]:
    """a, b, c: three seeds; b_sharded: b saved in several shards."""
    root = tmp_path_factory.mktemp("models")
    found = {name: save_model(root / name, tok, seed) for name, seed in (("a", 1), ("b", 2), ("c", 3))}
    found["b_sharded"] = save_model(root / "b_sharded", tok, 2, max_shard_size="20KB")
    return found


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a single-file or sharded safetensors folder."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        out: dict[str, torch.Tensor] = {}
        for fname in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            out.update(load_file(str(folder / fname)))
        return out
    return load_file(str(folder / "model.safetensors"))


def weighted_mean(folders: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """The reference: sum_i (w_i / sum w) * tensor_i in float64, cast to the input dtype."""
    total = sum(weights)
    states = [weights_of(f) for f in folders]
    return {k: sum((w / total) * s[k].double() for w, s in zip(weights, states)).to(states[0][k].dtype)
            for k in states[0]}


def merge(capsys, *argv: str) -> tuple[int, str]:
    """`rlhflab merge ARGV` -> (exit code, its stderr alone: what the test's setup printed is dropped)."""
    capsys.readouterr()
    rc = main(["merge", *argv])
    return rc, capsys.readouterr().err


def assert_user_error(rc: int, err: str, *needles: str) -> None:
    """Exit 2, one message starting with 'error: ', no traceback, every needle in it."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("error: "), err
    assert err.count("error: ") == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in stderr:\n{err}"


def assert_nothing_written(out: Path, before: set[str]) -> None:
    """`out` is absent and its parent holds exactly what it held before (no temporary folder)."""
    assert not out.exists(), f"{out} was written by a merge that failed"
    after = {p.name for p in out.parent.iterdir()} if out.parent.exists() else set()
    assert after == before, f"left behind: {sorted(after - before)}"


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


# --------------------------------------------------------------------------- the arithmetic


@pytest.mark.parametrize("names,weights", [
    (["a", "b"], None),                  # [1/2, 1/2]
    (["a", "b"], [0.2, 0.8]),
    (["a", "b", "c"], None),             # [1/3, 1/3, 1/3]
    (["a", "b", "c"], [1.0, 2.0, 3.0]),  # [1/6, 2/6, 3/6]
])
def test_every_tensor_is_the_weighted_mean(tmp_path, models, names, weights):
    folders = [models[n] for n in names]
    out = average_models([str(f) for f in folders], str(tmp_path / "merged"), weights=weights,
                         console=_silent())
    got, want = weights_of(out), weighted_mean(folders, weights or [1.0] * len(folders))
    assert set(got) == set(want) == set(weights_of(folders[0]))
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)
    # the mean is not trivially one of the inputs
    assert not torch.equal(got["lm_head.weight"], weights_of(folders[0])["lm_head.weight"])


def test_merged_folder_loads_and_its_logits_equal_the_averaged_state_dict(tmp_path, models, tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = average_models([str(models["a"]), str(models["b"])], str(tmp_path / "merged"), weights=[1, 3],
                         console=_silent())
    sd_a, sd_b = tiny_causal_lm(vocab_size=len(tok), seed=1).state_dict(), tiny_causal_lm(vocab_size=len(tok), seed=2).state_dict()
    by_hand = tiny_causal_lm(vocab_size=len(tok), seed=0)
    by_hand.load_state_dict({k: (0.25 * sd_a[k].double() + 0.75 * sd_b[k].double()).to(sd_a[k].dtype) for k in sd_a})
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert next(merged.parameters()).dtype == torch.float32
    ids = AutoTokenizer.from_pretrained(str(out))(["spell 42", "the cat sat"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = by_hand(**ids).logits
        got = merged(**ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_a_model_averaged_with_itself_is_returned_exactly(tmp_path, models):
    out = average_models([str(models["a"])] * 3, str(tmp_path / "merged"), console=_silent())
    got, want = weights_of(out), weights_of(models["a"])
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_weights_one_zero_return_the_first_model_exactly(tmp_path, models):
    out = average_models([str(models["a"]), str(models["b"])], str(tmp_path / "merged"), weights=["1", "0"],
                         console=_silent())
    got, want = weights_of(out), weights_of(models["a"])
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_model_with_weight_zero_is_not_read(tmp_path, models, tok):
    """0 * NaN would be NaN: a zero-weight model must be skipped, not multiplied by 0."""
    broken = tmp_path / "nan"
    shutil.copytree(models["b"], broken)
    state = weights_of(broken)
    state["lm_head.weight"][0, 0] = float("nan")
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    out = average_models([str(models["a"]), str(broken)], str(tmp_path / "merged"), weights=[1, 0], console=_silent())
    assert torch.equal(weights_of(out)["lm_head.weight"], weights_of(models["a"])["lm_head.weight"])


def test_sharded_first_model_gives_the_same_shards(tmp_path, models):
    sharded = models["b_sharded"]
    out = average_models([str(sharded), str(models["c"])], str(tmp_path / "merged"), console=_silent())
    index_in = json.loads((sharded / "model.safetensors.index.json").read_text())
    index_out = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index_in["weight_map"].values())) > 1
    assert index_out["weight_map"] == index_in["weight_map"]
    assert index_out["metadata"]["total_size"] == index_in["metadata"]["total_size"]
    assert not (out / "model.safetensors").exists()
    got, want = weights_of(out), weighted_mean([models["b"], models["c"]], [1, 1])
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_sharded_second_model_gives_one_file_like_the_first(tmp_path, models):
    from transformers import AutoModelForCausalLM

    out = average_models([str(models["c"]), str(models["b_sharded"])], str(tmp_path / "merged"), console=_silent())
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    got, want = weights_of(out), weighted_mean([models["c"], models["b"]], [1, 1])
    assert all(torch.equal(got[k], want[k]) for k in want)
    AutoModelForCausalLM.from_pretrained(str(out))


def test_equal_integer_buffers_are_copied(tmp_path, models):
    folders = []
    for name in ("a", "b"):
        folder = shutil.copytree(models[name], tmp_path / name)
        state = weights_of(folder)
        state["extra.counts"] = torch.tensor([3, 1, 4], dtype=torch.int64)
        state["extra.flags"] = torch.tensor([True, False])
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        folders.append(str(folder))
    got = weights_of(average_models(folders, str(tmp_path / "merged"), console=_silent()))
    assert torch.equal(got["extra.counts"], torch.tensor([3, 1, 4])) and got["extra.counts"].dtype == torch.int64
    assert torch.equal(got["extra.flags"], torch.tensor([True, False]))


def test_bfloat16_models_stay_bfloat16(tmp_path, tok):
    folders = [save_model(tmp_path / f"m{s}", tok, model=tiny_causal_lm(vocab_size=len(tok), seed=s).to(torch.bfloat16))
               for s in (1, 2)]
    got = weights_of(average_models([str(f) for f in folders], str(tmp_path / "merged"), console=_silent()))
    want = weighted_mean(folders, [1, 1])
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]) for k in want)


# --------------------------------------------------------------------------- the command line


def test_cli_writes_the_model_merge_json_and_tokenizer(tmp_path, models, capsys):
    out = tmp_path / "merged"
    rc, err = merge(capsys, "--average", str(models["a"]), str(models["b"]), "--out", str(out), "--weights", "1", "3")
    assert rc == 0, err
    assert "error" not in err and "Traceback" not in err
    assert "0.250000" in err and "0.750000" in err
    record = json.loads((out / "merge.json").read_text())
    assert record["weights"] == [0.25, 0.75]
    assert [i["path"] for i in record["inputs"]] == [str(models["a"]), str(models["b"])]
    assert record["rlhflab_version"] == rlhflab.__version__
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text()) == json.loads((models["a"] / "config.json").read_text())
    assert listing(tmp_path) == {"merged"}, "a temporary folder was left behind"


def test_cli_progress_bar_for_big_models(tmp_path, models, capsys, monkeypatch):
    import rlhflab.merge

    monkeypatch.setattr(rlhflab.merge, "PROGRESS_MIN_BYTES", 0)
    rc, err = merge(capsys, "--average", str(models["a"]), str(models["b"]), "--out", str(tmp_path / "m"))
    assert rc == 0, err
    n = len(weights_of(models["a"]))
    assert f"{n}/{n}" in err


def test_overwrite_replaces_a_previous_merge(tmp_path, models, capsys):
    out = tmp_path / "merged"
    assert merge(capsys, "--average", str(models["a"]), str(models["b"]), "--out", str(out))[0] == 0
    rc, err = merge(capsys, "--average", str(models["a"]), str(models["a"]), "--out", str(out), "--overwrite")
    assert rc == 0, err
    got, want = weights_of(out), weights_of(models["a"])
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert listing(tmp_path) == {"merged"}


# --------------------------------------------------------------------------- user errors: exit 2, nothing written


def test_mismatched_shapes_name_the_tensor_and_both_folders(tmp_path, models, tok, capsys):
    wider = save_model(tmp_path / "wider", tok, model=tiny_causal_lm(vocab_size=len(tok) + 5, seed=1))
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(models["a"]), str(wider), "--out", str(out))
    assert_user_error(rc, err, "tensor 'lm_head.weight'", "shape", f"[{len(tok)}, 32]", f"[{len(tok) + 5}, 32]",
                      str(models["a"]), str(wider))
    assert_nothing_written(out, before)


def test_missing_tensor_names_it(tmp_path, models, tok, capsys):
    deeper = save_model(tmp_path / "deeper", tok, model=tiny_causal_lm(vocab_size=len(tok), layers=3, seed=1))
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(models["a"]), str(deeper), "--out", str(out))
    assert_user_error(rc, err, "tensor 'model.layers.2.", f"is in {deeper} but not in {models['a']}")
    assert_nothing_written(out, before)


def test_mismatched_dtype(tmp_path, models, tok, capsys):
    half = save_model(tmp_path / "bf16", tok, model=tiny_causal_lm(vocab_size=len(tok), seed=1).to(torch.bfloat16))
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(models["a"]), str(half), "--out", str(out))
    assert_user_error(rc, err, "dtype F32", "BF16", str(half))
    assert_nothing_written(out, before)


def test_different_model_type(tmp_path, models, tok, capsys):
    """Mistral with these sizes has exactly Llama's tensor names and shapes: only config.json tells them apart."""
    from transformers import MistralConfig, MistralForCausalLM

    ref = tiny_causal_lm(vocab_size=len(tok)).config
    config = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2, head_dim=ref.head_dim,
                           tie_word_embeddings=False)
    mistral = save_model(tmp_path / "mistral", tok, model=MistralForCausalLM(config))
    assert {k: v.shape for k, v in weights_of(mistral).items()} == {k: v.shape for k, v in weights_of(models["a"]).items()}
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(models["a"]), str(mistral), "--out", str(out))
    assert_user_error(rc, err, "model_type differs", "'llama'", "'mistral'", str(models["a"]), str(mistral))
    assert_nothing_written(out, before)


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path, models, capsys, monkeypatch):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(models["b"] / "config.json", folder / "config.json")
    torch.save(weights_of(models["b"]), folder / "pytorch_model.bin")

    def boom(*args, **kwargs):
        raise AssertionError("a pickle file was loaded")

    monkeypatch.setattr(torch, "load", boom)
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(models["a"]), str(folder), "--out", str(out))
    assert_user_error(rc, err, str(folder), "only pickle weights", "pytorch_model.bin", "never unpickles",
                      "safetensors")
    assert_nothing_written(out, before)


def test_missing_folder(tmp_path, models, capsys):
    missing = tmp_path / "no-such-model"
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(models["a"]), str(missing), "--out", str(out))
    assert_user_error(rc, err, str(missing), "no such folder")
    assert_nothing_written(out, before)


def test_folder_without_weights(tmp_path, models, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(models["a"]), str(empty), "--out", str(out))
    assert_user_error(rc, err, str(empty), "no model weights found", "model.safetensors")
    assert_nothing_written(out, before)


def test_lora_adapter_folder_is_refused(tmp_path, models, tok, capsys):
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "adapter"
    get_peft_model(tiny_causal_lm(vocab_size=len(tok)), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(models["a"]), str(adapter), "--out", str(out))
    assert_user_error(rc, err, str(adapter), "LoRA adapter", "final/")
    assert_nothing_written(out, before)


def test_differing_integer_tensor_is_named(tmp_path, models, capsys):
    folders = []
    for name, last in (("a", 3), ("b", 4)):
        folder = shutil.copytree(models[name], tmp_path / name)
        state = weights_of(folder)
        state["extra.counts"] = torch.tensor([1, 2, last])
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        folders.append(str(folder))
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", *folders, "--out", str(out))
    assert_user_error(rc, err, "integer tensor 'extra.counts' differs", "cannot be averaged")
    assert_nothing_written(out, before)


@pytest.mark.parametrize("weights,needles", [
    (["1"], ["got 1 weight(s) for 2 models", "one per model"]),
    (["1", "2", "3"], ["got 3 weight(s) for 2 models"]),
    (["1", "-1"], ["finite number >= 0", "-1"]),
    (["1", "nan"], ["finite number >= 0", "nan"]),
    (["inf", "1"], ["finite number >= 0", "inf"]),
    (["0", "0"], ["all weights are zero"]),
    (["1", "abc"], ["'abc' is not a number"]),
], ids=["too-few", "too-many", "negative", "nan", "inf", "all-zero", "not-a-number"])
def test_bad_weights(tmp_path, models, capsys, weights, needles):
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(models["a"]), str(models["b"]), "--out", str(out), "--weights", *weights)
    assert_user_error(rc, err, "--weights", *needles)
    assert_nothing_written(out, before)


def test_a_single_model_is_refused(tmp_path, models, capsys):
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(models["a"]), "--out", str(out))
    assert_user_error(rc, err, "at least 2 models", "got 1")
    assert_nothing_written(out, before)


def test_existing_out_is_refused_and_kept(tmp_path, models, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, err = merge(capsys, "--average", str(models["a"]), str(models["b"]), "--out", str(out))
    assert_user_error(rc, err, str(out), "already exists", "--overwrite")
    assert listing(out) == {"keep.txt"} and listing(tmp_path) == {"merged"}


def test_overwrite_refuses_to_replace_a_folder_that_is_not_a_model(tmp_path, models, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, err = merge(capsys, "--average", str(models["a"]), str(models["b"]), "--out", str(out), "--overwrite")
    assert_user_error(rc, err, str(out), "not a model folder", "refusing to replace it")
    assert listing(out) == {"notes.txt"} and listing(tmp_path) == {"merged"}


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_is_an_input(tmp_path, tok, capsys, overwrite):
    a, b = save_model(tmp_path / "a", tok, 1), save_model(tmp_path / "b", tok, 2)
    before_a, before_dir = weights_of(a), listing(tmp_path)
    rc, err = merge(capsys, "--average", str(a), str(b), "--out", str(a), *(["--overwrite"] if overwrite else []))
    assert_user_error(rc, err, f"--out '{a}' is the input {a}", "new folder")
    assert listing(tmp_path) == before_dir
    assert all(torch.equal(before_a[k], v) for k, v in weights_of(a).items())


def test_out_containing_an_input_is_refused(tmp_path, tok, capsys):
    a, b = save_model(tmp_path / "in" / "a", tok, 1), save_model(tmp_path / "in" / "b", tok, 2)
    rc, err = merge(capsys, "--average", str(a), str(b), "--out", str(tmp_path / "in"), "--overwrite")
    assert_user_error(rc, err, "contains the input")
    assert listing(tmp_path / "in") == {"a", "b"}


# --------------------------------------------------------------------------- run directories and checkpoints


def _run_config(tiny: Path, data: Path, out: Path, **over) -> dict:
    return {"algorithm": "sft", "model": str(tiny), "output_dir": str(out), "seed": 0, "max_steps": 2,
            "batch_size": 4, "micro_batch_size": 4, "optim": {"lr": 1.0e-2, "schedule": "constant"},
            "checkpoint_every": 1, "keep_checkpoints": 2, "tensorboard": False,
            "data": {"train": str(data), "max_length": 64}, **over}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tok) -> Path:
    """A real 2-step full fine-tuning SFT run on a tiny model, with checkpoints at steps 1 and 2."""
    from rich.console import Console

    from rlhflab.config import config_from_dict
    from rlhflab.train.run import run

    root = tmp_path_factory.mktemp("run")
    tiny = save_model(root / "tiny", tok, seed=5)
    rows = [{"prompt": f"spell {k}", "completion": " ".join("zero one two three".split()[: 1 + k % 4])} for k in range(8)]
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(config_from_dict(_run_config(tiny, data, root / "run")), Console(file=io.StringIO()))
    assert result.final_dir is not None
    return root / "run"


def test_run_directory_means_its_final_folder(tmp_path, trained_run):
    out = average_models([str(trained_run), str(trained_run / "final")], str(tmp_path / "m"), console=_silent())
    got, want = weights_of(out), weights_of(trained_run / "final")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_checkpoints_of_a_full_fine_tuning_run_are_averaged(tmp_path, trained_run):
    """The last checkpoint holds the same weights as final/ (both written after step 2), so
    averaging it with final/ returns final/ exactly; steps 1 and 2 average to their mean."""
    from transformers import AutoModelForCausalLM

    ckpts = trained_run / "checkpoints"
    last = average_models([str(ckpts / "step-000002"), str(trained_run / "final")], str(tmp_path / "last"),
                          console=_silent())
    final = weights_of(trained_run / "final")
    got = weights_of(last)
    assert set(got) == set(final) and all(torch.equal(got[k], final[k]) for k in final)

    both = average_models([str(ckpts / "step-000001"), str(ckpts / "step-000002")], str(tmp_path / "both"),
                          weights=[1, 3], console=_silent())
    one, two = load_file(str(ckpts / "step-000001" / "trainable.safetensors")), final
    got = weights_of(both)
    assert not torch.equal(one["lm_head.weight"], two["lm_head.weight"])
    for k in final:
        torch.testing.assert_close(got[k], (0.25 * one[k].double() + 0.75 * two[k].double()).float(), rtol=0, atol=1e-6)
    assert json.loads((both / "config.json").read_text())["dtype"] == "float32"
    assert [i["kind"] for i in json.loads((both / "merge.json").read_text())["inputs"]] == ["checkpoint", "checkpoint"]
    AutoModelForCausalLM.from_pretrained(str(both))
    assert (both / "tokenizer.json").is_file()


def _fake_checkpoint(run_dir: Path, model, cfg: dict) -> Path:
    """What the loop writes: rlhflab.train.checkpoint.save_checkpoint plus the run's config.yaml."""
    from rlhflab.train.checkpoint import save_checkpoint

    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    return save_checkpoint(run_dir / "checkpoints", 1, model, opt, {"max_steps": 1, "seed": 0}, keep=1)


def test_lora_checkpoint_is_refused(tmp_path, models, tok, capsys):
    from rlhflab.config import LoraConfig
    from rlhflab.models import load_causal_lm

    lora = LoraConfig(r=2, alpha=4)
    ckpt = _fake_checkpoint(tmp_path / "run", load_causal_lm(models["a"], lora=lora),
                            {"algorithm": "sft", "model": str(models["a"]), "lora": {"r": 2, "alpha": 4}})
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(models["a"]), str(ckpt), "--out", str(out))
    assert_user_error(rc, err, str(ckpt), "LoRA checkpoint", "only the adapter", "final/")
    assert_nothing_written(out, before)


def test_reward_model_checkpoint_is_refused(tmp_path, models, capsys):
    from rlhflab.models import load_scalar_model

    ckpt = _fake_checkpoint(tmp_path / "run", load_scalar_model(models["a"]),
                            {"algorithm": "reward_model", "model": str(models["a"]), "lora": None})
    out, before = tmp_path / "merged", listing(tmp_path)
    rc, err = merge(capsys, "--average", str(ckpt), str(ckpt), "--out", str(out))
    assert_user_error(rc, err, str(ckpt), "algorithm 'reward_model'", "does not hold the model", "final/")
    assert_nothing_written(out, before)


def test_incomplete_checkpoint_is_refused(tmp_path, models, capsys):
    ckpt = _fake_checkpoint(tmp_path / "run", tiny_causal_lm(vocab_size=300),
                            {"algorithm": "sft", "model": str(models["a"]), "lora": None})
    (ckpt / "state.json").unlink()
    rc, err = merge(capsys, "--average", str(models["a"]), str(ckpt), "--out", str(tmp_path / "merged"))
    assert_user_error(rc, err, str(ckpt), "incomplete checkpoint", "state.json")


def test_unfinished_run_points_to_its_checkpoints(tmp_path, models, capsys):
    run_dir = tmp_path / "run"
    _fake_checkpoint(run_dir, tiny_causal_lm(vocab_size=300), {"algorithm": "sft", "model": str(models["a"])})
    rc, err = merge(capsys, "--average", str(models["a"]), str(run_dir), "--out", str(tmp_path / "merged"))
    assert_user_error(rc, err, str(run_dir), "has no final/ folder", str(run_dir / "checkpoints" / "step-000001"))
    rc, err = merge(capsys, "--average", str(models["a"]), str(run_dir / "checkpoints"), "--out", str(tmp_path / "m"))
    assert_user_error(rc, err, "is a folder of checkpoints", "step-000001")


def _silent():
    from rich.console import Console

    return Console(file=io.StringIO())


def test_weights_are_normalized_to_sum_to_one():
    from rlhflab.merge import normalize_weights

    assert normalize_weights(None, 4) == [0.25] * 4
    w = normalize_weights(["1", "2", "3"], 3)
    assert w == [1 / 6, 2 / 6, 3 / 6] and math.isclose(sum(w), 1.0)
    assert normalize_weights([0, 2], 2) == [0.0, 1.0]


def test_streamed_safetensors_file_reads_back_exactly(tmp_path):
    """The streaming writer against safetensors' own reader: mixed dtypes, a scalar, an empty tensor."""
    from rlhflab.merge import read_header, write_safetensors

    tensors = {
        "a.f32": torch.randn(3, 5), "b.bf16": torch.randn(7).to(torch.bfloat16), "c.f16": torch.randn(2, 3).half(),
        "d.i64": torch.arange(5), "e.bool": torch.tensor([True, False, True]), "f.scalar": torch.tensor(2.5),
        "g.empty": torch.zeros(0, 4), "h.u8": torch.arange(9, dtype=torch.uint8), "i.f64": torch.randn(4).double(),
    }
    reference = tmp_path / "reference.safetensors"
    save_file(tensors, str(reference))
    infos, _ = read_header(reference)
    written = tmp_path / "streamed.safetensors"
    write_safetensors(written, infos, lambda name: tensors[name])
    back = load_file(str(written))
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    assert read_header(written)[0].keys() == infos.keys()
