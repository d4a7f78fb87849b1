"""Reward-model evaluation on hand-computed cases: accuracy, diversity, reliability, ECE."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from study.config import ConfigError, load_params, with_override
from study.cost import relative_to_single
from study.rewards import bt_loss
from study.rm_eval import (
    accuracy_table,
    calibration,
    expected_calibration_error,
    head_diversity,
    reliability,
    rewards_frame,
    rewards_from_frame,
)
from tests.conftest import ROOT


def test_accuracy_per_head_and_aggregate_by_hand():
    # 2 heads, 4 pairs; pair 3's label was flipped (the rejected side is gold-better)
    r_c = torch.tensor([[1.0, 2.0, 0.0, 1.0], [3.0, 0.0, 1.0, 0.0]])
    r_r = torch.tensor([[0.0, 3.0, 0.0, 2.0], [1.0, 1.0, 2.0, 1.0]])
    flipped = np.array([False, False, False, True])
    acc = accuracy_table(r_c, r_r, flipped, methods=("min", "mean")).set_index("name")
    # head 0 margins +1, -1, 0 (tie: half), -1 -> noisy 1.5/4; clean flips pair 3: 2.5/4
    assert acc.loc["0", "acc_noisy"] == pytest.approx(1.5 / 4)
    assert acc.loc["0", "acc_clean"] == pytest.approx(2.5 / 4)
    # head 1 margins +2, -1, -1, -1 -> noisy 1/4, clean 2/4
    assert acc.loc["1", "acc_noisy"] == pytest.approx(0.25)
    assert acc.loc["1", "acc_clean"] == pytest.approx(0.5)
    # min: chosen mins 1, 0, 0, 0; rejected mins 0, 1, 0, 1 -> margins +1, -1, 0, -1
    assert acc.loc["min", "acc_noisy"] == pytest.approx(1.5 / 4)
    # mean: 2, 1, .5, .5 vs .5, 2, 1, 1.5 -> +, -, -, - ; clean: +, -, -, + -> 2/4
    assert acc.loc["mean", "acc_noisy"] == pytest.approx(0.25)
    assert acc.loc["mean", "acc_clean"] == pytest.approx(0.5)


def test_head_diversity_by_hand():
    r_c = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    r_r = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    d = head_diversity(r_c, r_r)
    # rewards over 6 responses: heads 0 and 1 identical (corr 1); head 2 vs 0: x=[1,2,3,0,0,0],
    # y=[3,2,1,0,0,0] -> corr = (sum xy - 6 mx my) / ... computed with numpy below
    x, y = np.array([1, 2, 3, 0, 0, 0.0]), np.array([3, 2, 1, 0, 0, 0.0])
    c02 = np.corrcoef(x, y)[0, 1]
    assert d["corr_reward"] == pytest.approx((1 + 2 * c02) / 3)
    assert d["disagreement"] == 0.0  # every margin is positive
    assert math.isnan(head_diversity(r_c[:1], r_r[:1])["corr_reward"])
    flip = head_diversity(torch.tensor([[1.0, 1.0], [-1.0, 1.0]]), torch.zeros(2, 2))
    assert flip["disagreement"] == 0.5


def test_reliability_and_ece_by_hand():
    prob = np.array([0.05, 0.15, 0.15, 0.95, 0.95, 0.95, 0.95])
    outcome = np.array([0, 0, 1, 1, 1, 1, 0])
    table = reliability(prob, outcome, n_bins=10)
    assert len(table) == 10 and table["count"].sum() == 7
    b1 = table.set_index("bin").loc[1]
    assert b1["count"] == 2 and b1["frac"] == 0.5 and b1["mean_prob"] == pytest.approx(0.15)
    # ECE = 1/7*|0-.05| + 2/7*|.5-.15| + 4/7*|.75-.95|
    expected = (0.05 + 2 * 0.35 + 4 * 0.2) / 7
    assert expected_calibration_error(table) == pytest.approx(expected)


def test_a_perfectly_calibrated_model_has_small_ece():
    rng = np.random.default_rng(0)
    margin = rng.normal(0, 2, 200_000)
    p = 1 / (1 + np.exp(-margin))
    # draw which side is gold-better from the model's own probability
    chosen_is_better = rng.random(len(p)) < p
    r_c = torch.tensor(margin)[None]
    r_r = torch.zeros_like(r_c)
    _, ece = calibration(r_c, r_r, ~chosen_is_better, methods=("mean",), n_bins=10)
    assert ece.set_index("target").loc["clean", "ece"] < 0.01
    # against the noisy labels (all 'chosen') the same model is badly calibrated
    assert ece.set_index("target").loc["noisy", "ece"] > 0.1


def test_calibration_counts_both_orders_and_covers_methods():
    r_c = torch.tensor([[1.0, 0.0], [2.0, -1.0]])
    r_r = torch.zeros(2, 2)
    bins, ece = calibration(r_c, r_r, np.array([False, True]), n_bins=4)
    assert set(bins["method"]) == {"min", "mean", "max"} and set(bins["target"]) == {
        "noisy",
        "clean",
    }
    per = bins.groupby(["method", "target"])["count"].sum()
    assert (per == 4).all()  # 2 pairs x 2 orders
    assert len(ece) == 6


def test_rewards_frame_round_trip():
    r_c, r_r = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    ids = np.array([10, 4, 7, 1, 2])
    df = rewards_frame(r_c, r_r, ids).sample(frac=1.0, random_state=0)  # any row order
    back_c, back_r, back_ids = rewards_from_frame(df)
    order = np.argsort(ids)
    assert np.array_equal(back_ids, ids[order])
    assert torch.equal(back_c, r_c[:, order]) and torch.equal(back_r, r_r[:, order])
    with pytest.raises(ValueError, match="r_rejected"):
        rewards_from_frame(df.drop(columns="r_rejected"))


def test_weighted_bt_loss_by_hand():
    r_c = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    r_r = torch.zeros(2, 2)
    w = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    lg = lambda x: -math.log(1 / (1 + math.exp(-x)))  # noqa: E731
    expected = (lg(0.0) + (lg(1.0) + lg(0.0)) / 2) / 2  # head 0 sees only pair 0
    assert bt_loss(r_c, r_r, weight=w).item() == pytest.approx(expected)
    assert bt_loss(r_c, r_r, weight=torch.ones(2, 2)).item() == pytest.approx(
        bt_loss(r_c, r_r).item()
    )


def test_reward_options_are_checked():
    params = load_params(ROOT / "params.yaml", "default")
    cfg = with_override(params.reward, "resample=poisson")
    assert cfg.resample == "poisson" and params.reward.resample == "none"
    assert with_override(params.reward, "freeze_encoder=true").freeze_encoder is True
    with pytest.raises(ConfigError, match="resample"):
        with_override(params.reward, "resample=jackknife")
    with pytest.raises(ConfigError, match="unknown key"):
        with_override(params.reward, "heads=3")
    with pytest.raises(ConfigError, match="expected int"):
        with_override(params.reward, "k=many")


def test_cost_relative_to_single_by_hand():
    cost = pd.DataFrame(
        {
            "family": ["multihead", "multihead", "ensemble"],
            "k": [1, 5, 5],
            "train_epoch_s": [10.0, 10.5, 50.0],
            "train_total_s": [10.0, 10.5, 150.0],
            "score_batch_s": [1.0, 1.02, 5.0],
            "peak_train_mb": [100.0, 101.0, 400.0],
            "parameters": [1000, 1000 + 4 * 33, 5000],
            "epochs": [1, 1, 3],
            "train_x": [1.0, 1.02, 5.1],
            "score_x": [1.0, 1.01, 3.0],
            "score_vmap_x": [float("nan"), float("nan"), 9.0],
            "score_loop_x": [float("nan"), float("nan"), 3.0],
        }
    )
    rel = relative_to_single(cost).set_index(["family", "k"])
    assert rel.loc[("multihead", 5), "train_epoch_s_x"] == pytest.approx(1.05)
    assert rel.loc[("ensemble", 5), "train_total_s_x"] == pytest.approx(15.0)
    assert rel.loc[("multihead", 5), "extra_parameters"] == 4 * 33
    assert rel.loc[("ensemble", 5), "train_total_paired_x"] == pytest.approx(15.3)  # 5.1 x 3 epochs
    with pytest.raises(ValueError, match="single"):
        relative_to_single(cost[cost["k"] == 5])


def test_mean_ci_by_hand():
    from study.stats import mean_ci, summarise, t975

    mean, ci, n = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, se = 1/sqrt(3), t_{.975, 2} = 4.303
    assert (mean, n) == (2.0, 3) and ci == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([5.0])[1]) and mean_ci([])[2] == 0
    assert t975(1) == pytest.approx(12.706205) and t975(100) == pytest.approx(1.983972)
    df = pd.DataFrame({"f": ["a", "a", "b"], "v": [1.0, 3.0, 2.0]})
    s = summarise(df, ["f"], "v").set_index("f")
    assert s.loc["a", "mean"] == 2.0 and s.loc["b", "n"] == 1
