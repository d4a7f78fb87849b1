"""The head-diversity map (study.diversity_map) against hand-computed cases and scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from study.diversity_map import (
    arm_summary,
    diversity_questions,
    fit_relation,
    load_evals,
    map_points,
)
from study.io import MissingArtifactError, write_table


def run(variant: str, seed: int, corr: float, golds: list[float]) -> pd.DataFrame:
    """A PPO run evaluated at KL 0, 5, 10 and 15 (steps 0, 5, 10, 15) with the given gold."""
    return pd.DataFrame({"variant": variant, "seed": seed, "step": [0, 5, 10, 15],
                         "kl": [0.0, 5.0, 10.0, 15.0], "proxy": [0.0, 1.0, 2.0, 3.0],
                         "gold": golds, "head_corr": [corr, 0.5, 0.4, 0.3]})  # fmt: skip


def test_points_pair_each_seed_with_the_single_models_gold_at_the_level():
    single = pd.concat([run("single", 0, np.nan, [1, 2, 1.5, 1]),
                        run("single", 1, np.nan, [1, 2, 0.5, 0])])  # fmt: skip
    arm = pd.concat([run("multihead-x_min", 0, 0.9, [1, 2, 2.5, 2]),
                     run("multihead-x_min", 1, 0.7, [1, 2, 1.0, 0]),
                     run("multihead-x_min", 2, 0.8, [1, 2, 2.0, 2])])  # fmt: skip
    p = map_points({"multihead-x": arm}, single, 10, 0.25).set_index("seed")
    # diversity is read at step 0, not later; gold at KL 10 is the step-10 evaluation
    assert p["diversity"].tolist() == pytest.approx([0.1, 0.3, 0.2])
    assert p["protection"].tolist()[:2] == pytest.approx([2.5 - 1.5, 1.0 - 0.5])
    assert np.isnan(p.loc[2, "protection"])  # no single run on seed 2
    assert (p["family"] == "multihead").all()
    # between two evaluations the level is interpolated: KL 7.5 is halfway from step 5 to 10
    q = map_points({"multihead-x": arm}, single, 7.5, 0.25).set_index("seed")
    assert q.loc[0, "protection"] == pytest.approx((2 + 2.5) / 2 - (2 + 1.5) / 2)
    s = arm_summary(p.reset_index())
    assert s.loc[0, "diversity"] == pytest.approx(0.2) and s.loc[0, "seeds"] == 2


def test_points_need_a_step_zero_evaluation_and_heads():
    single = run("single", 0, np.nan, [1, 2, 1.5, 1])
    late = run("ensemble_min", 0, 0.5, [1, 2, 2, 2]).iloc[1:]
    with pytest.raises(ValueError, match="ensemble, seed 0: no step-0 evaluation"):
        map_points({"ensemble": late}, single, 10, 0.25)
    with pytest.raises(ValueError, match="multihead and ensemble arms only"):
        map_points({"single-noise10": single}, single, 10, 0.25)
    with pytest.raises(KeyError, match="head_corr"):
        map_points({"ensemble": late.drop(columns="head_corr")}, single, 10, 0.25)


def points_on(line, arms: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    return pd.DataFrame([{"arm": a, "seed": i, "diversity": x, "protection": line(x) + e}
                         for a, runs in arms.items() for i, (x, e) in enumerate(runs)])  # fmt: skip


def test_a_line_through_every_run_is_recovered_with_a_degenerate_interval():
    arms = {f"multihead-{i}": [(0.1 * i, 0.0), (0.1 * i + 0.02, 0.0)] for i in range(5)}
    f = fit_relation(points_on(lambda x: 1 + 2 * x, arms), n_boot=200)
    assert f["slope"] == pytest.approx(2) and f["intercept"] == pytest.approx(1)
    assert f["slope_lo"] == pytest.approx(2) and f["slope_hi"] == pytest.approx(2)
    assert f["spearman"] == pytest.approx(1) and f["arms"] == 5 and f["runs"] == 10
    rows = diversity_questions({"all": f}, 10)
    assert rows.loc[0, "verdict"] == "supported" and "+2.00" in rows.loc[0, "measured"]
    down = fit_relation(points_on(lambda x: 1 - 2 * x, arms), n_boot=200)
    assert diversity_questions({"all": down}, 10).loc[0, "verdict"] == "not supported"


def test_the_fit_is_least_squares_over_arm_means_and_its_interval_covers_noise():
    rng = np.random.default_rng(3)
    arms = {f"ensemble-{i}": [(x, e) for x, e in zip(rng.uniform(0, 1, 4), rng.normal(0, 0.5, 4),
                                                      strict=True)] for i in range(8)}  # fmt: skip
    pts = points_on(lambda x: 0.3 * x, arms)
    means = pts.groupby("arm")[["diversity", "protection"]].mean()
    ref = stats.linregress(means["diversity"], means["protection"])
    f = fit_relation(pts, n_boot=500, seed=1)
    assert f["slope"] == pytest.approx(ref.slope) and f["intercept"] == pytest.approx(ref.intercept)
    assert f["spearman"] == pytest.approx(stats.spearmanr(means["diversity"],
                                                          means["protection"]).statistic)  # fmt: skip
    assert f["slope_lo"] < f["slope"] < f["slope_hi"]
    assert diversity_questions({"all": f}, 10).loc[0, "verdict"] in ("supported", "inconclusive")
    # a subset of arms is fitted on its own; too few arms is an error
    assert fit_relation(pts, list(arms)[:3], n_boot=50)["arms"] == 3
    with pytest.raises(ValueError, match="at least 3 arms, got 2"):
        fit_relation(pts, list(arms)[:2])


def test_no_fit_leaves_a_claims_table_with_its_columns_only():
    rows = diversity_questions({}, 10)
    assert rows.empty and {"claim", "measured", "verdict"} <= set(rows.columns)


def test_a_missing_run_names_the_file_and_what_makes_it(tmp_path):
    write_table(tmp_path / "single/seed0/evals.parquet", run("single", 0, np.nan, [1, 2, 1, 1]), {})
    write_table(tmp_path / "ensemble_min/seed0/evals.parquet",
                run("ensemble_min", 0, 0.5, [1, 2, 2, 2]), {})  # fmt: skip
    evals, single = load_evals({"ensemble": [0]}, str(tmp_path))
    assert len(evals["ensemble"]) == 4 and len(single) == 4
    with pytest.raises(
        MissingArtifactError, match=r"ensemble_min/seed1/evals.parquet.*ensemble_min, seed 1"
    ):
        load_evals({"ensemble": [0, 1]}, str(tmp_path))
