"""When are shared heads enough? Every multi-head and ensemble arm's head diversity, measured
before any optimisation, against the gold its minimum protects through PPO (the map of
`notebooks/12_diversity_map.ipynb`).

Diversity is 1 - the mean pairwise correlation of the heads' rewards on the SFT policy's samples
of the held-out prompts (the PPO run's step-0 evaluation: the reward model's own property, before
the policy moves). Protection is the arm's PPO gold at a matched KL level minus the single
reward model's, paired by seed. The relation is fitted across arms, each arm a point (its seed
means), with a two-level bootstrap (arms, then seeds) for its intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from study.analysis import require_columns, run_summaries
from study.runs import RESULTS, read_runs
from study.stats import mean_ci
from study.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Claim, table

EVAL_COLUMNS = ("variant", "seed", "step", "kl", "proxy", "gold", "head_corr")


def family_of(arm: str) -> str:
    """'multihead' (one shared encoder) or 'ensemble' (K encoders or K adapted copies)."""
    family = arm.partition("-")[0]
    if family not in ("multihead", "ensemble"):
        raise ValueError(f"arm {arm!r}: the map holds multihead and ensemble arms only")
    return family


def map_points(
    evals: Mapping[str, pd.DataFrame],
    single: pd.DataFrame,
    level: float,
    min_gain_lost: float,
) -> pd.DataFrame:
    """One row per (arm, seed): the heads' correlation and diversity on the SFT policy's samples
    (step 0), the run's gold at KL `level`, the single reward model's gold there on the same seed
    and their difference (`protection`).

    `evals`: arm -> the PPO evaluations of its minimum (every seed); `single`: the single reward
    model's PPO evaluations. A seed the single model was not run on has no protection (NaN)."""
    require_columns(single, EVAL_COLUMNS, "the single reward model's PPO evaluations")
    col = f"gold_at_kl{level:g}"
    base = run_summaries(single, [level], min_gain_lost).set_index("seed")[col]
    rows = []
    for arm, e in evals.items():
        require_columns(e, EVAL_COLUMNS, f"PPO evaluations of {arm}")
        runs = run_summaries(e, [level], min_gain_lost).set_index("seed")[col]
        for seed, run in e.groupby("seed", sort=True):
            start = run.loc[run["step"] == run["step"].min()]
            if start["step"].iloc[0] != 0:
                raise ValueError(f"PPO evaluations of {arm}, seed {seed}: no step-0 evaluation")
            corr = float(start["head_corr"].iloc[0])
            gold = float(runs.loc[seed])
            ref = float(base.get(seed, np.nan))
            rows.append({"arm": arm, "family": family_of(arm), "seed": int(seed),
                         "head_corr": corr, "diversity": 1.0 - corr, "gold": gold,
                         "single_gold": ref, "protection": gold - ref})  # fmt: skip
    return pd.DataFrame(rows)


def arm_summary(points: pd.DataFrame) -> pd.DataFrame:
    """Per arm: diversity and protection as mean, 95% interval and seeds."""
    require_columns(points, ("arm", "family", "seed", "diversity", "protection"), "map points")
    rows = []
    for arm, p in points.groupby("arm", sort=False):
        d_m, d_ci, _ = mean_ci(p["diversity"])
        p_m, p_ci, n_p = mean_ci(p["protection"])
        rows.append({"arm": arm, "family": p["family"].iloc[0], "diversity": d_m,
                     "diversity_ci95": d_ci, "protection": p_m, "protection_ci95": p_ci,
                     "seeds": n_p})  # fmt: skip
    return pd.DataFrame(rows)


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of y on x by least squares."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def _arm_means(groups: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([g[:, 0].mean() for g in groups]), np.array([g[:, 1].mean() for g in groups]))


