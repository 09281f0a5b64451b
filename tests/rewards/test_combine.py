"""Weighted sum: normalization modes with hand-computed values, parts, single-member identity."""

import pytest
import torch

from rlhflab.errors import ConfigError
from rlhflab.rewards.base import Sample, Scorer, Scores
from rlhflab.rewards.combine import EPS, WeightedSum, normalize


class Fixed(Scorer):
    """Returns given values (and parts) whatever the samples."""

    def __init__(self, values, parts=None):
        self.values, self.parts, self.closed = values, parts or {}, False

    def score(self, samples):
        return Scores(torch.tensor(self.values), {k: torch.tensor(v) for k, v in self.parts.items()})

    def close(self):
        self.closed = True


def samples(groups):
    return [Sample([], str(i), group=g) for i, g in enumerate(groups)]


def test_single_member_identity_is_exact():
    vals = [0.1, -3.7, 1e-8, 12345.678]
    out = WeightedSum([("m", Fixed(vals), 1.0, "none")]).score(samples([0, 0, 1, 1]))
    assert torch.equal(out.values, torch.tensor(vals))
    assert torch.equal(out.parts["m"], torch.tensor(vals))


def test_batch_normalization():
    # x = [1, 2, 3, 6]: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5
    out = WeightedSum([("m", Fixed([1.0, 2.0, 3.0, 6.0]), 2.0, "batch")]).score(samples([0, 0, 1, 1]))
    std = 3.5 ** 0.5
    want = torch.tensor([2 * (v - 3) / (std + EPS) for v in (1.0, 2.0, 3.0, 6.0)])
    torch.testing.assert_close(out.values, want, atol=1e-6, rtol=1e-6)
    assert out.parts["m"].tolist() == [1.0, 2.0, 3.0, 6.0]  # raw, before normalization and weight


def test_group_normalization_and_constant_groups():
    # group 0: [1, 3] -> mean 2, std 1 -> [-1, 1]; group 1: [5, 5] constant -> [0, 0]; group 2: [4] -> [0]
    x = torch.tensor([1.0, 5.0, 3.0, 5.0, 4.0])
    groups = torch.tensor([0, 1, 0, 1, 2])
    got = normalize(x, "group", groups)
    torch.testing.assert_close(got, torch.tensor([-1 / (1 + EPS), 0.0, 1 / (1 + EPS), 0.0, 0.0]), atol=1e-7, rtol=0)
    assert normalize(torch.full((3,), 7.0), "batch", torch.zeros(3, dtype=torch.long)).tolist() == [0.0, 0.0, 0.0]


def test_sum_of_members_and_prefixed_parts():
    a = Fixed([1.0, 0.0, 1.0, 0.0], parts={"fmt": [1.0, 1.0, 0.0, 0.0]})
    b = Fixed([10.0, 20.0, 30.0, 40.0])
    ws = WeightedSum([("rules", a, 0.5, "none"), ("rm", b, -1.0, "group")])
    out = ws.score(samples([0, 0, 1, 1]))
    # rm by group: [10, 20] -> [-1, 1]/(1+eps); [30, 40] -> same; total = 0.5 a - that
    z = 1 / (1 + EPS)
    torch.testing.assert_close(out.values, torch.tensor([0.5 + z, -z, 0.5 + z, -z]), atol=1e-6, rtol=0)
    assert set(out.parts) == {"rules", "rules/fmt", "rm"}
    assert out.parts["rm"].tolist() == [10.0, 20.0, 30.0, 40.0]
    ws.close()
    assert a.closed and b.closed


def test_errors():
    with pytest.raises(ConfigError, match="unique"):
        WeightedSum([("x", Fixed([1.0]), 1.0, "none"), ("x", Fixed([1.0]), 1.0, "none")])
    with pytest.raises(ConfigError, match="normalize"):
        WeightedSum([("x", Fixed([1.0]), 1.0, "zscore")])
    with pytest.raises(ValueError, match="returned \\(2,\\) scores for 3 samples"):
        WeightedSum([("x", Fixed([1.0, 2.0]), 1.0, "none")]).score(samples([0, 0, 0]))


def test_recombine_of_gathered_halves_equals_scoring_the_whole_round():
    """Two ranks score halves of a round; the gathered raw parts recombine to the whole round's
    values (batch normalization over all samples, group normalization within groups)."""
    raw_a, raw_b = [1.0, 2.0, 3.0, 6.0, 0.0, 4.0], [10.0, 20.0, 30.0, 40.0, 50.0, 70.0]
    groups = [0, 0, 1, 1, 2, 2]

    def ws(a, b):
        return WeightedSum([("a", Fixed(a), 2.0, "batch"), ("b", Fixed(b), -1.0, "group")])

    whole = ws(raw_a, raw_b).score(samples(groups))
    first, second = ws(raw_a[:4], raw_b[:4]).score(samples(groups[:4])), ws(raw_a[4:], raw_b[4:]).score(samples(groups[4:]))
    assert not torch.allclose(torch.cat([first.values, second.values]), whole.values)  # halves alone differ
    gathered = Scores(torch.cat([first.values, second.values]), {k: torch.cat([first.parts[k], second.parts[k]]) for k in first.parts})
    again = ws(raw_a, raw_b).recombine(gathered, torch.tensor(groups))
    assert torch.equal(again.values, whole.values)
    assert again.parts["a"].tolist() == raw_a
    # without a batch-normalized member the gathered values already are the round's
    plain = WeightedSum([("b", Fixed(raw_b), 1.0, "group")])
    kept = Scores(torch.ones(6), {"b": torch.tensor(raw_b)})
    assert plain.recombine(kept, torch.tensor(groups)) is kept
