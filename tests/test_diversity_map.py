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
    """A PPO run evaluated at steps 0, 5, 10 and 15, where KL is 0, 4, 10 and 16, with the given
    gold."""
    return pd.DataFrame({"variant": variant, "seed": seed, "step": [0, 5, 10, 15],
                         "kl": [0.0, 4.0, 10.0, 16.0], "proxy": [0.0, 1.0, 2.0, 3.0],
                         "gold": golds, "head_corr": [corr, 0.5, 0.4, 0.3]})  # fmt: skip


def test_points_pair_each_seed_with_the_single_models_gold_at_the_level():
    # the single model's runs out of seed order: pairing is by seed, not by position
    single = pd.concat([run("single", 1, np.nan, [1, 2, 0.5, 0]),
                        run("single", 0, np.nan, [1, 2, 1.5, 1])])  # fmt: skip
    arm = pd.concat([run("multihead-x_min", 0, 0.9, [1, 2, 2.5, 2]),
                     run("multihead-x_min", 1, 0.7, [1, 2, 1.0, 0]),
                     run("multihead-x_min", 2, 0.8, [1, 2, 2.0, 2])])  # fmt: skip
    p = map_points({"multihead-x": arm}, single, 10, 0.25).set_index("seed")
    # diversity is read at step 0, not later; gold at KL 10 is the step-10 evaluation
    assert p["diversity"].tolist() == pytest.approx([0.1, 0.3, 0.2])
    assert p["protection"].tolist()[:2] == pytest.approx([2.5 - 1.5, 1.0 - 0.5])
    assert np.isnan(p.loc[2, "protection"])  # no single run on seed 2
    assert (p["family"] == "multihead").all()
    # between two evaluations the level is interpolated on KL (not on steps): KL 7 lies half way
    # from KL 4 (step 5) to KL 10 (step 10)
    q = map_points({"multihead-x": arm}, single, 7, 0.25).set_index("seed")
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


def test_seeds_are_resampled_together_across_arms_that_share_them():
    # protection = a per-seed offset (the single model's gold on that seed, shared by every arm)
    # + 0.5 x diversity: resampling the seeds jointly leaves every resample's slope at 0.5, where
    # resampling each arm's seeds on its own would not
    offset = [0.9, -1.2, 0.3, 2.0, -0.4]
    pts = pd.DataFrame([{"arm": f"ensemble-{a}", "seed": s, "diversity": 0.1 * a,
                         "protection": offset[s] + 0.05 * a} for a in range(6) for s in range(5)])  # fmt: skip
    f = fit_relation(pts.sample(frac=1, random_state=0), n_boot=300)
    assert f["slope_lo"] == pytest.approx(0.5) and f["slope_hi"] == pytest.approx(0.5)


def test_a_missing_protection_leaves_its_run_out_and_one_arm_out_is_refitted():
    arms = {f"multihead-{i}": [(0.1 * i, 0.0), (0.1 * i, 0.0)] for i in range(4)}
    pts = points_on(lambda x: 2 * x, arms)
    pts = pd.concat([pts, pd.DataFrame([{"arm": "ensemble", "seed": 0, "diversity": 0.5,
                                         "protection": 3.0},
                                        {"arm": "ensemble", "seed": 1, "diversity": 0.5,
                                         "protection": np.nan}])])  # fmt: skip
    f = fit_relation(pts, n_boot=100)
    assert f["arms"] == 5 and f["runs"] == 9
    # the arm off the line moves the slope most; without it the line's own slope comes back
    assert f["most_influential"] == "ensemble" and f["slope_without_it"] == pytest.approx(2)
    x, y = np.array([0, 0.1, 0.2, 0.3, 0.5]), np.array([0, 0.2, 0.4, 0.6, 3.0])
    assert f["slope"] == pytest.approx(stats.linregress(x, y).slope)
    loo = [stats.linregress(np.delete(x, i), np.delete(y, i)).slope for i in range(5)]
    assert (f["slope_loo_min"], f["slope_loo_max"]) == pytest.approx((min(loo), max(loo)))
    assert "without ensemble" in diversity_questions({"all": f}, 10).loc[0, "measured"]


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
