import math

import pytest

from rlhflab.errors import ConfigError
from rlhflab.train.loop import Sampler
from rlhflab.train.plan import BatchPlan
from rlhflab.train.schedule import lr_at


def test_plan_valid():
    p = BatchPlan.build(8, 2)
    assert p.accumulation == 4 and "8 examples/step" in p.describe()


def test_plan_not_divisible_names_nearest_values():
    with pytest.raises(ConfigError) as e:
        BatchPlan.build(10, 4)
    msg = str(e.value)
    assert "batch_size 10 is not a multiple of micro_batch_size 4" in msg
    assert "8 or 12" in msg and "{1, 2, 5, 10}" in msg


def test_plan_zero_accumulation_rejected():
    with pytest.raises(ConfigError, match="zero gradient-accumulation steps.*Nearest valid batch_size: 8"):
        BatchPlan.build(4, 8)


def test_plan_world_size():
    with pytest.raises(ConfigError, match=r"micro_batch_size 2 x world size 3 = 6.*6 or 12"):
        BatchPlan.build(8, 2, world_size=3)
    assert BatchPlan.build(12, 2, world_size=3).accumulation == 2


def test_schedules():
    kw = dict(lr=1.0, max_steps=10, warmup_steps=2, min_lr_ratio=0.0)
    assert lr_at(0, schedule="cosine", **kw) == 0.5
    assert lr_at(1, schedule="cosine", **kw) == 1.0
    assert lr_at(2, schedule="cosine", **kw) == 1.0
    assert lr_at(6, schedule="cosine", **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(6, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_at(9, schedule="constant", **kw) == 1.0
    assert lr_at(10, schedule="linear", lr=1.0, max_steps=10, warmup_steps=0, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_sampler_is_a_pure_function_of_seed_and_step():
    a, b = Sampler(10, 4, seed=3), Sampler(10, 4, seed=3)
    seq = [a.indices(s) for s in range(5)]
    assert [b.indices(s) for s in reversed(range(5))][::-1] == seq
    flat = [i for s in seq for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert Sampler(10, 4, seed=4).indices(0) != seq[0] or Sampler(10, 4, seed=5).indices(0) != seq[0]
