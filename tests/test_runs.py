"""Reading the PPO runs' committed evaluations (study.runs)."""

from __future__ import annotations

import pandas as pd
import pytest

from study.io import ArtifactError, MissingArtifactError, write_table
from study.runs import read_evals, read_runs


def evals(variant: str, seed: int) -> pd.DataFrame:
    return pd.DataFrame({"variant": variant, "seed": seed, "step": [0, 5], "kl": [0.0, 1.0],
                         "proxy": [0.0, 0.5], "gold": [1.0, 1.2]})  # fmt: skip


def test_runs_are_read_in_the_order_asked_and_checked(tmp_path):
    for v, s in (("single", 0), ("single", 1), ("ensemble_min", 0)):
        write_table(tmp_path / v / f"seed{s}" / "evals.parquet", evals(v, s), {})
    df = read_runs([("ensemble_min", 0), ("single", 1), ("single", 0)], results_dir=str(tmp_path))
    assert list(zip(df["variant"], df["seed"], strict=True))[::2] == [
        ("ensemble_min", 0), ("single", 1), ("single", 0)]  # fmt: skip
    assert len(df) == 6 and df.index.tolist() == list(range(6))
    with pytest.raises(
        KeyError, match=r"single/seed0/evals.parquet: missing column\(s\) head_corr"
    ):
        read_evals("single", 0, ("gold", "head_corr"), str(tmp_path))
    with pytest.raises(MissingArtifactError, match="the PPO stage of single, seed 7"):
        read_runs([("single", 7)], results_dir=str(tmp_path))
    (tmp_path / "single" / "seed1" / "evals.parquet").write_bytes(b"not parquet")
    with pytest.raises(ArtifactError, match=r"single/seed1/evals.parquet: not a readable Parquet"):
        read_evals("single", 1, results_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no PPO run"):
        read_runs([], results_dir=str(tmp_path))