def fit_relation(
    points: pd.DataFrame, arms: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Protection against diversity across arms (each arm its seed means, every arm one point):
    the least-squares slope and intercept, Spearman's rank correlation, and their 95% percentile
    intervals from a two-level bootstrap: arms with replacement, then seeds with replacement,
    drawn once per seed set and shared by every arm run on that set (arms of one seed set share
    the single model's gold on each seed, so their seeds are resampled together). Resamples in
    which every drawn arm has one diversity carry no slope and are dropped. Beside them, the
    slope refitted without each arm in turn: its range, and the arm whose absence moves it most."""
    require_columns(points, ("arm", "seed", "diversity", "protection"), "map points")
    p = points.dropna(subset=["diversity", "protection"])
    if arms is not None:
        p = p[p["arm"].isin(list(arms))]
    names, groups, seed_sets = [], [], []
    for arm, g in p.sort_values("seed").groupby("arm", sort=True):
        names.append(arm)
        groups.append(g[["diversity", "protection"]].to_numpy(float))
        seed_sets.append(tuple(g["seed"]))
    if len(groups) < 3:
        raise ValueError(f"a fit across arms needs at least 3 arms, got {len(groups)}")
    x, y = _arm_means(groups)
    intercept, slope = _ols(x, y)
    rho = float(stats.spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    slopes, rhos = [], []
    for _ in range(n_boot):
        picked = rng.integers(len(groups), size=len(groups))
        draws = {ss: rng.integers(len(ss), size=len(ss)) for ss in sorted(set(seed_sets))}
        bx, by = _arm_means([groups[i][draws[seed_sets[i]]] for i in picked])
        if np.ptp(bx) == 0:
            continue
        slopes.append(_ols(bx, by)[1])
        r = stats.spearmanr(bx, by).statistic
        if np.isfinite(r):
            rhos.append(r)
    lo, hi = np.percentile(slopes, [2.5, 97.5]) if slopes else (np.nan, np.nan)
    rlo, rhi = np.percentile(rhos, [2.5, 97.5]) if rhos else (np.nan, np.nan)
    keep = np.ones(len(groups), bool)
    loo = []
    for i in range(len(groups)):
        keep[:] = True
        keep[i] = False
        loo.append(_ols(x[keep], y[keep])[1] if np.ptp(x[keep]) > 0 else np.nan)
    loo = np.asarray(loo)
    moved = int(np.nanargmax(np.abs(loo - slope)))
    return {"arms": len(groups), "runs": len(p), "intercept": intercept, "slope": slope,
            "slope_lo": float(lo), "slope_hi": float(hi), "spearman": rho,
            "spearman_lo": float(rlo), "spearman_hi": float(rhi), "resamples": len(slopes),
            "slope_loo_min": float(np.nanmin(loo)), "slope_loo_max": float(np.nanmax(loo)),
            "most_influential": names[moved],
            "slope_without_it": float(loo[moved])}  # fmt: skip


def interval_verdict(lo: float, hi: float) -> str:
    """Supported when the interval lies above 0, not supported when it lies below (inconclusive
    otherwise, and when there is no interval)."""
    if lo > 0:
        return SUPPORTED
    if hi < 0:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def diversity_questions(fits: Mapping[str, dict[str, Any]], level: float) -> pd.DataFrame:
    """One row per fit (`fits`: a name of the arms it covers -> `fit_relation`): does the gold an
    arm's minimum protects grow with its heads' diversity? No fits: the table's columns only."""
    rows = []
    for name, f in fits.items():
        rows.append(Claim(
            claim=f"Protection grows with head diversity ({name})",
            source="open question (Ahmed et al.)",
            measure=f"PPO gold at KL {level:g} minus the single RM's, against 1 - head "
                    "correlation on SFT samples, across arms",
            measured=f"slope {f['slope']:+.2f} [{f['slope_lo']:+.2f}, {f['slope_hi']:+.2f}] gold "
                     f"per unit of diversity; Spearman {f['spearman']:+.2f} "
                     f"[{f['spearman_lo']:+.2f}, {f['spearman_hi']:+.2f}]; without one arm the "
                     f"slope is {f['slope_loo_min']:+.2f} to {f['slope_loo_max']:+.2f} "
                     f"({f['slope_without_it']:+.2f} without {f['most_influential']})",
            seeds=f"{f['arms']} arms, {f['runs']} runs",
            verdict=interval_verdict(f["slope_lo"], f["slope_hi"]),
            design="arms unweighted; two-level bootstrap (arms, then seeds shared across arms), "
                   "95% percentile intervals",
        ))  # fmt: skip
    return table(rows) if rows else pd.DataFrame(columns=[f.name for f in fields(Claim)])


def load_evals(
    arms: Mapping[str, Sequence[int]], results_dir: str = RESULTS
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """The PPO evaluations of each arm's minimum on its seeds (`arms`: arm -> seeds), and the
    single reward model's on every seed any arm has; a missing table names the stage to run."""
    evals = {arm: read_runs(((f"{arm}_min", s) for s in seeds), EVAL_COLUMNS, results_dir)
             for arm, seeds in arms.items()}  # fmt: skip
    seeds = sorted({s for ss in arms.values() for s in ss})
    return evals, read_runs((("single", s) for s in seeds), EVAL_COLUMNS, results_dir)
