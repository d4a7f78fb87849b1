"""Cheap uncertainty against its cost: each reward-model arm's measured training time against the
gold its PPO run keeps at matched KL (the Pareto figure of `notebooks/10_cheap.ipynb`), and the
claims that the cheap arms mitigate overoptimisation and match the full ensemble."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from study.analysis import require_columns
from study.claims import AHMED, COSTE, ppo_row
from study.config.reward import RewardConfig
from study.io import require
from study.stats import mean_ci
from study.verdicts import Claim, table


def variant_of(arm: str) -> str:
    """The PPO variant that optimises an arm's minimum ('single' is its own)."""
    return "single" if arm == "single" else f"{arm}_min"


def training_cost(
    reward: RewardConfig, arms: Sequence[str], seeds: Sequence[int], results_dir: str = "results/rm"
) -> pd.DataFrame:
    """One row per (arm, seed): the measured training seconds (`train.json` of the reward-model
    stage) and the training compute in encoder-epochs (`RewardConfig.encoder_epochs`, from the
    arm's declared settings)."""
    rows = []
    for arm in arms:
        family, cfg = reward.arm(arm)
        for seed in seeds:
            path = Path(results_dir) / arm / f"seed{seed}" / "train.json"
            info = pd.read_json(require(path, f"the reward-model stage of {arm}, seed {seed}"),
                                typ="series")  # fmt: skip
            if "train_seconds" not in info:
                raise KeyError(f"{path}: no train_seconds")
            rows.append({"arm": arm, "seed": seed, "train_seconds": float(info["train_seconds"]),
                         "encoder_epochs": cfg.encoder_epochs(family)})  # fmt: skip
    return pd.DataFrame(rows)


def cost_and_gold(runs: pd.DataFrame, train: pd.DataFrame, level: float) -> pd.DataFrame:
    """Per arm: its training compute (`encoder_epochs`, the same for every seed), the measured
    training seconds and PPO gold at KL `level`, as mean, 95% interval and seeds (`train`: arm,
    seed, encoder_epochs, train_seconds; `runs`: variant, seed, gold_at_kl*). The front is drawn
    on compute, which does not move with the machine's load as seconds do."""
    require_columns(train, ("arm", "seed", "encoder_epochs", "train_seconds"),
                    "reward-model training")  # fmt: skip
    col = f"gold_at_kl{level:g}"
    require_columns(runs, ("variant", "seed", col), "PPO runs")
    rows = []
    for arm, t in train.groupby("arm", sort=False):
        g = runs.loc[runs["variant"] == variant_of(arm), col].to_numpy(float)
        sec_m, sec_ci, n_rm = mean_ci(t["train_seconds"].to_numpy(float))
        gold_m, gold_ci, n_ppo = mean_ci(g)
        rows.append({"arm": arm, "encoder_epochs": int(t["encoder_epochs"].iloc[0]),
                     "train_seconds": sec_m, "train_seconds_ci95": sec_ci,
                     "rm_seeds": n_rm, "gold": gold_m, "gold_ci95": gold_ci,
                     "ppo_seeds": n_ppo})  # fmt: skip
    out = pd.DataFrame(rows)
    out["pareto"] = pareto_front(out["encoder_epochs"].to_numpy(), out["gold"].to_numpy())
    return out


def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Whether each point is on the front: no other point costs no more and is worth at least as
    much, being strictly better in one of the two."""
    cost, value = np.asarray(cost, float), np.asarray(value, float)
    on = np.ones(len(cost), bool)
    for i in range(len(cost)):
        dominated = (
            (cost <= cost[i]) & (value >= value[i]) & ((cost < cost[i]) | (value > value[i]))
        )
        on[i] = not dominated.any()
    return on


LABELS = {
    "multihead-bootstrap": "bootstrap heads (Poisson(1) weights per head, one encoder)",
    "multihead-laplace": "Bayesian last layer (K heads from the Laplace posterior of one model)",
    "ensemble-dropout": "dropout members (K fixed masks on one trained model)",
    "ensemble-lora": "LoRA ensemble (K adapters and heads on one frozen encoder)",
}


def cheap_claims(
    runs: pd.DataFrame, arms: Sequence[str], level: float, margin: float
) -> pd.DataFrame:
    """For each cheap arm, paired over seeds at KL `level`: its minimum mitigates overoptimisation
    against the single RM, and protects as well as the full ensemble's (parity within
    `margin`)."""
    col = f"gold_at_kl{level:g}"
    rows: list[Claim] = []
    for arm in arms:
        label, v = LABELS.get(arm, arm), variant_of(arm)
        rows.append(ppo_row(runs, f"{label}: its minimum mitigates overoptimisation against a "
                            "single RM", COSTE, f"PPO gold at KL {level:g}", v, "single", col))  # fmt: skip
        rows.append(ppo_row(runs, f"{label}: its minimum protects as well as the full "
                            "ensemble's", AHMED, f"PPO gold at KL {level:g}", v, "ensemble_min",
                            col, "parity", margin))  # fmt: skip
    return table(rows)
