"""The ablations of figures (e) and (g): one row per reward model (a family with one setting
changed), holding its held-out accuracy and what PPO against it reached.

A row joins a reward-model stage's validation rewards (`results/rm*/.../val_rewards.parquet`) with
the PPO stage that optimised its minimum (`results/ppo*/.../evals.parquet`), read by the same
functions as the main grid (`study.analysis.run_summaries`, `study.rm_eval.accuracy_table`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from study.analysis import REQUIRED, require_columns, run_summaries
from study.rm_eval import accuracy_table, head_diversity, rewards_from_frame


def epochs_label(family: str, epochs: int) -> str:
    """'multihead 1 epoch', 'ensemble 3 epochs' (the labels the claims table looks up)."""
    return f"{family} {epochs} epoch{'' if epochs == 1 else 's'}"


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


def ablation_row(
    group: str,
    label: str,
    rm_info: dict[str, Any],
    rm: dict[str, float],
    evals: pd.DataFrame,
    kl_levels: Sequence[float],
    min_gain_lost: float,
    source: str,
) -> dict[str, Any]:
    """One row of the ablation summary: the reward model (`rm_info`: its train.json; `rm`:
    `rm_summary`) and `run_summaries` of the PPO run against it."""
    require_columns(evals, REQUIRED, f"{source}: PPO evaluations")
    for key in ("family", "k", "epochs", "train_seconds"):
        if key not in rm_info:
            raise KeyError(f"{source}: the reward model's train.json lacks {key}")
    (run,) = run_summaries(evals, kl_levels, min_gain_lost).to_dict("records")
    return {
        "group": group,
        "label": label,
        "family": rm_info["family"],
        "k": int(rm_info["k"]),
        "epochs": int(rm_info["epochs"]),
        "rm_train_seconds": float(rm_info["train_seconds"]),
        **rm,
        **run,
        "source": source,
    }


def finite_or_none(x: Any) -> Any:
    """JSON has no NaN: a value that is not finite (a KL level never reached) becomes null."""
    if isinstance(x, float | np.floating):
        return float(x) if np.isfinite(x) else None
    return x
