"""Best-of-n: the analytic KL, the unbiased estimator of the gold score of the pick, and what the
claims read of a curve (its gold at the largest n, whether it turns over)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

_lgamma = np.vectorize(math.lgamma, otypes=[np.float64])


def bon_kl(n: int) -> float:
    """KL(best-of-n || base policy) = log n - (n - 1) / n (Stiennon et al., Gao et al.)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def bon_expected(proxy: np.ndarray, gold: np.ndarray, n: int) -> float:
    """Unbiased estimate of E[gold of the best-of-n pick under `proxy`] from N >= n samples.

    proxy, gold: (N,) scores of N samples of one prompt. Sorting by proxy, the i-th smallest
    (1-indexed) is the pick of a uniformly drawn n-subset with probability C(i-1, n-1) / C(N, n).
    Ties in proxy keep the samples' order (a stable sort).
    """
    proxy, gold = np.asarray(proxy, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if proxy.ndim != 1 or proxy.shape != gold.shape:
        raise ValueError(
            f"proxy and gold must be 1-D of one length, got {proxy.shape} and {gold.shape}"
        )
    big_n = len(proxy)
    if not 1 <= n <= big_n:
        raise ValueError(f"need 1 <= n <= N, got n={n}, N={big_n}")
    order = np.argsort(proxy, kind="stable")
    i = np.arange(1, big_n + 1)
    valid = i >= n
    log_w = np.full(big_n, -np.inf)
    iv = i[valid]  # log C(i-1, n-1) - log C(N, n), through log-gamma for large N
    log_w[valid] = (
        _lgamma(iv)
        - math.lgamma(n)
        - _lgamma(iv - n + 1)
        - (math.lgamma(big_n + 1) - math.lgamma(n + 1) - math.lgamma(big_n - n + 1))
    )
    return float(np.sum(np.exp(log_w) * gold[order]))


def bon_curve(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> pd.DataFrame:
    """Best-of-n curves over prompts: for each n, the mean over P prompts of the expected gold and
    proxy of the pick, their standard errors over prompts, and the analytic KL.

    proxy, gold: (P, N) scores of N samples for each of P prompts.
    """
    proxy, gold = np.asarray(proxy, np.float64), np.asarray(gold, np.float64)
    if proxy.ndim != 2 or proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold must be (P, N) alike, got {proxy.shape} and {gold.shape}")
    rows = []
    p = proxy.shape[0]
    for n in ns:
        g = np.array([bon_expected(proxy[i], gold[i], n) for i in range(p)])
        r = np.array([bon_expected(proxy[i], proxy[i], n) for i in range(p)])
        se = lambda x: float(x.std(ddof=1) / math.sqrt(p)) if p > 1 else float("nan")  # noqa: E731
        rows.append(
            {
                "n": n,
                "kl": bon_kl(n),
                "gold": g.mean(),
                "gold_se": se(g),
                "proxy": r.mean(),
                "proxy_se": se(r),
            }
        )
    return pd.DataFrame(rows)


def bon_turnover(curves: pd.DataFrame, variant: str, n_se: float = 2.0) -> tuple[int, int, str]:
    """Seeds whose best-of-n gold curve turns over: its gold at the largest n is more than `n_se`
    standard errors below its peak. Returns (turned, seeds, a description)."""
    parts, turned = [], 0
    c = curves[curves["variant"] == variant]
    for seed, g in c.groupby("seed"):
        g = g.sort_values("n")
        peak, last = g.loc[g["gold"].idxmax()], g.iloc[-1]
        drop = float(peak["gold"] - last["gold"])
        t = drop > n_se * float(last["gold_se"])
        turned += t
        parts.append(
            f"s{seed}: {peak['gold']:.2f} at n={int(peak['n'])} → {last['gold']:.2f} at "
            f"n={int(last['n'])} (SE {last['gold_se']:.2f})"
        )
    return turned, c["seed"].nunique(), "; ".join(parts)


def bon_final_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Gold at the largest n of each (variant, seed) best-of-n curve: columns variant, seed, gold."""
    last = curves.loc[curves.groupby(["variant", "seed"])["n"].idxmax()]
    return last[["variant", "seed", "gold"]].reset_index(drop=True)
