"""The report's readings (example steps, RLOO summary) and the ablation rows, on hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from study.ablation import ablation_row, epochs_label, finite_or_none, rm_summary
from study.report import example_steps, rloo_summary


def test_example_steps_nearest_each_reached_level_and_the_last():
    evals = pd.DataFrame({"step": [0, 5, 10, 15, 20], "kl": [0.0, 1.8, 4.0, 6.5, 6.0]})
    # KL 0 -> 0, 2 -> 5, 5 -> 10 (|4-5| < |6-5|... 6.0 at step 20 is 1.0 away: the first wins),
    # 10 and 20 never reached; the last step is always shown
    assert example_steps(evals, [2.0, 5.0, 10.0, 20.0]) == [0, 5, 10, 20]
    with pytest.raises(KeyError, match="missing column"):
        example_steps(evals.drop(columns="kl"), [2.0])


def test_rloo_summary_by_hand():
    log = pd.DataFrame(
        {"step": range(6), "kl": [0, 1, 2, 3, 4, 5.0], "proxy": [0, 0, 1, 1, 2, 2.0],
         "gold": [1.0, 2.0, 3.0, 2.0, 1.0, 0.0]}
    )  # fmt: skip
    s = rloo_summary(log, window=2)
    assert s["steps"] == 6 and s["gold_first"] == 1.5 and s["gold_last"] == 0.5
    assert s["gold_best"] == 2.5 and s["kl_last"] == 4.5 and s["proxy_last"] == 2.0


def test_rm_summary_and_ablation_row_by_hand():
    # two heads, three pairs; pair 2's label was flipped (the clean winner is 'rejected')
    r_c = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 1.0]])
    rows = [
        {"pair_id": p, "head": h, "r_chosen": float(r_c[h, p]), "r_rejected": 0.0}
        for h in range(2) for p in range(3)
    ]  # fmt: skip
    pairs = pd.DataFrame({"pair_id": [2, 0, 1], "flipped": [True, False, False]})
    rm = rm_summary(pd.DataFrame(rows), pairs, uwo_lambda=0.5)
    # min over heads prefers chosen on pairs 0 and 2: clean-right on 0 only -> 1/3
    assert rm["acc_clean_min"] == pytest.approx(1 / 3)
    assert rm["acc_clean_head_mean"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    evals = pd.DataFrame(
        {"variant": "multihead_min", "seed": 0, "step": [0, 5, 10], "kl": [0.0, 3.0, 6.0],
         "proxy": [0.0, 1.0, 2.0], "gold": [1.0, 2.0, 1.2]}
    )  # fmt: skip
    info = {"family": "multihead", "k": 2, "epochs": 3, "train_seconds": 9.0}
    row = ablation_row("epochs", epochs_label("multihead", 3), info, rm, evals, [5.0], 0.25, "x")
    assert (
        row["label"] == "multihead 3 epochs" and epochs_label("ensemble", 1) == "ensemble 1 epoch"
    )
    assert row["gold_peak"] == 2.0 and row["gold_final"] == 1.2 and row["overoptimised"]
    assert row["gold_at_kl5"] == pytest.approx(2.0 + (2 / 3) * (1.2 - 2.0))
    with pytest.raises(KeyError, match="train_seconds"):
        ablation_row("heads", "K=2", {"family": "multihead", "k": 2, "epochs": 1}, rm, evals,
                     [5.0], 0.25, "x")  # fmt: skip
    assert finite_or_none(float("nan")) is None and finite_or_none(np.float64(1.5)) == 1.5
