"""The PPO grid summarised (`notebooks/05_ppo_summary.ipynb`): every run's committed tables read
and checked, Gao et al.'s fit per variant, one row per run (peak, fall, gold at matched KL, the
heads at the end), and the headline numbers `dvc metrics show` lists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study.analysis import REQUIRED, fit_gao, policy_calibration, require_columns, run_summaries
from study.config import Params
from study.io import read_table, require
from study.runs import RESULTS, read_evals
from study.winrate import run_win_rates

# the variants without heads to aggregate: no calibration of an aggregate on policy samples
NO_HEADS = ("single", "gold")


@dataclass
class Grid:
    """Every run of the grid: held-out evaluations and training logs (one row per evaluation or
    step), `train.json` of each run, its win rates against SFT, and the calibration of its
    aggregate on its own samples (bins and ECE; runs with heads only)."""

    evals: pd.DataFrame
    logs: pd.DataFrame
    infos: pd.DataFrame
    wins: pd.DataFrame
    cal_bins: pd.DataFrame
    cal_ece: pd.DataFrame


def read_grid(
    variants: Mapping[str, Sequence[int]], params: Params, results_dir: str = RESULTS
) -> Grid:
    """Read and check the tables of every run of `variants` (variant -> seeds), in that order."""
    evals, logs, infos, wins, cal_bins, cal_ece = [], [], [], [], [], []
    rep = params.report
    for variant, seeds in variants.items():
        for seed in seeds:
            d = Path(results_dir) / variant / f"seed{seed}"
            made_by = f"the PPO stage of {variant}, seed {seed}"
            evals.append(read_evals(variant, seed, (*REQUIRED, "head_std", "head_corr"),
                                    results_dir))  # fmt: skip
            log = read_table(d / "log.parquet", made_by)
            require_columns(log, (*REQUIRED, "head_std"), str(d / "log.parquet"))
            logs.append(log)
            infos.append(pd.read_json(require(d / "train.json", made_by), typ="series").to_dict())
            samples = read_table(d / "eval_samples.parquet", made_by)
            wins.append({"variant": variant, "seed": seed,
                         **run_win_rates(samples, rep.kl_levels, params.preferences.flip_rate,
                                         str(d))})  # fmt: skip
            if variant not in NO_HEADS:
                b, c = policy_calibration(samples, params.reward_eval.calibration_bins,
                                          params.reward.uwo_lambda)  # fmt: skip
                cal_bins.append(b.assign(variant=variant, seed=seed))
                cal_ece.append(c.assign(variant=variant, seed=seed))

    def cat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    return Grid(cat(evals), cat(logs), pd.DataFrame(infos), pd.DataFrame(wins), cat(cal_bins),
                cat(cal_ece))  # fmt: skip


def gao_fits(evals: pd.DataFrame, form: str = "rl") -> pd.DataFrame:
    """Gao et al.'s R(d) fitted per variant (in order of appearance) to every seed's gold gain
    over its own step-0 gold, against d = √KL (negative KL estimates read as 0)."""
    require_columns(evals, REQUIRED, "PPO evaluations")
    rows = []
    for variant, e in evals.groupby("variant", sort=False):
        init = e[e["step"] == 0].set_index("seed")["gold"]
        gain = e["gold"] - e["seed"].map(init)
        alpha, beta = fit_gao(np.sqrt(e["kl"].clip(lower=0)), gain, form)
        rows.append({"variant": variant, "alpha": alpha, "beta": beta})
    return pd.DataFrame(rows)


def run_table(evals: pd.DataFrame, levels: Sequence[float], min_gain_lost: float) -> pd.DataFrame:
    """`run_summaries` of every run, with its heads' correlation and spread at its last
    evaluation (`head_corr_final`, `head_std_final`)."""
    require_columns(evals, (*REQUIRED, "head_corr", "head_std"), "PPO evaluations")
    runs = run_summaries(evals, levels, min_gain_lost)
    last = evals.sort_values("step").groupby(["variant", "seed"], as_index=False).last()
    final = last[["variant", "seed", "head_corr", "head_std"]].rename(
        columns={"head_corr": "head_corr_final", "head_std": "head_std_final"}
    )
    return runs.merge(final, on=["variant", "seed"])


def overoptimised_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per variant (in order of appearance): runs that overoptimise (`sum`) out of `count`."""
    require_columns(runs, ("variant", "overoptimised"), "PPO runs")
    return runs.groupby("variant", sort=False)["overoptimised"].agg(["sum", "count"])


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None  # JSON has no NaN: an unreached level is null


def headline_metrics(
    variants: Mapping[str, Sequence[int]],
    summary: pd.DataFrame,
    counts: pd.DataFrame,
    infos: pd.DataFrame,
) -> dict[str, Any]:
    """`results/ppo/metrics.json`: the seeds, each variant's mean, interval and n of every
    measure of `summary` (`study.stats.summarise` rows with a `measure` column), its
    overoptimised runs, seconds per run and the scoring's share of them, and the grid's seconds."""
    metrics: dict[str, Any] = {"seeds": {v: list(s) for v, s in variants.items()}}
    for _, r in summary.iterrows():
        metrics[f"{r['variant']}.{r['measure']}"] = {
            "mean": _finite(r["mean"]), "ci95": _finite(r["ci95"]), "n": int(r["n"]),
        }  # fmt: skip
    for v, r in counts.iterrows():
        metrics[f"{v}.overoptimised_runs"] = f"{int(r['sum'])}/{int(r['count'])}"
    for v, g in infos.groupby("variant", sort=False):
        metrics[f"{v}.seconds_per_run"] = float(g["seconds"].mean())
        metrics[f"{v}.score_share"] = float(g["score_share"].mean())
    metrics["grid_seconds"] = float(infos["seconds"].sum())
    return metrics
