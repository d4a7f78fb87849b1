"""The cost-against-protection summary of the cheap-uncertainty arms, on hand-made runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.claims import matched_level
from study.pareto import cheap_claims, cost_and_gold, pareto_front, training_cost


def test_the_front_keeps_what_nothing_cheaper_beats():
    cost = np.array([1.0, 2.0, 3.0, 3.0, 10.0])
    gold = np.array([1.0, 0.5, 2.0, 1.5, 2.5])
    # 2 is beaten by 1 (cheaper and better); 3 by 2 (as cheap, better)
    assert pareto_front(cost, gold).tolist() == [True, False, True, False, True]


def _runs():
    return pd.DataFrame({
        "variant": ["single"] * 3 + ["ensemble_min"] * 3 + ["multihead-laplace_min"] * 3,
        "seed": [0, 1, 2] * 3,
        "gold_at_kl2": [1.0, 1.1, 0.9, 2.0, 2.1, 1.9, 1.5, 1.6, 1.4],
        "gold_at_kl5": [0.5, 0.6, np.nan, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0],
    })  # fmt: skip


def test_the_level_is_the_largest_every_run_reached_and_the_table_by_hand():
    runs = _runs()
    assert matched_level(runs, [2.0, 5.0]) == 2.0
    train = pd.DataFrame({"arm": ["single"] * 3 + ["ensemble"] * 3 + ["multihead-laplace"] * 3,
                          "seed": [0, 1, 2] * 3,
                          "encoder_epochs": [1] * 3 + [15] * 3 + [1] * 3,
                          "train_seconds": [10.0, 12.0, 14.0, 150.0, 150.0, 150.0, 11, 11, 11]})  # fmt: skip
    t = cost_and_gold(runs, train, 2.0).set_index("arm")
    assert t.loc["single", "train_seconds"] == 12.0 and t.loc["single", "gold"] == pytest.approx(
        1.0
    )
    assert t.loc["ensemble", "gold"] == pytest.approx(2.0)
    assert t.loc["multihead-laplace", "train_seconds"] == 11.0
    # laplace costs as little as single and keeps more: single is off the front
    assert t["pareto"].to_dict() == {"single": False, "ensemble": True, "multihead-laplace": True}


def test_each_cheap_arm_gets_a_paired_claim_against_single_and_the_ensemble():
    claims = cheap_claims(_runs(), ["multihead-laplace"], 2.0, 0.2)
    assert len(claims) == 2
    vs_single, vs_ens = claims.iloc[0], claims.iloc[1]
    assert "+0.50" in vs_single["measured"] and vs_single["verdict"] == "supported"
    assert "-0.50" in vs_ens["measured"] and vs_ens["verdict"].startswith("not supported")
    assert vs_single["design"] == "paired over 3 seeds"


def test_training_cost_reads_each_runs_seconds_and_counts_encoder_epochs(tmp_path):
    from study.config.reward import RewardConfig
    from study.io import MissingArtifactError

    for arm, seconds in (("single", 10.0), ("ensemble", 150.0), ("ensemble-lora", 40.0)):
        (tmp_path / arm / "seed0").mkdir(parents=True)
        (tmp_path / arm / "seed0" / "train.json").write_text(f'{{"train_seconds": {seconds}}}')
    reward = RewardConfig()  # K = 5; ensemble members 3 epochs; LoRA K adapters x 1 epoch
    t = training_cost(reward, ["single", "ensemble", "ensemble-lora"], [0], str(tmp_path))
    assert t["encoder_epochs"].tolist() == [1, 15, 5]
    assert t["train_seconds"].tolist() == [10.0, 150.0, 40.0]
    with pytest.raises(MissingArtifactError, match=r"single/seed1/train.json.*single, seed 1"):
        training_cost(reward, ["single"], [0, 1], str(tmp_path))
    (tmp_path / "single" / "seed0" / "train.json").write_text('{"steps": 3}')
    with pytest.raises(KeyError, match="no train_seconds"):
        training_cost(reward, ["single"], [0], str(tmp_path))
