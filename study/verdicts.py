"""The fixed rules by which a claim's verdict is read off the numbers, and one row of a claims
table.

Verdicts, for a difference d = a − b over seeds with its 95% interval [lo, hi] — **paired** over
seeds where the two arms share them (the same preference split, reward-model seed index and PPO
draws: every PPO and best-of-n comparison between arms), Welch's otherwise:

- a claim that a is **better** than b: *supported* when lo > 0, *not supported* when hi < 0
  (the interval says the opposite), *inconclusive* otherwise;
- a claim that a is **as good as** b (parity within `margin`): *supported* when [lo, hi] lies
  within ±margin, *not supported* when it lies wholly outside (|d| is surely larger than the
  margin), *inconclusive* otherwise;
- a measure at a matched KL level counts only when every seed of both arms reached the level;
  otherwise the row says how many did and gives no verdict;
- with fewer than two values on a side there is no interval: *inconclusive (n = 1)*, with the
  numbers still shown.

Each comparison also states its power: the smallest true difference the design detects with
80% probability (`study.stats.detectable_difference`), and, for a parity claim, how many seeds
would make its interval narrower than the margin (`study.stats.seeds_for_margin`).

The rules are fixed before any run is read; nothing here knows what the paper found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from study.stats import (
    detectable_difference,
    finite_values,
    paired_diff,
    seeds_for_margin,
    t975,
    welch_diff,
)

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


def verdict_better(diff: float, half_width: float) -> str:
    """Claim: a > b (diff = a − b)."""
    if not math.isfinite(diff) or not math.isfinite(half_width):
        return INCONCLUSIVE
    if diff - half_width > 0:
        return SUPPORTED
    if diff + half_width < 0:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def verdict_parity(diff: float, half_width: float, margin: float) -> str:
    """Claim: |a − b| < margin."""
    if not math.isfinite(diff) or not math.isfinite(half_width):
        return INCONCLUSIVE
    lo, hi = diff - half_width, diff + half_width
    if -margin < lo and hi < margin:
        return SUPPORTED
    if lo > margin or hi < -margin:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def verdict_count(k: int, n: int) -> str:
    """Claim: an effect shows in most runs. Supported for at least 2/3 of the runs, not supported
    for none, inconclusive between."""
    if n == 0:
        return INCONCLUSIVE
    if 3 * k >= 2 * n:
        return SUPPORTED
    return NOT_SUPPORTED if k == 0 else INCONCLUSIVE


@dataclass
class Claim:
    claim: str
    source: str
    measure: str
    measured: str
    seeds: str
    verdict: str
    design: str = ""
    detectable: str = ""
    seeds_needed: str = ""


def _mean_str(x: np.ndarray, digits: int) -> str:
    return f"{x.mean():.{digits}f}" if len(x) else "not reached"


def compare(
    claim: str, source: str, measure: str, a_name: str, a: Sequence[float],
    b_name: str, b: Sequence[float], kind: str = "better", margin: float = 0.0, digits: int = 2,
    paired: bool = False, all_seeds: bool = False,
) -> Claim:  # fmt: skip
    """One row of the table comparing a against b (`kind` 'better', 'worse' or 'parity').

    `paired`: a[i] and b[i] are the same seed (`study.stats.paired_diff`); otherwise Welch.
    `all_seeds`: a NaN (a matched-KL level a run never reached) withholds the verdict.
    """
    if kind not in ("better", "worse", "parity"):
        raise ValueError(f"kind must be 'better', 'worse' or 'parity', got {kind!r}")
    a_all, b_all = np.asarray(list(a), np.float64), np.asarray(list(b), np.float64)
    va, vb = finite_values(a_all), finite_values(b_all)
    if paired:
        if len(a_all) != len(b_all):
            raise ValueError(f"{measure}: paired values of unequal length ({a_name}, {b_name})")
        p = paired_diff(a_all, b_all)
        diff, hw, sd, n = p["diff"], p["ci95"], p["sd"], p["n"]
        design = f"paired over {n} seeds"
    else:
        diff, hw, _ = welch_diff(va, vb)
        n = min(len(va), len(vb))
        sd = hw / t975(n - 1) * math.sqrt(n) if n >= 2 and math.isfinite(hw) else float("nan")
        design = "independent (Welch)"
    if kind == "better":
        verdict = verdict_better(diff, hw)
    elif kind == "worse":  # a claim that a is lower than b (a lower ECE, a smaller cost)
        verdict = verdict_better(-diff, hw)
    else:
        verdict = verdict_parity(diff, hw, margin)
    measured = f"{a_name} {_mean_str(va, digits)} vs {b_name} {_mean_str(vb, digits)}"
    if math.isfinite(diff):
        interval = f" ± {hw:.{digits}f}" if math.isfinite(hw) else " (no interval)"
        measured += f": difference {diff:+.{digits}f}{interval}"
    if kind == "parity":
        measured += f" (margin ±{margin:g})"
    if n < 2 and verdict == INCONCLUSIVE:
        verdict = f"{INCONCLUSIVE} (n = {n})"
    if all_seeds and (len(va) < len(a_all) or len(vb) < len(b_all)):
        verdict = (
            f"{INCONCLUSIVE} (level reached by {len(va)}/{len(a_all)} and "
            f"{len(vb)}/{len(b_all)} seeds)"
        )
    seeds = f"{len(va)} vs {len(vb)}" if len(va) != len(vb) else str(len(va))
    detectable = detectable_difference(sd, n)
    needed = seeds_for_margin(sd, margin) if kind == "parity" and math.isfinite(sd) else None
    return Claim(
        claim, source, measure, measured, seeds, verdict, design,
        f"{detectable:.{digits}f}" if math.isfinite(detectable) else "",
        str(needed) if needed is not None else "",
    )  # fmt: skip


def table(claims: Sequence[Claim]) -> pd.DataFrame:
    return pd.DataFrame([asdict(c) for c in claims])


def paired_values(
    table: pd.DataFrame, a: str, b: str, column: str
) -> tuple[np.ndarray, np.ndarray]:
    """`column` of variants a and b on the seeds both have, aligned by seed (one row per
    variant and seed in `table`)."""
    if column not in table.columns:
        raise KeyError(f"runs table: missing column {column} (has {', '.join(table.columns)})")
    sa = table[table["variant"] == a].set_index("seed")[column]
    sb = table[table["variant"] == b].set_index("seed")[column]
    seeds = sorted(set(sa.index) & set(sb.index))
    return sa.loc[seeds].to_numpy(np.float64), sb.loc[seeds].to_numpy(np.float64)
