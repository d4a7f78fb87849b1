"""The contract functions of DESIGN.md on hand-computed cases and independent references."""

import itertools
import math

import numpy as np
import pytest
import torch

from study.aggregate import aggregate
from study.bon import bon_expected, bon_kl
from study.rewards import bt_loss

R = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, -2.0]])  # (K=2, B=3)


def test_aggregate_by_hand():
    assert aggregate(R, "mean").tolist() == [2.0, 0.0, 0.0]
    assert aggregate(R, "min").tolist() == [1.0, 0.0, -2.0]
    assert aggregate(R, "max").tolist() == [3.0, 0.0, 2.0]
    # population variance: ((1-2)^2 + (3-2)^2) / 2 = 1; (0, 0) -> 0; ((2-0)^2 + (-2-0)^2) / 2 = 4
    assert aggregate(R, "uwo", uwo_lambda=0.5).tolist() == [1.5, 0.0, -2.0]


@pytest.mark.parametrize("method", ["mean", "min", "max", "uwo"])
def test_one_head_is_the_identity(method):
    r = torch.randn(1, 7)
    torch.testing.assert_close(aggregate(r, method), r[0])


def test_aggregate_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown aggregation method 'median'"):
        aggregate(R, "median")
    with pytest.raises(ValueError, match=r"shape \(K, B\)"):
        aggregate(torch.zeros(3), "mean")


def test_bt_loss_by_hand():
    z = torch.zeros(3, 4)
    assert bt_loss(z, z).item() == pytest.approx(math.log(2))
    rc, rr = torch.tensor([[2.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    expected = (-math.log(1 / (1 + math.exp(-2))) - math.log(1 / (1 + math.exp(1)))) / 2
    assert bt_loss(rc, rr).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        bt_loss(torch.zeros(2, 3), torch.zeros(3, 2))


def test_bon_kl_by_hand():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    with pytest.raises(ValueError):
        bon_kl(0)


def brute_force(proxy, gold, n):
    """Average, over every n-subset, of the gold of its highest-proxy member (last index on ties)."""
    picks = []
    for subset in itertools.combinations(range(len(proxy)), n):
        best = max(
            subset, key=lambda i: (proxy[i], np.argsort(proxy, kind="stable").tolist().index(i))
        )
        picks.append(gold[best])
    return float(np.mean(picks))


def test_bon_expected_by_hand_and_against_enumeration():
    proxy, gold = np.array([0.1, 0.5, 0.3]), np.array([1.0, 2.0, 3.0])
    assert bon_expected(proxy, gold, 1) == pytest.approx(2.0)  # n = 1: the mean
    assert bon_expected(proxy, gold, 3) == pytest.approx(2.0)  # n = N: gold of the proxy argmax
    # n = 2: subsets {0,1}->1, {0,2}->2, {1,2}->1 : gold (2 + 3 + 2) / 3
    assert bon_expected(proxy, gold, 2) == pytest.approx(7 / 3)
    rng = np.random.default_rng(0)
    p, g = rng.normal(size=9), rng.normal(size=9)
    for n in range(1, 10):
        assert bon_expected(p, g, n) == pytest.approx(brute_force(p, g, n))


def test_bon_expected_is_stable_for_large_n():
    rng = np.random.default_rng(1)
    p = rng.normal(size=4096)
    g = p + rng.normal(size=4096)
    vals = [bon_expected(p, g, n) for n in (1, 16, 256, 4096)]
    assert np.all(np.isfinite(vals)) and vals == sorted(vals)
    assert vals[-1] == pytest.approx(g[np.argmax(p)])


def test_bon_curve_by_hand():
    import numpy as np

    from study.bon import bon_curve, bon_kl

    proxy = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    gold = np.array([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    c = bon_curve(proxy, gold, [1, 3]).set_index("n")
    # n = 1: the mean gold (2 and 1); n = 3: the proxy-best sample (gold 1 and 1)
    assert c.loc[1, "gold"] == pytest.approx(1.5) and c.loc[3, "gold"] == pytest.approx(1.0)
    assert c.loc[3, "proxy"] == pytest.approx(2.0) and c.loc[3, "kl"] == bon_kl(3)
    assert c.loc[1, "gold_se"] == pytest.approx(np.std([2.0, 1.0], ddof=1) / np.sqrt(2))
