"""The number of heads K (the paper's open question "is 3 heads optimal?"): one row per reward-model
arm and seed, holding the model's held-out accuracy and head diversity and what PPO against its
minimum reached, and the paired comparisons across K.

A row joins a reward-model stage's validation rewards (`results/rm/<arm>/seed<s>/`) with the PPO
stage that optimised its minimum (`results/ppo/<arm>_min/seed<s>/`; the single model's own run for
K = 1), read by the same functions as the headline (`study.analysis.run_summaries`,
`study.rm_eval.accuracy_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from study.analysis import REQUIRED, require_columns, run_summaries
from study.rm_eval import accuracy_table, head_diversity, rewards_from_frame
from study.verdicts import Claim, compare, paired_values, table


def rm_summary(val_rewards: pd.DataFrame, val_pairs: pd.DataFrame, uwo_lambda: float) -> dict:
    """Clean accuracy of the minimum and of the mean head, and the heads' reward correlation, of
    one reward model on the validation pairs (`val_pairs`: pair_id, flipped)."""
    require_columns(val_rewards, ("pair_id", "head", "r_chosen", "r_rejected"), "val_rewards")
    require_columns(val_pairs, ("pair_id", "flipped"), "validation pairs")
    r_c, r_r, pair_id = rewards_from_frame(val_rewards)
    flipped = np.array(val_pairs.set_index("pair_id").loc[pair_id, "flipped"], dtype=bool)
    acc = accuracy_table(r_c, r_r, flipped, uwo_lambda=uwo_lambda)
    agg = acc[acc["unit"] == "aggregate"].set_index("name")
    return {
        "acc_clean_min": float(agg.loc["min", "acc_clean"]),
        "acc_clean_head_mean": float(acc.loc[acc["unit"] == "head", "acc_clean"].mean()),
        "corr_reward": head_diversity(r_c, r_r)["corr_reward"],
    }


def sweep_row(
    arm: str,
    seed: int,
    rm_info: dict[str, Any],
    rm: dict[str, float],
    evals: pd.DataFrame,
    kl_levels: Sequence[float],
    min_gain_lost: float,
    source: str,
) -> dict[str, Any]:
    """One row of the K sweep: the reward model (`rm_info`: its train.json; `rm`: `rm_summary`)
    and `run_summaries` of the PPO run against its minimum."""
    require_columns(evals, REQUIRED, f"{source}: PPO evaluations")
    for key in ("family", "k", "epochs", "train_seconds"):
        if key not in rm_info:
            raise KeyError(f"{source}: the reward model's train.json lacks {key}")
    (run,) = run_summaries(evals, kl_levels, min_gain_lost).to_dict("records")
    family = "multihead" if rm_info["family"] == "single" else rm_info["family"]
    return {
        "arm": arm,
        "family": family,  # K = 1 of the multi-head family is the single model
        "k": int(rm_info["k"]),
        "epochs": int(rm_info["epochs"]),
        "rm_train_seconds": float(rm_info["train_seconds"]),
        **rm,
        **{k: v for k, v in run.items() if k not in ("variant",)},
        "seed": seed,
        "source": source,
    }


def heads_claims(sweep: pd.DataFrame, level: float, margin: float) -> pd.DataFrame:
    """Paired comparisons across K of each family at gold at KL `level`: the most heads against
    the fewest ('more heads mitigate more') and K = 3 against the family's largest K ('3 heads
    are enough')."""
    col = f"gold_at_kl{level:g}"
    require_columns(sweep, ("family", "k", "seed", col), "the K sweep")
    # an arm whose K equals another's of its family (at toy sizes the headline's K can be a sweep
    # point) counts once
    sweep = sweep.drop_duplicates(["family", "k", "seed"])
    rows: list[Claim] = []
    runs = sweep.assign(variant=lambda d: d["family"] + " K=" + d["k"].astype(str))
    for family, g in sweep.groupby("family", sort=False):
        ks = sorted(g["k"].unique())
        if len(ks) < 2:
            continue
        lo, hi = f"{family} K={ks[0]}", f"{family} K={ks[-1]}"
        a, b = paired_values(runs, hi, lo, col)
        rows.append(compare("More heads mitigate more", "Ahmed et al. 2024 (open question)",
                            f"PPO gold at KL {level:g}", hi, a, lo, b, "better", margin,
                            paired=True, all_seeds=True))  # fmt: skip
        if 3 in ks and ks[-1] != 3:
            a, b = paired_values(runs, f"{family} K=3", hi, col)
            rows.append(compare("Three heads are enough", "Ahmed et al. 2024 (open question)",
                                f"PPO gold at KL {level:g}", f"{family} K=3", a, hi, b,
                                "parity", margin, paired=True, all_seeds=True))  # fmt: skip
    return table(rows)
