"""Curve reading (Gao et al.'s forms, peak and fall, matched KL) and best-of-n bookkeeping, on
hand-made tables whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from study.aggregate import aggregate
from study.analysis import fit_gao, gao_curve, peak_and_fall, run_summaries, value_at_kl
from study.bon import bon_expected
from study.bon_run import bon_curves, bon_ns, variant_scores


@pytest.mark.parametrize(("form", "alpha", "beta"), [("rl", 1.3, 0.4), ("bon", 0.9, 0.2)])
def test_fit_gao_recovers_the_parameters_of_its_own_curve(form, alpha, beta):
    d = np.linspace(0.1, 5.0, 30)
    a, b = fit_gao(d, gao_curve(d, alpha, beta, form), form)
    assert a == pytest.approx(alpha, abs=1e-9) and b == pytest.approx(beta, abs=1e-9)


def test_gao_forms_by_hand():
    assert gao_curve(np.array([math.e]), 2.0, 1.0, "rl")[0] == pytest.approx(math.e * (2.0 - 1.0))
    assert gao_curve(np.array([0.0]), 2.0, 1.0, "rl")[0] == 0.0
    assert gao_curve(np.array([3.0]), 2.0, 0.5, "bon")[0] == pytest.approx(3.0 * (2.0 - 1.5))
    with pytest.raises(ValueError, match="form"):
        fit_gao(np.ones(3), np.ones(3), "ppo")


def _run(gold, proxy, kl):
    return pd.DataFrame(
        {
            "variant": "v",
            "seed": 0,
            "step": range(len(gold)),
            "kl": kl,
            "proxy": proxy,
            "gold": gold,
        }
    )


def test_peak_and_fall_counts_a_fall_only_while_the_proxy_rises():
    # gold 1 -> 3 -> 2: half of the gain of 2 is lost; proxy keeps rising
    run = _run([1.0, 3.0, 2.0], [0.0, 1.0, 2.0], [0.0, 4.0, 9.0])
    s = peak_and_fall(run, min_loss=0.25)
    assert s["gain_lost"] == pytest.approx(0.5) and s["kl_peak"] == 4.0 and s["overoptimised"]
    # the same fall with a falling proxy is not overoptimisation of the proxy
    assert not peak_and_fall(_run([1.0, 3.0, 2.0], [0.0, 2.0, 1.0], [0.0, 4.0, 9.0]))[
        "overoptimised"
    ]
    # a fall of a fifth of the gain is below the threshold
    assert not peak_and_fall(_run([1.0, 3.0, 2.6], [0, 1, 2], [0, 4, 9]), 0.25)["overoptimised"]


def test_value_at_kl_interpolates_the_first_crossing_and_leaves_unreached_levels_empty():
    run = _run([1.0, 3.0, 2.0, 5.0], [0, 1, 2, 3], [0.0, 4.0, 8.0, 2.0])
    a, b, c = value_at_kl(run, [2.0, 6.0, 10.0])
    assert a == pytest.approx(2.0)  # halfway from (0, 1) to (4, 3), not the later kl=2 point
    assert b == pytest.approx(2.5)
    assert math.isnan(c)


def test_run_summaries_names_a_missing_column():
    with pytest.raises(KeyError, match="proxy"):
        run_summaries(_run([1.0], [0.0], [0.0]).drop(columns="proxy"), [1.0])


def test_bon_ns_are_powers_of_two_ending_at_n():
    assert bon_ns(16) == [1, 2, 4, 8, 16]
    assert bon_ns(12) == [1, 2, 4, 8, 12]


def test_bon_curves_use_the_variants_aggregate_of_z_scored_heads():
    rng = np.random.default_rng(0)
    p, n, k = 3, 6, 2
    samples = pd.DataFrame(
        {
            "prompt_id": np.repeat(np.arange(p), n),
            "sample_id": np.tile(np.arange(n), p),
            "gold": rng.normal(size=p * n),
            "gold_fluency": rng.normal(size=p * n),
        }
    )
    heads = rng.normal(size=(k, p * n)) * [[1.0], [5.0]] + [[0.0], [3.0]]
    scores = pd.DataFrame({"head0": heads[0], "head1": heads[1]}).assign(
        family="multihead", seed=0, prompt_id=samples["prompt_id"], sample_id=samples["sample_id"]
    )
    z = (heads - heads.mean(1, keepdims=True)) / heads.std(1, ddof=1, keepdims=True)
    expected_proxy = aggregate(torch.as_tensor(z), "min").numpy()
    got = variant_scores(scores, "multihead_min", 0, "sft_zscore", 0.5)
    np.testing.assert_allclose(got, expected_proxy, rtol=1e-6)
    curves = bon_curves(samples, scores, ["multihead_min", "gold"], [0], [1, 4], "sft_zscore", 0.5)
    row = curves[(curves["variant"] == "multihead_min") & (curves["n"] == 4)].iloc[0]
    gold = samples["gold"].to_numpy().reshape(p, n)
    by_hand = np.mean([bon_expected(expected_proxy.reshape(p, n)[i], gold[i], 4) for i in range(p)])
    assert row["gold"] == pytest.approx(by_hand)
    # best-of-n under gold itself can only do better than under any proxy
    ceiling = curves[(curves["variant"] == "gold") & (curves["n"] == 4)]["gold"].item()
    assert ceiling >= row["gold"] - 1e-12
    with pytest.raises(KeyError, match="ensemble seed 0"):
        variant_scores(scores, "ensemble_min", 0, "none", 0.5)


def test_policy_pairs_by_hand():
    from study.analysis import policy_calibration, policy_pairs

    samples = pd.DataFrame(
        {"prompt": ["p", "q", "p", "q", "p", "q"], "step": [0, 0, 5, 5, 10, 10],
         "gold": [1.0, 2.0, 1.5, 2.0, 0.5, 3.0],
         "head0": [0.0, 0.0, 1.0, 2.0, 3.0, 4.0], "head1": [0.0, 1.0, -1.0, 0.0, 1.0, 5.0]}
    )  # fmt: skip
    r_later, r_sft, flipped = policy_pairs(samples)
    # (p, 5) vs (p, 0): gold up; (q, 5) ties (dropped); (p, 10) down; (q, 10) up
    assert r_later.tolist() == [[1.0, 3.0, 4.0], [-1.0, 1.0, 5.0]]
    assert r_sft.tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert flipped.tolist() == [False, True, False]
    bins, ece = policy_calibration(samples, n_bins=2, uwo_lambda=0.5)
    assert set(bins["target"]) == {"clean"} and bins["count"].sum() == 3 * 2 * 3
    assert set(ece["target"]) == {"clean"} and set(ece["method"]) == {"min", "mean", "max"}
    # min margins: -1 (p5), 1 (p10), 4 (q10): sigma = .269, .731, .982; outcomes 1, 0, 1 (and
    # their mirror images); bin [0.5, 1]: probs .731 .982 .731 with outcomes 0 1 0 -> gap
    # |1/3 - .815|; bin [0, 0.5) is its mirror image, with the same gap
    p = 1 / (1 + np.exp(-np.array([-1.0, 1.0, 4.0])))
    hi = np.array([p[1], p[2], 1 - p[0]])
    expected = 2 * (3 / 6) * abs(1 / 3 - hi.mean())
    assert ece.set_index("method").loc["min", "ece"] == pytest.approx(expected)
    with pytest.raises(KeyError, match="head0"):
        policy_pairs(samples.drop(columns=["head0", "head1"]))


def test_candidate_head_diversity_on_a_constructed_case():
    from study.bon_run import candidate_head_diversity

    # one prompt, 32 candidates: two heads agree on the 30 low ones, disagree on the two that
    # the minimum ranks on top (a shared x, then +/- d on the top two)
    x = np.arange(32, dtype=float)
    h0, h1 = x.copy(), x.copy()
    h0[30:], h1[30:] = [100.0, 101.0], [101.0, 100.0]
    rows = pd.DataFrame({"family": "multihead", "seed": 0, "prompt_id": 0, "sample_id": range(32),
                         "head0": h0, "head1": h1})  # fmt: skip
    single = rows.assign(family="single", head1=np.nan)
    d = candidate_head_diversity(pd.concat([rows, single]), 1 / 16, "none", 0.5)
    assert list(d["family"]) == ["multihead", "multihead"]  # one head: nothing to compare
    all_, top = d.set_index("subset").loc["all"], d.set_index("subset").loc["top"]
    assert all_["head_corr"] > 0.99 and top["head_corr"] == pytest.approx(-1.0)
    assert top["head_std"] == pytest.approx(0.5) and all_["head_std"] == pytest.approx(1 / 32)
