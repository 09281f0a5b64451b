"""The single-process parts of multi-process training: sharding rules, the identity collectives of
one process, the batch plan for a launched world size, and the zero-weight padding of uneven steps."""

from __future__ import annotations

import pytest
import torch

from rlhflab.errors import ConfigError
from rlhflab.train.distributed import SINGLE, DistContext, launched_world_size


@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (7, 2), (8, 4), (10, 3), (5, 8)])
def test_blocks_cover_every_item_once_in_order(n, world):
    blocks = [DistContext(rank=r, world_size=world).block(n) for r in range(world)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    for (lo, hi), (lo2, _) in zip(blocks, blocks[1:]):
        assert hi == lo2 and hi >= lo
    sizes = [hi - lo for lo, hi in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_strided_shares_partition_the_micro_batches():
    items = list(range(7))
    shares = [DistContext(rank=r, world_size=3).strided(items) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]


def test_one_process_collectives_are_the_identity():
    t = torch.tensor([1.0, 2.0])
    assert SINGLE.all_reduce(t) is t and t.tolist() == [1.0, 2.0]
    assert SINGLE.sum_floats([3.0, 4.0]) == [3.0, 4.0]
    assert SINGLE.all_gather_object({"a": 1}) == [{"a": 1}]
    assert SINGLE.broadcast_object("x") == "x"
    assert SINGLE.agree(True) and not SINGLE.agree(False)
    assert not SINGLE.enabled and SINGLE.is_main
    with SINGLE.phase("rollout", 3):
        assert SINGLE.phase_name == "rollout" and SINGLE.phase_step == 3
    assert SINGLE.phase_name == "start"


def test_world_size_comes_from_the_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_world_size() == 4


def _grpo_cfg(micro: int, batch: int = 4):
    from rlhflab.config import config_from_dict

    return config_from_dict({"algorithm": "grpo", "data": {"train": "x.jsonl"}, "batch_size": batch, "micro_batch_size": micro,
                             "grpo": {"rewards": [{"type": "math"}], "generation": {"num_generations": 4}}})


def test_online_plan_needs_a_micro_batch_for_every_process(monkeypatch):
    from rlhflab.algorithms import get_algorithm

    monkeypatch.setenv("WORLD_SIZE", "4")
    plan = get_algorithm(_grpo_cfg(4)).batch_plan()  # 16 sequences = 4 processes x 1 x 4
    assert (plan.world_size, plan.accumulation) == (4, 1)
    with pytest.raises(ConfigError, match="micro_batch_size <= 4"):
        get_algorithm(_grpo_cfg(8)).batch_plan()
    ragged = get_algorithm(_grpo_cfg(3)).batch_plan()  # 16 = 6 micro-batches of up to 3: 2 per rank, some padded
    assert "4 process(es) x 2 micro-batch(es)" in ragged.describe()


def test_offline_plan_counts_the_world_size(monkeypatch):
    from rlhflab.algorithms import get_algorithm
    from rlhflab.config import config_from_dict

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = config_from_dict({"algorithm": "sft", "data": {"train": "x.jsonl"}, "batch_size": 6, "micro_batch_size": 2})
    with pytest.raises(ConfigError, match="micro_batch_size 2 x world size 2 = 4"):
        get_algorithm(cfg).batch_plan()


def test_uneven_steps_pad_with_zero_weight_micro_batches():
    from rlhflab.train.loop import Loop

    loop = Loop.__new__(Loop)
    for rank, expected, weights in [(0, ["a", "c", "e"], [1.0, 1.0, 1.0]), (1, ["b", "d", "a"], [1.0, 1.0, 0.0])]:
        loop.dist = DistContext(rank=rank, world_size=2)
        got, w = loop._share(["a", "b", "c", "d", "e"])
        assert got == expected and w == weights


def test_vllm_with_fsdp_is_refused_at_config_time():
    from rlhflab.config import load_config

    with pytest.raises(ConfigError, match="backend vllm with distributed.strategy fsdp is not supported"):
        load_config("examples/grpo_vllm.yaml", ["distributed.strategy=fsdp"])


def test_self_rewarding_refuses_a_multi_process_launch(monkeypatch, tmp_path):
    from rlhflab.config import config_from_dict
    from rlhflab.errors import UserError
    from rlhflab.train.run import run

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = config_from_dict({"algorithm": "self_rewarding", "data": {"train": str(tmp_path / "p.jsonl")},
                            "output_dir": str(tmp_path / "run")})
    with pytest.raises(UserError, match="self_rewarding runs in one process"):
        run(cfg)
