"""AUROC as the normalized Mann-Whitney U statistic: closed-form small cases, ties as 1/2, the
limits (perfect separation 1, reversed 0, identical 0.5), and equality with the pairwise definition."""

import pytest
import torch

from rlhflab.eval.stats import auroc, midranks


def pairwise_auroc(pos, neg):
    """The definition: mean over all (positive, negative) pairs of 1[p > n] + 1/2 1[p = n]."""
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def test_midranks_share_tied_ranks():
    # sorted: 5 -> rank 1; the two 7s occupy ranks 2 and 3 -> 2.5 each; 9 -> 4
    assert midranks(torch.tensor([7.0, 5.0, 9.0, 7.0])).tolist() == [2.5, 1.0, 4.0, 2.5]


@pytest.mark.parametrize("pos,neg,want", [
    ([1.0, 2.0, 3.0], [0.0], 1.0),                 # every positive above the negative
    ([0.0], [1.0, 2.0, 3.0], 0.0),                 # every positive below
    ([2.0, 2.0], [2.0, 2.0, 2.0], 0.5),            # identical scores: all ties
    ([1.0, 3.0], [2.0, 0.0], 0.75),                # 1>2 no, 1>0, 3>2, 3>0: 3 of 4 pairs
    ([1.0, 2.0], [1.0, 0.0], 0.875),               # 1=1 tie (1/2), 1>0, 2>1, 2>0: 3.5 of 4
    ([0.5], [0.5, 0.5, 1.0], 1.0 / 3.0),           # two ties (1/2 each), one loss: 1 of 3
])
def test_closed_form_cases(pos, neg, want):
    assert auroc(torch.tensor(pos), torch.tensor(neg)) == pytest.approx(want, abs=1e-12)
    assert pairwise_auroc(pos, neg) == pytest.approx(want, abs=1e-12)


def test_equals_the_pairwise_definition_with_many_ties():
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 6, (37,), generator=g).double()  # few distinct values: many ties
    neg = torch.randint(0, 5, (23,), generator=g).double()
    assert auroc(pos, neg) == pytest.approx(pairwise_auroc(pos.tolist(), neg.tolist()), abs=1e-12)
    cont = torch.randn(50, generator=g), torch.randn(40, generator=g) + 0.7
    assert auroc(*cont) == pytest.approx(pairwise_auroc(cont[0].tolist(), cont[1].tolist()), abs=1e-12)


def test_swapping_classes_gives_one_minus_and_shifts_do_not_matter():
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(30, generator=g), torch.randn(20, generator=g)
    assert auroc(pos, neg) + auroc(neg, pos) == pytest.approx(1.0, abs=1e-12)
    assert auroc(pos * 3 + 5, neg * 3 + 5) == pytest.approx(auroc(pos, neg), abs=1e-12)  # rank-based


def test_accepts_lists_and_float32():
    assert auroc([3.0, 4.0], torch.tensor([1.0], dtype=torch.float32)) == 1.0


@pytest.mark.parametrize("pos,neg", [([], [1.0]), ([1.0], []), ([float("nan")], [1.0]), ([1.0], [float("inf")])])
def test_rejects_empty_or_non_finite(pos, neg):
    with pytest.raises(ValueError):
        auroc(torch.tensor(pos), torch.tensor(neg))
