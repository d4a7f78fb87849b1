"""The PPO runs a summary stage reads: each run's held-out evaluations, checked, by variant and
seed, from the tables the PPO stages commit under `results/ppo/<variant>/seed<s>/`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from study.analysis import REQUIRED, require_columns
from study.io import read_table

RESULTS = "results/ppo"


def read_evals(
    variant: str, seed: int, columns: Sequence[str] = REQUIRED, results_dir: str = RESULTS
) -> pd.DataFrame:
    """One run's held-out evaluations (`evals.parquet`); a missing or unreadable table names the
    file and the stage that makes it, a missing column the file and the column."""
    path = Path(results_dir) / variant / f"seed{seed}" / "evals.parquet"
    evals = read_table(path, f"the PPO stage of {variant}, seed {seed}")
    require_columns(evals, columns, str(path))
    return evals


def read_runs(
    runs: Iterable[tuple[str, int]], columns: Sequence[str] = REQUIRED, results_dir: str = RESULTS
) -> pd.DataFrame:
    """The evaluations of every (variant, seed) of `runs`, in that order, in one table."""
    frames = [read_evals(v, s, columns, results_dir) for v, s in runs]
    if not frames:
        raise ValueError("no PPO run to read")
    return pd.concat(frames, ignore_index=True)
