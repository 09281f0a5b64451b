"""`rlhflab ensemble train | calibrate | score` end to end on the tiny model, the exit-code-2 paths
(found before any model loads), and whether the spread separates held-out responses from random
token strings.

Why the separation test gives each member its own randomly initialized base model (`--models`):
with one shared tiny base, members that differ only in seed (head initialization and data order)
learn nearly the same function and extrapolate alike; measured over 11 data/base seeds (3
members, 60 or 150 steps), the spread AUROC of random token strings against held-out responses
was 0.35-0.90 (at 150 steps mean 0.70 with offsets, 0.63 without): no reliable separation. This
is the known limit of ensembles fine-tuned from one shared initialization (Gleave & Irving 2022,
arXiv 2203.07472; Eisenstein et al. 2023, arXiv 2312.09244). With independently initialized
bases (the classical deep ensemble) and training to held-out accuracy 1.0 (120 steps), it was
0.77-0.90 over 6 seeds (mean 0.84); the seeds below are the first of those 6 (0.84). With 3
saturated members a unanimous side on a random string (about 1 in 4) looks as certain as a
held-out response, which caps the AUROC. docs/rewards.md, "Ensembles and uncertainty", has the
SmolLM2 measurement (shared pretrained base, LoRA).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from conftest import pref_rows, tiny_config_dict, write_jsonl
from rlhflab.cli import main


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "4000")


@pytest.fixture
def no_model_load(monkeypatch):
    """Every user error must be reported before a model is built."""
    from rlhflab.algorithms.reward_model import RewardModel

    def boom(self, *args, **kwargs):
        raise AssertionError("RewardModel.load_model was called before the bad input was reported")

    monkeypatch.setattr(RewardModel, "load_model", boom)


def write_cfg(tmp_path: Path, tiny_dir: Path, train: Path, **over) -> Path:
    base = {"algorithm": "reward_model", "max_steps": 2, "batch_size": 4, "micro_batch_size": 4,
            "data": {"train": str(train), "max_length": 64, "eval_fraction": 0.25}}
    cfg = tiny_config_dict(tiny_dir, tmp_path / "ens", **{**base, **over})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_user_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in stderr:\n{err}"


# --------------------------------------------------------------------------- the three commands


def test_train_calibrate_score_two_members(tmp_path, tiny_dir, capsys):
    train = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(16))
    rc, _, err = cli(capsys, "ensemble", "train", str(write_cfg(tmp_path, tiny_dir, train)), "--members", "2",
                     "max_steps=3")
    assert rc == 0, err
    assert "member 1/2" in err and "member 2/2" in err
    out = tmp_path / "ens"
    ens = json.loads((out / "ensemble.json").read_text())
    assert ens["members"] == ["member_0/final", "member_1/final"] and ens["seeds"] == [0, 1]
    assert ens["heldout"] == ["heldout.jsonl"] and ens["vary"] == "seed"
    held = (out / "heldout.jsonl").read_text().splitlines()
    assert len(held) == 4 and len((out / "train.jsonl").read_text().splitlines()) == 12  # 25% of 16 held out once
    for i in range(2):
        member = yaml.safe_load((out / f"member_{i}" / "config.yaml").read_text())
        assert member["seed"] == i and member["max_steps"] == 3
        assert member["data"]["train"] == str(out / "train.jsonl") and member["data"]["eval"] == str(out / "heldout.jsonl")
        assert member["data"]["eval_fraction"] == 0.0
        assert (out / f"member_{i}" / "final" / "model.safetensors").is_file()

    rc, _, err = cli(capsys, "ensemble", "calibrate", "--ensemble", str(out / "ensemble.json"), "--quantile", "0.5")
    assert rc == 0, err
    cal = json.loads((out / "ensemble.json").read_text())["calibration"]
    assert cal["spread"]["n"] == 8 and len(cal["offsets"]) == 2 and cal["quantile"] == 0.5
    assert cal["threshold"] == pytest.approx(cal["spread"]["median"])

    ood = write_jsonl(tmp_path / "rand.jsonl", [{"prompt": "say something", "completion": "qzx vvk " * k} for k in (1, 2, 3)])
    scores = tmp_path / "scores.jsonl"
    rc, stdout, err = cli(capsys, "ensemble", "score", "--ensemble", str(out / "ensemble.json"), "--data",
                          str(out / "heldout.jsonl"), "--ood", str(ood), "--out", str(scores), "--uncertainty-coef", "1")
    assert rc == 0, err
    summary = json.loads(stdout)
    data, oset = summary["sets"]
    assert (data["n"], oset["n"]) == (8, 3) and 0.0 <= oset["auroc"] <= 1.0 and "auroc" not in data
    assert data["flag_rate"] == pytest.approx(0.5)  # the threshold is the median of these very spreads
    assert "AUROC vs data" in err and "flag rate" in err
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == 11 and rows[0]["response"] == "chosen" and rows[1]["response"] == "rejected"
    for r in rows:
        members = r["members"]
        mean = sum(m - b for m, b in zip(members, cal["offsets"])) / 2
        assert r["mean"] == pytest.approx(mean, abs=1e-5)
        assert r["std"] == pytest.approx(abs(members[0] - cal["offsets"][0] - members[1] + cal["offsets"][1]) / 2 ** 0.5,
                                         abs=1e-5)
        assert r["reward"] == pytest.approx(r["mean"] - r["std"], abs=1e-5)
        assert r["ood"] == (r["std"] > summary["threshold"])

    rc, _, err = cli(capsys, "ensemble", "score", "--ensemble", str(out / "ensemble.json"), "--data",
                     str(out / "heldout.jsonl"), "--out", str(scores))
    assert_user_error(rc, err, "exists", "--overwrite")


def test_bootstrap_and_split_write_member_data(tmp_path, tiny_dir, capsys):
    train = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(12))
    cfg = write_cfg(tmp_path, tiny_dir, train, data={"train": str(train), "max_length": 64})  # no held-out split
    rc, _, err = cli(capsys, "ensemble", "train", str(cfg), "--vary", "split", "--members", "3", "max_steps=1")
    assert rc == 0, err
    out = tmp_path / "ens"
    shards = [[json.loads(x) for x in (out / f"member_{i}" / "train.jsonl").read_text().splitlines()] for i in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert sorted(json.dumps(r) for s in shards for r in s) == sorted(json.dumps(r) for r in pref_rows(12))
    ens = json.loads((out / "ensemble.json").read_text())
    assert ens["heldout"] is None and ens["train"] == [f"member_{i}/train.jsonl" for i in range(3)]
    rc, _, err = cli(capsys, "ensemble", "calibrate", "--ensemble", str(out / "ensemble.json"))
    assert_user_error(rc, err, "no held-out split", "--data")

    rc, _, err = cli(capsys, "ensemble", "train", str(cfg), "--members", "2", "--vary", "bootstrap", "max_steps=1",
                     "overwrite=true")
    assert rc == 0, err
    boot = [(out / f"member_{i}" / "train.jsonl").read_text().splitlines() for i in range(2)]
    assert [len(b) for b in boot] == [12, 12] and boot[0] != boot[1]


# --------------------------------------------------------------------------- exit code 2, before any model loads


@pytest.mark.parametrize("args,needles", [
    (["--members", "1"], ["--members must be at least 2"]),
    (["--members", "2", "algorithm=sft"], ["must be reward_model, not sft"]),
    (["--members", "2", "optim.lrr=1"], ["unknown config key 'optim.lrr'", "Did you mean 'lr'"]),
    (["--members", "2", "--models", "a"], ["--models gives 1 models for --members 2"]),
    (["--members", "2", "--models", "nowhere1", "nowhere2"], ["model 'nowhere1'"]),
    (["--members", "20", "--vary", "split"], ["--vary split needs at least one row per member: 12 rows for 20"]),
])
def test_train_user_errors(tmp_path, tiny_dir, capsys, no_model_load, args, needles):
    train = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(16))
    rc, _, err = cli(capsys, "ensemble", "train", str(write_cfg(tmp_path, tiny_dir, train)), *args)
    assert_user_error(rc, err, *needles)
    assert not (tmp_path / "ens").exists()


def test_train_bad_row_and_missing_config(tmp_path, tiny_dir, capsys, no_model_load):
    rows = pref_rows(16)
    del rows[5]["rejected"]
    train = write_jsonl(tmp_path / "prefs.jsonl", rows)
    rc, _, err = cli(capsys, "ensemble", "train", str(write_cfg(tmp_path, tiny_dir, train)), "--members", "2")
    assert_user_error(rc, err, str(train), "row 6", "field 'rejected'")
    rc, _, err = cli(capsys, "ensemble", "train", str(tmp_path / "none.yaml"), "--members", "2")
    assert_user_error(rc, err, "config file not found")


def test_train_refuses_an_existing_run(tmp_path, tiny_dir, capsys, no_model_load):
    train = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(16))
    (tmp_path / "ens" / "member_1" / "final").mkdir(parents=True)
    rc, _, err = cli(capsys, "ensemble", "train", str(write_cfg(tmp_path, tiny_dir, train)), "--members", "2")
    assert_user_error(rc, err, "member_1' already holds a run", "overwrite=true")


def test_calibrate_and_score_user_errors(tmp_path, capsys, no_model_load):
    rc, _, err = cli(capsys, "ensemble", "calibrate", "--ensemble", str(tmp_path / "e.json"), "--data", "x.jsonl")
    assert_user_error(rc, err, "ensemble file not found")
    for m in ("a", "b"):
        (tmp_path / m).mkdir()
    ens = tmp_path / "e.json"
    ens.write_text(json.dumps({"members": ["a", "b"]}))
    rc, _, err = cli(capsys, "ensemble", "calibrate", "--ensemble", str(ens), "--data", "x.jsonl", "--quantile", "0")
    assert_user_error(rc, err, "--quantile must be in (0, 1]")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": ""}])
    rc, _, err = cli(capsys, "ensemble", "calibrate", "--ensemble", str(ens), "--data", str(bad))
    assert_user_error(rc, err, str(bad), "row 2", "field 'completion'")
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "p", "completion": "c"}])
    rc, _, err = cli(capsys, "ensemble", "score", "--ensemble", str(ens), "--data", str(good), "--ood", str(bad))
    assert_user_error(rc, err, str(bad), "row 2")
    rc, _, err = cli(capsys, "ensemble", "score", "--ensemble", str(ens), "--data", str(good), "--threshold", "-1")
    assert_user_error(rc, err, "--threshold must be >= 0")


# --------------------------------------------------------------------------- the spread separates


def random_token_rows(tokenizer, n: int, seed: int) -> list[dict]:
    """Uniformly random token ids of the tiny byte-level tokenizer (ids 0-2 are its special tokens),
    5 to 20 of them, decoded (invalid UTF-8 decodes to U+FFFD)."""
    rng = random.Random(seed)
    return [{"prompt": "say something",
             "completion": tokenizer.decode([rng.randint(3, len(tokenizer) - 1) for _ in range(rng.randint(5, 20))])}
            for _ in range(n)]


def test_spread_separates_heldout_from_random_tokens(tmp_path, capsys):
    """3 members, each from its own random tiny base (see the module docstring), 120 steps on 200
    synthetic pairs; offsets and threshold calibrated on 30 held-out pairs, tested on 30 others
    against 80 random token strings answering the same prompt: AUROC of the spread > 0.75 (this
    seed: 0.84; 0.77-0.90 over 6 seeds, so not a lucky pick) and more flags on the random strings."""
    from rlhflab.testing import tiny_model_dir, tiny_tokenizer

    tok = tiny_tokenizer()
    bases = [str(tiny_model_dir(tmp_path / f"base{i}", tok, seed=i)) for i in range(3)]
    train = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(200, seed=0))
    cfg = write_cfg(tmp_path, Path(bases[0]), train, max_steps=120, batch_size=16, micro_batch_size=16,
                    optim={"lr": 3.0e-3, "schedule": "cosine"}, data={"train": str(train), "max_length": 64})
    rc, _, err = cli(capsys, "ensemble", "train", str(cfg), "--members", "3", "--models", *bases)
    assert rc == 0, err
    held = pref_rows(60, seed=1000)
    calib, test = write_jsonl(tmp_path / "calib.jsonl", held[:30]), write_jsonl(tmp_path / "test.jsonl", held[30:])
    rand = write_jsonl(tmp_path / "rand.jsonl", random_token_rows(tok, 80, seed=0))
    ens = str(tmp_path / "ens" / "ensemble.json")
    assert cli(capsys, "ensemble", "calibrate", "--ensemble", ens, "--data", str(calib))[0] == 0
    rc, stdout, err = cli(capsys, "ensemble", "score", "--ensemble", ens, "--data", str(test), "--ood", str(rand))
    assert rc == 0, err
    data, ood = json.loads(stdout)["sets"]
    print(f"spread AUROC {ood['auroc']:.3f}; flag rate held-out {data['flag_rate']:.1%}, random {ood['flag_rate']:.1%}")
    assert ood["auroc"] > 0.75, (data, ood)
    assert ood["flag_rate"] > data["flag_rate"]
