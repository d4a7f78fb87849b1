"""Reading optimisation curves: Gao et al.'s functional forms, peaks and falls, gold at matched KL,
and the calibration of the aggregated reward on the policy's own samples.

Every function takes the tidy tables the stages write (one row per evaluation of a run) and
returns numbers or tables; the report notebooks only draw them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from study.rm_eval import calibration

REQUIRED = ("variant", "seed", "step", "kl", "proxy", "gold")


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise a KeyError naming the table and every missing column."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: missing column(s) {', '.join(missing)} (has {', '.join(df)})")


def fit_gao(d: np.ndarray, gain: np.ndarray, form: str) -> tuple[float, float]:
    """Least-squares (alpha, beta) of Gao et al.'s gold-gain laws, d = sqrt(KL):

    'rl':  R(d) = d (alpha - beta log d);   'bon': R(d) = d (alpha - beta d).

    Both are linear in (alpha, beta), so the fit is ordinary least squares through the origin.
    Points with d <= 0 carry no information for 'rl' (log 0) and are dropped.
    """
    d, gain = np.asarray(d, np.float64), np.asarray(gain, np.float64)
    keep = (d > 0) & np.isfinite(gain)
    d, gain = d[keep], gain[keep]
    if len(d) < 2:
        return float("nan"), float("nan")
    if form == "rl":
        x = np.stack([d, -d * np.log(d)], axis=1)
    elif form == "bon":
        x = np.stack([d, -(d**2)], axis=1)
    else:
        raise ValueError(f"form must be 'rl' or 'bon', got {form!r}")
    (alpha, beta), *_ = np.linalg.lstsq(x, gain, rcond=None)
    return float(alpha), float(beta)


def gao_curve(d: np.ndarray, alpha: float, beta: float, form: str) -> np.ndarray:
    """R(d) of `fit_gao`'s forms (R(0) = 0)."""
    d = np.asarray(d, np.float64)
    if form == "rl":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d > 0, d * (alpha - beta * np.log(np.where(d > 0, d, 1.0))), 0.0)
    if form == "bon":
        return d * (alpha - beta * d)
    raise ValueError(f"form must be 'rl' or 'bon', got {form!r}")


def peak_and_fall(run: pd.DataFrame, min_loss: float = 0.25) -> dict[str, float | bool]:
    """Of one run's evaluations (sorted by step): the initial, peak and final gold, the KL at the
    peak and at the end, the share of the gain lost after the peak, and whether the run shows
    overoptimisation: gold loses at least `min_loss` of its gain after the peak while the proxy
    ends above its value at the peak.
    """
    require_columns(run, ("step", "kl", "proxy", "gold"), "a run's evaluations")
    run = run.sort_values("step")
    first, last = run.iloc[0], run.iloc[-1]
    peak = run.loc[run["gold"].idxmax()]
    gain = peak["gold"] - first["gold"]
    lost = (peak["gold"] - last["gold"]) / gain if gain > 0 else float("nan")
    proxy_rising = bool(last["proxy"] > peak["proxy"])
    return {
        "gold_initial": float(first["gold"]),
        "gold_peak": float(peak["gold"]),
        "gold_final": float(last["gold"]),
        "step_peak": int(peak["step"]),
        "kl_peak": float(peak["kl"]),
        "kl_final": float(last["kl"]),
        "proxy_peak": float(peak["proxy"]),
        "proxy_final": float(last["proxy"]),
        "gain_lost": float(lost),
        "proxy_rising": proxy_rising,
        "overoptimised": bool(gain > 0 and lost >= min_loss and proxy_rising),
    }


def value_at_kl(run: pd.DataFrame, levels: Sequence[float], column: str = "gold") -> list[float]:
    """`column` where the run first reaches each KL level, by linear interpolation between the two
    evaluations around the crossing; NaN for a level the run never reached (so a variant that only
    stops early shows no value there, rather than its last one)."""
    run = run.sort_values("step")
    kl, y = run["kl"].to_numpy(np.float64), run[column].to_numpy(np.float64)
    out = []
    for level in levels:
        above = np.flatnonzero(kl >= level)
        if len(above) == 0:
            out.append(float("nan"))
            continue
        i = above[0]
        if i == 0:
            out.append(float(y[0]))
            continue
        w = (level - kl[i - 1]) / (kl[i] - kl[i - 1])
        out.append(float(y[i - 1] + w * (y[i] - y[i - 1])))
    return out


def run_summaries(
    evals: pd.DataFrame, kl_levels: Sequence[float], min_loss: float = 0.25
) -> pd.DataFrame:
    """One row per (variant, seed): `peak_and_fall` and gold at each matched KL level."""
    require_columns(evals, REQUIRED, "PPO evaluations")
    rows = []
    for (variant, seed), run in evals.groupby(["variant", "seed"], sort=False):
        row = {"variant": variant, "seed": seed, **peak_and_fall(run, min_loss)}
        for level, g in zip(kl_levels, value_at_kl(run, kl_levels), strict=True):
            row[f"gold_at_kl{level:g}"] = g
        rows.append(row)
    return pd.DataFrame(rows)


def policy_pairs(samples: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Preference pairs from one PPO run's held-out responses, labelled by gold: each prompt's
    response at every evaluation after the first against its response at step 0 (the SFT policy).

    `samples`: a run's `eval_samples` (prompt, step, gold, head0..head{K-1}: the heads' z-scored
    rewards). Returns (r_later (K, N), r_sft (K, N), flipped (N,)): `flipped` is True where the
    later response is gold-worse; pairs whose golds tie are dropped.
    """
    heads = sorted((c for c in samples.columns if c.startswith("head") and c[4:].isdigit()),
                   key=lambda c: int(c[4:]))  # fmt: skip
    require_columns(samples, ("prompt", "step", "gold"), "a run's eval_samples")
    if not heads:
        raise KeyError("a run's eval_samples: missing column(s) head0.. (the heads' rewards)")
    first = samples["step"].min()
    base = samples[samples["step"] == first].drop_duplicates("prompt").set_index("prompt")
    later = samples[samples["step"] > first]
    later = later[later["prompt"].isin(base.index)]
    b = base.loc[later["prompt"]]
    keep = later["gold"].to_numpy() != b["gold"].to_numpy()
    r_later = torch.as_tensor(later[heads].to_numpy(np.float64)[keep].T.copy())
    r_sft = torch.as_tensor(b[heads].to_numpy(np.float64)[keep].T.copy())
    flipped = later["gold"].to_numpy()[keep] < b["gold"].to_numpy()[keep]
    return r_later, r_sft, flipped


def policy_calibration(
    samples: pd.DataFrame,
    n_bins: int,
    uwo_lambda: float,
    methods: Sequence[str] = ("min", "mean", "max"),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibration of σ(agg(r_later) − agg(r_sft)) on a run's `policy_pairs`, labelled by gold:
    `study.rm_eval.calibration`'s (bins, ece), against the gold labels (target 'clean') only."""
    r_later, r_sft, flipped = policy_pairs(samples)
    bins, ece = calibration(r_later, r_sft, flipped, methods, n_bins, uwo_lambda)
    return bins[bins["target"] == "clean"], ece[ece["target"] == "clean"]
