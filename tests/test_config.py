import pytest

from rlhflab.config import RunConfig, config_from_dict, dump_config, load_config
from rlhflab.errors import ConfigError


def test_overrides_and_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("algorithm: sft\ndata: {train: x.jsonl}\noptim:\n  lr: 1e-5\n")
    cfg = load_config(p, ["optim.lr=3e-4", "max_steps=7", "lora.r=4", "sft.packing=true"])
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.max_steps == 7 and cfg.lora.r == 4 and cfg.sft.packing is True
    assert cfg.algo is cfg.sft


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*Did you mean 'lr'"):
        load_config(None, ["data.train=x", "optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'max_step'.*'max_steps'"):
        load_config(None, ["data.train=x", "max_step=1"])


def test_unknown_algorithm_and_foreign_section():
    with pytest.raises(ConfigError, match="unknown algorithm 'stf'.*Did you mean 'sft'"):
        config_from_dict({"algorithm": "stf", "data": {"train": "x"}})
    with pytest.raises(ConfigError, match="'reward_model' section but algorithm is 'sft'"):
        config_from_dict({"algorithm": "sft", "data": {"train": "x"}, "reward_model": {"loss": "margin"}})


def test_bad_values():
    with pytest.raises(ConfigError, match="must be an integer"):
        config_from_dict({"data": {"train": "x"}, "max_steps": "ten"})
    with pytest.raises(ConfigError, match="must be one of truncate, drop, error"):
        config_from_dict({"data": {"train": "x", "truncation": "chop"}})
    with pytest.raises(ConfigError, match="data.train is required"):
        config_from_dict({})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_dump_roundtrip(tmp_path):
    cfg = config_from_dict({"algorithm": "reward_model", "data": {"train": "x"}, "lora": {"r": 2}})
    dump_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert isinstance(RunConfig().optim.betas, tuple)
