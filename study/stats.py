"""Small statistics for reports: means with t-intervals over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

# two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (beyond: the normal 1.96)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError("a t-interval needs at least 2 values (df >= 1)")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, half-width of its 95% t-interval (NaN for one value) and the number of values."""
    x = np.asarray([v for v in values if not (isinstance(v, float) and math.isnan(v))], float)
    if len(x) == 0:
        return float("nan"), float("nan"), 0
    if len(x) == 1:
        return float(x[0]), float("nan"), 1
    return float(x.mean()), float(t975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))), len(x)


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
