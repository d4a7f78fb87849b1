"""Label noise: does the protection of an ensemble's minimum grow with the share of flipped labels
(Coste et al.'s finding for the full ensemble), and does the multi-head model's (the paper's open
question)?

Each family (single, multi-head, full ensemble) is trained at the flip rates of
`study.config.NOISE_RATES` by the arms `<family>-noise<percent>` (`reward.label_noise`: labels
redrawn from the clean ones, nested across rates, `study.preferences.relabel`) and at the world's
own rate by the headline arm itself, then optimised by PPO against its minimum. One row per
family, rate and seed joins the reward model's held-out calibration with its PPO run, read by the
same functions as the headline (`study.analysis.run_summaries`, `study.rm_eval.calibration`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from study.analysis import REQUIRED, require_columns, run_summaries
from study.claims import COSTE
from study.rm_eval import calibration, rewards_from_frame
from study.stats import mean_ci
from study.verdicts import Claim, compare, paired_values, table

FAMILIES = ("single", "multihead", "ensemble")


def noise_arm(family: str, rate: float, world_rate: float) -> str:
    """The reward-model arm of `family` trained at flip rate `rate`: the headline arm itself at
    the world's own rate, `<family>-noise<percent>` otherwise."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    return family if math.isclose(rate, world_rate) else f"{family}-noise{round(100 * rate)}"


def ppo_variant(arm: str) -> str:
    """The PPO variant that optimises an arm's minimum ('single' is its own)."""
    return "single" if arm == "single" else f"{arm}_min"


def rm_calibration(
    val_rewards: pd.DataFrame, val_pairs: pd.DataFrame, n_bins: int, uwo_lambda: float
) -> dict[str, float]:
    """Clean accuracy and ECE (against the gold labels) of the minimum over heads of one reward
    model on the validation pairs (`val_pairs`: pair_id, flipped as the world labelled them)."""
    require_columns(val_rewards, ("pair_id", "head", "r_chosen", "r_rejected"), "val_rewards")
    require_columns(val_pairs, ("pair_id", "flipped"), "validation pairs")
    r_c, r_r, pair_id = rewards_from_frame(val_rewards)
    flipped = np.array(val_pairs.set_index("pair_id").loc[pair_id, "flipped"], dtype=bool)
    _, ece = calibration(r_c, r_r, flipped, ("min",), n_bins, uwo_lambda)
    margin = (r_c.min(0).values - r_r.min(0).values).numpy()
    return {
        "acc_clean_min": float(np.mean((margin > 0) != flipped)),
        "ece_clean_min": float(ece.loc[ece["target"] == "clean", "ece"].iloc[0]),
    }


def noise_row(
    family: str, rate: float, seed: int, rm: dict[str, float], evals: pd.DataFrame,
    kl_levels: Sequence[float], min_gain_lost: float, source: str,
) -> dict[str, Any]:  # fmt: skip
    """One row of the sweep: the reward model's calibration (`rm_calibration`) and
    `run_summaries` of the PPO run against its minimum, with the gold lost after the peak."""
    require_columns(evals, REQUIRED, f"{source}: PPO evaluations")
    (run,) = run_summaries(evals, kl_levels, min_gain_lost).to_dict("records")
    return {
        "family": family,
        "flip_rate": float(rate),
        "seed": int(seed),
        **rm,
        **{k: v for k, v in run.items() if k != "variant"},
        "gold_drop": float(run["gold_peak"] - run["gold_final"]),
        "source": source,
    }


def noise_summary(rows: pd.DataFrame, level: float) -> pd.DataFrame:
    """Per family and flip rate: gold at KL `level`, the gold lost after the peak, the ECE of the
    minimum and (where the rows carry it) the win rate against SFT at `level`, each as mean and
    95% interval over seeds, and the runs that overoptimised."""
    col = f"gold_at_kl{level:g}"
    need = ("family", "flip_rate", "seed", col, "gold_drop", "ece_clean_min", "overoptimised")
    require_columns(rows, need, "the label-noise sweep")
    out = []
    for (family, rate), g in rows.groupby(["family", "flip_rate"], sort=False):
        rec: dict[str, Any] = {"family": family, "flip_rate": rate, "seeds": len(g)}
        measures = [("gold", col), ("gold_drop", "gold_drop"), ("ece", "ece_clean_min")]
        if f"win_rate_at_kl{level:g}" in g:  # the annotator's verdict against SFT (study.winrate)
            measures.append(("win_rate", f"win_rate_at_kl{level:g}"))
        for name, c in measures:
            m, ci, n = mean_ci(g[c].to_numpy(float))
            rec |= {name: m, f"{name}_ci95": ci}
            if name == "gold":
                rec["gold_seeds"] = n
        rec["overoptimised"] = int(g["overoptimised"].astype(bool).sum())
        out.append(rec)
    order = {f: i for i, f in enumerate(FAMILIES)}
    return (
        pd.DataFrame(out)
        .sort_values(
            ["family", "flip_rate"], key=lambda s: s.map(order) if s.name == "family" else s
        )
        .reset_index(drop=True)
    )


def _label(family: str, rate: float) -> str:
    return f"{family} @ {rate:g}"


def _advantage(runs: pd.DataFrame, family: str, rate: float, col: str) -> pd.Series:
    """Per seed: `family`'s `col` minus the single model's, at flip rate `rate`."""
    by_seed = runs.set_index("seed")
    fam = by_seed.loc[by_seed["variant"] == _label(family, rate), col]
    single = by_seed.loc[by_seed["variant"] == _label("single", rate), col]
    seeds = sorted(set(fam.index) & set(single.index))
    return fam.loc[seeds] - single.loc[seeds]


def noise_claims(rows: pd.DataFrame, level: float) -> pd.DataFrame:
    """Paired over seeds at gold at KL `level`: at every flip rate, the ensemble's and the
    multi-head model's minimum against the single model; and, for each, whether its advantage at
    the highest rate exceeds its advantage at the lowest (Coste et al.: it grows with noise)."""
    col = f"gold_at_kl{level:g}"
    require_columns(rows, ("family", "flip_rate", "seed", col), "the label-noise sweep")
    runs = rows.assign(
        variant=[_label(f, r) for f, r in zip(rows["family"], rows["flip_rate"], strict=True)]
    )
    rates = sorted(rows["flip_rate"].unique())
    measure = f"PPO gold at KL {level:g}"
    out: list[Claim] = []
    for family, who in (("ensemble", COSTE), ("multihead", "Ahmed et al. 2024 (open question)")):
        if family not in set(rows["family"]) or "single" not in set(rows["family"]):
            continue
        for rate in rates:
            a, b = paired_values(runs, _label(family, rate), _label("single", rate), col)
            out.append(compare(f"At flip rate {rate:g}, the {family} minimum mitigates "
                               "overoptimisation against a single RM", who, measure,
                               _label(family, rate), a, _label("single", rate), b,
                               paired=True, all_seeds=True))  # fmt: skip
        if len(rates) >= 2:
            lo, hi = rates[0], rates[-1]
            adv = {r: _advantage(runs, family, r, col) for r in (lo, hi)}
            seeds = sorted(set(adv[lo].index) & set(adv[hi].index))
            out.append(compare(f"The {family} minimum's advantage over a single RM grows with "
                               f"label noise (flip rate {hi:g} against {lo:g})", who, measure,
                               f"advantage @ {hi:g}", adv[hi].loc[seeds],
                               f"advantage @ {lo:g}", adv[lo].loc[seeds],
                               paired=True, all_seeds=True))  # fmt: skip
    return table(out)
