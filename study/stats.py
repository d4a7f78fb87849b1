"""Statistics for reports, over seeds: means with t-intervals, paired differences of two arms that
share their seeds, and the power of such a comparison (scipy.stats for every quantile)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError("a t-interval needs at least 2 values (df >= 1)")
    return float(stats.t.ppf(0.975, df))


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, float)
    return x[np.isfinite(x)]


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, half-width of its 95% t-interval (NaN for one value) and the number of values."""
    x = _finite(values)
    if len(x) == 0:
        return float("nan"), float("nan"), 0
    if len(x) == 1:
        return float(x[0]), float("nan"), 1
    return float(x.mean()), float(t975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))), len(x)


def paired_diff(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """a − b over seeds that both arms share (same preference split, same PPO draws), paired.

    `a[i]` and `b[i]` are the same seed; a pair with a missing (NaN) side is dropped. Returns the
    mean difference, the half-width of its 95% t-interval, the standard deviation of the
    per-seed differences, n and the two-sided p-value of `scipy.stats.ttest_rel`.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired values must be two 1-D arrays of one length, got {a.shape}, {b.shape}"
        )
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = len(d)
    if n < 2:
        return {"diff": float(d.mean()) if n else float("nan"), "ci95": float("nan"),
                "sd": float("nan"), "n": n, "p": float("nan")}  # fmt: skip
    sd = float(d.std(ddof=1))
    p = float(stats.ttest_rel(a[keep], b[keep]).pvalue) if sd > 0 else float("nan")
    return {"diff": float(d.mean()), "ci95": t975(n - 1) * sd / math.sqrt(n), "sd": sd, "n": n,
            "p": p}  # fmt: skip


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference that a two-sided one-sample (paired) t-test on `n`
    differences of standard deviation `sd` detects with probability `power` at level `alpha`
    (solved on the noncentral t, `scipy.stats.nct`)."""
    if n < 2 or not math.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def achieved(delta: float) -> float:
        nc = delta * math.sqrt(n) / sd
        p = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
        if not math.isfinite(p):  # scipy's nct fails far in the tail: there the power is ~1
            p = 1.0 if nc > crit else 0.0
        return p - power

    hi = sd
    while achieved(hi) < 0:
        hi *= 2
    from scipy.optimize import brentq

    return float(brentq(achieved, 0.0, hi, xtol=1e-9 * sd))  # power rises with delta


def seeds_for_margin(sd: float, margin: float, max_n: int = 1000) -> int:
    """The fewest seeds n for which the 95% t-interval of a paired difference with per-seed
    standard deviation `sd` is narrower than ± `margin`: t_{0.975, n−1} · sd / √n < margin, the
    precision that lets an interval centred at zero fall inside a parity margin (beyond `max_n`:
    `max_n` + 1)."""
    if not math.isfinite(sd):
        return -1
    for n in range(2, max_n + 1):
        if t975(n - 1) * sd / math.sqrt(n) < margin:
            return n
    return max_n + 1


def summarise(df: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Per group of `by`: mean, ci95 (half-width) and n of column `value` (one row per seed)."""
    rows = []
    for key, g in df.groupby(list(by), sort=False):
        mean, ci, n = mean_ci(g[value].tolist())
        rows.append(
            {
                **dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                "mean": mean,
                "ci95": ci,
                "n": n,
            }
        )
    return pd.DataFrame(rows)


def fmt(mean: float, ci: float, digits: int = 3) -> str:
    """'0.712 ± 0.011' (or just the mean when there is no interval)."""
    if math.isnan(ci):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def finite_values(x: Sequence[float]) -> np.ndarray:
    """The finite values of `x` as float64 (NaN and infinities dropped)."""
    a = np.asarray(list(x), np.float64)
    return a[np.isfinite(a)]


def welch_diff(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """mean(a) − mean(b), the half-width of its 95% Welch interval and the Welch–Satterthwaite
    degrees of freedom (floored for the t quantile: a slightly wider, conservative interval).
    NaN values are dropped; the half-width is NaN when either side has fewer than 2 values."""
    a, b = finite_values(a), finite_values(b)
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan"), float("nan")
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, 0.0, float(len(a) + len(b) - 2)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return diff, t975(max(1, math.floor(df))) * se, float(df)
