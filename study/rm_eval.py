"""Evaluation of reward models on held-out preference pairs, written once against (K, N).

- accuracy of every head and of every aggregation, against the noisy labels the model was trained
  on and against the clean (gold) labels;
- head diversity: mean pairwise correlation of head rewards and of head margins, and the rate at
  which two heads disagree on which side is better;
- calibration of the aggregated preference probability sigma(agg(r_chosen) - agg(r_rejected)):
  reliability-diagram bins and the expected calibration error (ECE).

Inputs are rewards of the chosen and rejected sides, `r_chosen` and `r_rejected`, both (K, N), and
`flipped` (N,), True where the noisy label disagrees with gold.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd
import torch

from study.aggregate import METHODS, aggregate


def _check(r_chosen: torch.Tensor, r_rejected: torch.Tensor, flipped: np.ndarray) -> None:
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 2:
        raise ValueError(
            f"r_chosen and r_rejected must both be (K, N), got {tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}"
        )
    if len(flipped) != r_chosen.shape[1]:
        raise ValueError(f"flipped has {len(flipped)} entries for N = {r_chosen.shape[1]} pairs")


def accuracy_table(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    flipped: np.ndarray,
    methods: Sequence[str] = METHODS,
    uwo_lambda: float = 0.5,
) -> pd.DataFrame:
    """One row per head and per aggregation: `unit` ('head' or 'aggregate'), `name`, accuracies.

    acc_noisy: share of pairs where the reward prefers the labelled-chosen side (ties count half);
    acc_clean: the same against the gold label (the chosen side, unless the label was flipped).
    """
    _check(r_chosen, r_rejected, flipped)
    gold_sign = torch.where(torch.as_tensor(flipped, dtype=torch.bool), -1.0, 1.0)  # (N,)
    rows = []

    def row(unit: str, name: str, margin: torch.Tensor) -> dict:
        agree = (torch.sign(margin) + 1) / 2  # 1 right, 0 wrong, 0.5 tie
        clean = (torch.sign(margin * gold_sign) + 1) / 2
        return {
            "unit": unit,
            "name": name,
            "acc_noisy": agree.mean().item(),
            "acc_clean": clean.mean().item(),
            "n": int(margin.numel()),
        }

    for h in range(r_chosen.shape[0]):
        rows.append(row("head", str(h), r_chosen[h] - r_rejected[h]))
    for method in methods:
        margin = aggregate(r_chosen, method, uwo_lambda) - aggregate(r_rejected, method, uwo_lambda)
        rows.append(row("aggregate", method, margin))
    return pd.DataFrame(rows)


def head_diversity(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict[str, float]:
    """How different K heads are: mean pairwise correlations and disagreement (NaN when K = 1).

    corr_reward: Pearson correlation of two heads' rewards over all 2N responses;
    corr_margin: the same for their margins r_chosen - r_rejected over the N pairs;
    disagreement: share of pairs on which two heads prefer different sides, averaged over head pairs.
    """
    k = r_chosen.shape[0]
    if k < 2:
        return {
            "corr_reward": float("nan"),
            "corr_margin": float("nan"),
            "disagreement": float("nan"),
        }
    rewards = torch.cat([r_chosen, r_rejected], dim=1).double()  # (K, 2N)
    margins = (r_chosen - r_rejected).double()  # (K, N)
    c_r, c_m = torch.corrcoef(rewards), torch.corrcoef(margins)
    pairs = list(combinations(range(k), 2))
    return {
        "corr_reward": float(np.mean([c_r[i, j].item() for i, j in pairs])),
        "corr_margin": float(np.mean([c_m[i, j].item() for i, j in pairs])),
        "disagreement": float(
            np.mean(
                [((margins[i] > 0) != (margins[j] > 0)).double().mean().item() for i, j in pairs]
            )
        ),
    }


def reliability(prob: np.ndarray, outcome: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability-diagram data of predicted probabilities `prob` (M,) against 0/1 `outcome` (M,).

    Equal-width bins on [0, 1]; each row: bin, lo, hi, count, mean_prob (confidence), frac (observed
    frequency). Empty bins are kept with count 0 so every table has `n_bins` rows.
    """
    prob, outcome = np.asarray(prob, float), np.asarray(outcome, float)
    if prob.shape != outcome.shape:
        raise ValueError(f"prob {prob.shape} and outcome {outcome.shape} differ in shape")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1], right=False), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = which == b
        n = int(sel.sum())
        rows.append(
            {
                "bin": b,
                "lo": edges[b],
                "hi": edges[b + 1],
                "count": n,
                "mean_prob": float(prob[sel].mean()) if n else float("nan"),
                "frac": float(outcome[sel].mean()) if n else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(table: pd.DataFrame) -> float:
    """ECE = sum over bins of (count / total) * |frac - mean_prob| (Naeini et al., 2015)."""
    filled = table[table["count"] > 0]
    total = filled["count"].sum()
    return float((filled["count"] / total * (filled["frac"] - filled["mean_prob"]).abs()).sum())


def calibration(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    flipped: np.ndarray,
    methods: Sequence[str] = ("min", "mean", "max"),
    n_bins: int = 10,
    uwo_lambda: float = 0.5,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reliability bins and ECE of sigma(agg(r_chosen) - agg(r_rejected)) for each aggregation.

    Every pair is counted in both orders (p with outcome 1 for the labelled-chosen side first, and
    1 - p with outcome 0), so the diagram does not depend on which side a file calls 'chosen'.
    Outcomes are taken against the noisy labels (`target` = 'noisy') and the gold labels ('clean').
    Returns (bins, ece): bins has columns method, target, bin, lo, hi, count, mean_prob, frac; ece
    has method, target, ece.
    """
    _check(r_chosen, r_rejected, flipped)
    clean = (~np.asarray(flipped, bool)).astype(float)  # 1 where the chosen side is gold-better
    bins, eces = [], []
    for method in methods:
        margin = aggregate(r_chosen, method, uwo_lambda) - aggregate(r_rejected, method, uwo_lambda)
        p = torch.sigmoid(margin.double()).numpy()
        prob = np.concatenate([p, 1.0 - p])
        for target, y in (("noisy", np.ones_like(p)), ("clean", clean)):
            table = reliability(prob, np.concatenate([y, 1.0 - y]), n_bins)
            bins.append(table.assign(method=method, target=target))
            eces.append(
                {"method": method, "target": target, "ece": expected_calibration_error(table)}
            )
    cols = ["method", "target", "bin", "lo", "hi", "count", "mean_prob", "frac"]
    return pd.concat(bins, ignore_index=True)[cols], pd.DataFrame(eces)


def rewards_frame(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, pair_id: Sequence
) -> pd.DataFrame:
    """Long table of validation rewards: pair_id, head, r_chosen, r_rejected (one row per pair and head)."""
    k, n = r_chosen.shape
    return pd.DataFrame(
        {
            "pair_id": np.tile(np.asarray(pair_id), k),
            "head": np.repeat(np.arange(k), n),
            "r_chosen": r_chosen.reshape(-1).double().numpy(),
            "r_rejected": r_rejected.reshape(-1).double().numpy(),
        }
    )


def rewards_from_frame(df: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Back from `rewards_frame`: (r_chosen (K, N), r_rejected (K, N), pair_id (N,))."""
    missing = {"pair_id", "head", "r_chosen", "r_rejected"} - set(df.columns)
    if missing:
        raise ValueError(f"rewards table lacks column(s) {', '.join(sorted(missing))}")
    df = df.sort_values(["head", "pair_id"], kind="stable")
    k = df["head"].nunique()
    pair_id = df.loc[df["head"] == df["head"].iloc[0], "pair_id"].to_numpy()
    shape = (k, len(pair_id))
    return (
        torch.as_tensor(df["r_chosen"].to_numpy().reshape(shape).copy()),
        torch.as_tensor(df["r_rejected"].to_numpy().reshape(shape).copy()),
        pair_id,
    )
