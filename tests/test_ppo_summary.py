"""The PPO grid's summary (study.ppo_summary) against hand-computed runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from study.io import MissingArtifactError, write_table
from study.ppo_summary import (
    gao_fits,
    headline_metrics,
    overoptimised_counts,
    read_grid,
    run_table,
)
from study.stats import summarise


def run(variant: str, seed: int, gold0: float, alpha: float, beta: float) -> pd.DataFrame:
    """Evaluations whose gold gain over step 0 is exactly R(d) = d (alpha - beta log d)."""
    kl = np.array([0.0, 1.0, 4.0, 9.0, 16.0])
    d = np.sqrt(kl)
    gain = np.where(d > 0, d * (alpha - beta * np.log(np.where(d > 0, d, 1))), 0)
    return pd.DataFrame({"variant": variant, "seed": seed, "step": [0, 1, 2, 3, 4], "kl": kl,
                         "proxy": [0.0, 1, 2, 3, 4], "gold": gold0 + gain,
                         "head_corr": [0.9, 0.8, 0.7, 0.6, 0.5], "head_std": [0.1] * 5})  # fmt: skip


def test_gao_fits_recover_each_variants_law_from_every_seeds_gain():
    evals = pd.concat([run("single", 0, 2.0, 1.0, 0.5), run("single", 1, 1.5, 1.0, 0.5),
                       run("ensemble_min", 0, 2.0, 0.4, 0.1)])  # fmt: skip
    fits = gao_fits(evals)
    assert fits["variant"].tolist() == ["single", "ensemble_min"]  # in order of appearance
    assert fits[["alpha", "beta"]].to_numpy() == pytest.approx(np.array([[1.0, 0.5], [0.4, 0.1]]))
    # a negative KL estimate reads as 0 (no information), not as a NaN square root
    neg = run("single", 0, 2.0, 1.0, 0.5)
    neg.loc[0, "kl"] = -0.2
    assert gao_fits(neg)[["alpha", "beta"]].to_numpy()[0] == pytest.approx([1.0, 0.5])


def test_the_run_table_carries_the_heads_at_the_last_evaluation_and_the_counts():
    a, b = run("ensemble_min", 0, 2.0, 1.0, 0.5), run("single", 0, 2.0, 1.0, 0.5)
    runs = run_table(pd.concat([a.iloc[::-1], b]), [1.0, 100.0], 0.25)  # rows out of step order
    r = runs.set_index("variant").loc["ensemble_min"]
    assert r["head_corr_final"] == 0.5 and r["head_std_final"] == 0.1
    assert r["gold_at_kl1"] == pytest.approx(3.0) and np.isnan(r["gold_at_kl100"])
    runs.loc[runs["variant"] == "single", "overoptimised"] = True
    counts = overoptimised_counts(runs)
    assert counts.loc["single"].tolist() == [1, 1] and counts.loc["ensemble_min"].tolist() == [0, 1]


def test_headline_metrics_are_json_with_null_for_an_unreached_level():
    runs = pd.DataFrame({"variant": ["single", "single"], "seed": [0, 1],
                         "gold_at_kl10": [1.0, 2.0], "gold_at_kl20": [np.nan, np.nan],
                         "overoptimised": [True, False]})  # fmt: skip
    summary = pd.concat([summarise(runs, ["variant"], m).assign(measure=m)
                         for m in ("gold_at_kl10", "gold_at_kl20")])  # fmt: skip
    infos = pd.DataFrame({"variant": ["single"] * 2, "seconds": [10.0, 30.0],
                          "score_share": [0.2, 0.4]})  # fmt: skip
    m = headline_metrics({"single": [0, 1]}, summary, overoptimised_counts(runs), infos)
    assert m["single.gold_at_kl10"]["mean"] == 1.5 and m["single.gold_at_kl10"]["n"] == 2
    assert m["single.gold_at_kl20"]["mean"] is None
    assert m["single.overoptimised_runs"] == "1/2" and m["grid_seconds"] == 40.0
    assert m["single.seconds_per_run"] == 20.0 and m["single.score_share"] == pytest.approx(0.3)
    json.dumps(m, allow_nan=False)  # strict JSON


def test_the_grid_is_read_run_by_run_and_a_missing_table_names_its_stage(tmp_path):
    from study.config import load_params
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml", "smoke")
    d = tmp_path / "single" / "seed0"
    ev = run("single", 0, 2.0, 1.0, 0.5)
    write_table(d / "evals.parquet", ev, {})
    write_table(d / "log.parquet", ev.drop(columns="head_corr"), {})
    (d / "train.json").write_text(json.dumps({"variant": "single", "seed": 0, "seconds": 5.0}))
    samples = pd.DataFrame({"prompt": ["p", "q"] * 2, "gold": [0.0, 0.0, 5.0, 5.0],
                            "kl": [0.0, 0.0, 16.0, 16.0], "step": [0, 0, 4, 4]})  # fmt: skip
    write_table(d / "eval_samples.parquet", samples, {})
    grid = read_grid({"single": [0]}, params, str(tmp_path))
    assert len(grid.evals) == 5 and len(grid.logs) == 5 and grid.infos["seconds"].tolist() == [5.0]
    assert (
        grid.wins.loc[0, "variant"] == "single" and grid.cal_ece.empty
    )  # no heads, no calibration
    # gold 5 against 0 on both prompts: the annotator prefers the later response unless it flips
    assert grid.wins.loc[0, "win_rate_final"] == pytest.approx(1 - params.preferences.flip_rate)
    (d / "train.json").unlink()
    with pytest.raises(MissingArtifactError, match=r"seed0/train.json.*single, seed 0"):
        read_grid({"single": [0]}, params, str(tmp_path))
