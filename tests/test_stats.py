"""Statistics over seeds: paired differences, Welch intervals, power, seeds for a margin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from study.aggregate import head_correlation
from study.stats import (
    detectable_difference,
    mean_ci,
    paired_diff,
    seeds_for_margin,
    t975,
)


def test_paired_difference_by_hand():
    a = [2.0, 3.0, 5.0]
    b = [1.0, 1.0, 2.0]
    # differences 1, 2, 3: mean 2, sd 1, half-width t_{0.975,2} / sqrt(3) = 4.3027 / 1.7321
    out = paired_diff(a, b)
    assert out["diff"] == pytest.approx(2.0)
    assert out["sd"] == pytest.approx(1.0)
    assert out["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert out["n"] == 3
    # t = 2 / (1 / sqrt 3) = 3.4641 on 2 df: two-sided p = 0.07418
    assert out["p"] == pytest.approx(0.074180, abs=1e-5)


def test_paired_difference_matches_scipy_and_drops_incomplete_pairs():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=7), rng.normal(size=7)
    ref = sps.ttest_rel(a, b)
    out = paired_diff(a, b)
    assert out["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert out["diff"] - out["ci95"] == pytest.approx(ci.low, rel=1e-10)
    assert out["diff"] + out["ci95"] == pytest.approx(ci.high, rel=1e-10)
    a2, b2 = np.append(a, np.nan), np.append(b, 1.0)
    assert paired_diff(a2, b2)["n"] == 7 and paired_diff(a2, b2)["p"] == pytest.approx(ref.pvalue)
    with pytest.raises(ValueError, match="1-D"):
        paired_diff([1.0, 2.0], [1.0])


def test_t_quantiles_and_mean_ci():
    assert t975(2) == pytest.approx(4.302653, rel=1e-6)
    assert t975(1000) == pytest.approx(1.962339, rel=1e-6)
    m, ci, n = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert (m, n) == (2.0, 3) and ci == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_detectable_difference_has_the_stated_power():
    sd, n = 0.5, 5
    delta = detectable_difference(sd, n)
    # the power at delta, simulated: a paired t-test on n draws of N(delta, sd) rejects ~80%
    rng = np.random.default_rng(0)
    d = rng.normal(delta, sd, size=(20000, n))
    p = sps.ttest_1samp(d, 0.0, axis=1).pvalue
    assert (p < 0.05).mean() == pytest.approx(0.8, abs=0.015)
    assert detectable_difference(sd, 10) < delta  # more seeds, smaller detectable effects
    assert detectable_difference(0.0, 5) == 0.0 and math.isnan(detectable_difference(sd, 1))


def test_seeds_for_margin_is_the_first_n_whose_interval_fits():
    sd, margin = 0.3, 0.2
    n = seeds_for_margin(sd, margin)
    assert t975(n - 1) * sd / math.sqrt(n) < margin <= t975(n - 2) * sd / math.sqrt(n - 1)
    # by hand: n = 11: 2.2281 * 0.3 / sqrt(11) = 0.2015 > 0.2; n = 12: 2.2010 * 0.3 / sqrt(12) = 0.1906
    assert n == 12
    assert seeds_for_margin(0.01, 0.2) == 2


def test_head_correlation_on_a_constructed_case():
    x = torch.tensor([0.0, 1.0, 2.0, 4.0])
    heads = torch.stack([x, 2 * x + 1, -x])  # pairs: +1, -1, -1
    assert head_correlation(heads) == pytest.approx(-1 / 3)
    assert head_correlation(torch.stack([x, x])) == pytest.approx(1.0)
    assert math.isnan(head_correlation(x[None]))
    rng = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 20000, generator=rng)
    assert abs(head_correlation(noise)) < 0.03  # independent heads: about zero
