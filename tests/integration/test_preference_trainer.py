"""The offline preference trainers on a tiny model: reference handling, masking, caching, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rich.console import Console

from conftest import pref_rows, unpaired_rows, write_jsonl
from rlhflab.algorithms import get_algorithm
from rlhflab.algorithms.base import TrainContext
from rlhflab.algorithms.dpo import falling_trend
from rlhflab.config import config_from_dict
from rlhflab.data import load_examples, tokenize_examples
from rlhflab.errors import ConfigError, DataError
from rlhflab.models import load_tokenizer
from rlhflab.train.run import run, seed_everything

QUIET = Console(quiet=True)


def _setup(cfg):
    """(algorithm, model, items) prepared exactly as `run` does."""
    algo = get_algorithm(cfg)
    tok = load_tokenizer(cfg.model)
    items, _ = tokenize_examples(load_examples(cfg.data.train, algo.data_kind, "auto").examples, tok, cfg.data)
    algo.setup(tok)
    seed_everything(cfg.seed)
    model = algo.load_model(cfg.model, torch.device("cpu"))
    algo.before_training(model, items, None, TrainContext(cfg.model, torch.device("cpu"), QUIET, cfg.micro_batch_size))
    return algo, model, items


def _loss_and_grads(cfg):
    algo, model, items = _setup(cfg)
    out = algo.loss(model, algo.collate(items[:8]))
    out.loss_sum.backward()
    return float(out.loss_sum.detach()), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, out.metrics


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_precomputed_reference_equals_online(make_cfg, tmp_path, lora):
    data = write_jsonl(tmp_path / "d.jsonl", pref_rows(16))
    results = [_loss_and_grads(make_cfg(algorithm="dpo", data={"train": str(data)}, lora=lora,
                                        dpo={"reference": mode})) for mode in ("precompute", "online")]
    (l1, g1, m1), (l2, g2, _) = results
    assert l1 == pytest.approx(l2, abs=1e-5)
    # before any update the policy is the reference: every pair's loss is log 2
    assert l1 == pytest.approx(8 * math.log(2), abs=1e-4)
    assert float(m1["reward/margin"]) == pytest.approx(0.0, abs=1e-4)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-5, rtol=1e-5, msg=name)


def test_reference_cache_is_reused_and_keyed_on_the_data(make_cfg, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", pref_rows(24))
    a = run(make_cfg(algorithm="dpo", data={"train": str(data)}, output_dir=str(tmp_path / "a")), QUIET)
    b = run(make_cfg(algorithm="dpo", data={"train": str(data)}, output_dir=str(tmp_path / "b")), QUIET)
    sa, sb = (json.loads((r.out_dir / "summary.json").read_text()) for r in (a, b))
    assert sa["reference_mode"] == "precompute" and sa["reference_train_cached"] is False
    assert sb["reference_train_cached"] is True
    strip = lambda h: [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    other = write_jsonl(tmp_path / "e.jsonl", pref_rows(24, seed=5))
    c = run(make_cfg(algorithm="dpo", data={"train": str(other)}, output_dir=str(tmp_path / "c")), QUIET)
    assert json.loads((c.out_dir / "summary.json").read_text())["reference_train_cached"] is False
    masked = run(make_cfg(algorithm="dpo", data={"train": str(data)}, output_dir=str(tmp_path / "m"),
                          dpo={"mask_format_tokens": True}), QUIET)
    assert json.loads((masked.out_dir / "summary.json").read_text())["reference_train_cached"] is False


def test_mask_format_tokens_drops_only_special_tokens(make_cfg, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", pref_rows(8))
    plain, _, items = _setup(make_cfg(algorithm="dpo", data={"train": str(data)}))
    masked = get_algorithm(make_cfg(algorithm="dpo", data={"train": str(data)}, dpo={"mask_format_tokens": True}))
    masked.setup(load_tokenizer(masked.cfg.model))
    a, b = plain.collate(items), masked.collate(items)
    for sa, sb in ((a.chosen, b.chosen), (a.rejected, b.rejected)):
        dropped = sa.loss_mask & ~sb.loss_mask
        assert not (sb.loss_mask & ~sa.loss_mask).any()
        assert set(sa.input_ids[dropped].tolist()) == {2}  # <|im_end|>, the end-of-turn token
        assert dropped.sum(1).tolist() == [1] * len(items)  # one end-of-turn per completion


def test_lora_dpo_learns_and_saves(make_cfg, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", pref_rows(64))
    held = write_jsonl(tmp_path / "e.jsonl", pref_rows(16, seed=1))
    res = run(make_cfg(algorithm="dpo", data={"train": str(train), "eval": str(held)}, max_steps=12,
                       lora={"r": 8, "alpha": 16}, optim={"lr": 5e-3}, dpo={"beta": 0.5}), QUIET)
    before, after = res.initial_eval, res.history[-1]
    assert before["eval/kl"] == pytest.approx(0.0, abs=1e-6)
    assert after["eval/reward/accuracy"] > 0.8 and after["eval/loss"] < before["eval/loss"] - 0.1
    assert after["eval/kl"] > 0
    assert (res.final_dir / "adapter" / "adapter_config.json").is_file()


def test_falling_chosen_logp_warning(make_cfg, tmp_path):
    assert falling_trend([-1.0, -1.05, -1.1, -1.2, -1.3], 0.1)
    assert not falling_trend([-1.0, -1.05, -1.0, -1.04, -1.02], 0.1)
    assert not falling_trend([-1.3, -1.2, -1.1, -1.0], 0.1)
    data = write_jsonl(tmp_path / "d.jsonl", pref_rows(8))
    algo = get_algorithm(make_cfg(algorithm="dpo", data={"train": str(data)}, dpo={"chosen_logp_warn_steps": 4}))
    hist = [{"logp/chosen_per_token": v} for v in (-1.0, -1.1, -1.2, -1.35)]
    assert algo.check_history(hist[:3]) == []
    (msg,) = algo.check_history(hist)
    assert "fell steadily" in msg and "dpop" in msg
    assert algo.check_history(hist + [{"logp/chosen_per_token": -1.5}]) == []  # once per run


def test_rpo_needs_rewards_in_every_row(make_cfg, tmp_path):
    rows = pref_rows(4)
    for r in rows[:2]:
        r.update(chosen_reward=1.0, rejected_reward=0.0)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as e:
        run(make_cfg(algorithm="dpo", data={"train": str(data)}, dpo={"loss": "rpo"}), QUIET)
    assert "row 3" in str(e.value) and "chosen_reward" in str(e.value)


@pytest.mark.parametrize("dpo,needle", [
    ({"loss": "dpoo"}, "Did you mean 'dpo'?"),
    ({"loss": "dpo", "gamma": 1.0}, "dpo.gamma is not a setting of dpo.loss ['dpo']; it applies to simpo"),
    ({"loss": "rpo", "distance": "l1"}, "distance"),
    ({"loss": "gpo", "f": "cubic"}, "cubic"),
    ({"loss": ["dpo", "sft"], "loss_weights": [1.0]}, "1 weights for 2 losses"),
    ({"loss": "tdpo", "reference": "precompute"}, "precompute cannot serve tdpo"),
    ({"loss": "robust_dpo", "label_smoothing": 0.5}, "robust_dpo"),
])
def test_dpo_config_errors(tmp_path, dpo, needle):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"algorithm": "dpo", "data": {"train": "x.jsonl"}, "dpo": dpo})
    assert needle in str(e.value)


def test_kto_npo_dro_move_the_policy_the_right_way(make_cfg, tmp_path):
    kto_data = write_jsonl(tmp_path / "kto.jsonl", unpaired_rows(64))
    res = run(make_cfg(algorithm="kto", data={"train": str(kto_data), "eval": str(kto_data)}, max_steps=10,
                       optim={"lr": 3e-3}), QUIET)
    ev = res.history[-1]
    assert ev["eval/reward"] is not None and ev["ref_point"] >= 0
    assert ev["eval/loss"] < res.initial_eval["eval/loss"]
    npo_rows = [r for r in unpaired_rows(64) if not r["label"]]
    npo_data = write_jsonl(tmp_path / "npo.jsonl", npo_rows)
    res = run(make_cfg(algorithm="npo", data={"train": str(npo_data), "eval": str(npo_data)}, max_steps=6,
                       output_dir=str(tmp_path / "npo"), optim={"lr": 3e-3}), QUIET)
    assert res.history[-1]["eval/log_ratio"] < res.initial_eval["eval/log_ratio"] - 1.0  # forgets the negatives
    with pytest.raises(DataError, match="retain_weight"):
        run(make_cfg(algorithm="npo", data={"train": str(kto_data)}, output_dir=str(tmp_path / "npo2")), QUIET)
    dro_data = write_jsonl(tmp_path / "dro.jsonl", unpaired_rows(64, scored=True))
    res = run(make_cfg(algorithm="dro", data={"train": str(dro_data), "eval": str(dro_data)}, max_steps=8,
                       output_dir=str(tmp_path / "dro"), optim={"lr": 3e-4}), QUIET)
    assert res.history[-1]["eval/value_loss"] < 0.7 * res.initial_eval["eval/value_loss"]  # L_DRO falls
    assert (res.final_dir / "value" / "config.json").is_file()
