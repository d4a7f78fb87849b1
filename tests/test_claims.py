"""The claims table's statistics and verdict rules on hand-computed cases, and its errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from study.bon import bon_final_table, bon_turnover
from study.claims import build_claims
from study.config import ConfigError, load_params, with_overrides
from study.stats import welch_diff
from study.verdicts import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    compare,
    paired_values,
    verdict_better,
    verdict_count,
    verdict_parity,
)
from tests.conftest import ROOT


def test_welch_equal_variances_by_hand():
    # variances 1 and 1, n = 3 each: se = sqrt(1/3 + 1/3), Welch df = (2/3)^2 / (2 (1/3)^2 / 2) = 4
    diff, hw, df = welch_diff([1, 2, 3], [4, 5, 6])
    assert diff == -3.0 and df == pytest.approx(4.0)
    assert hw == pytest.approx(2.776445 * math.sqrt(2 / 3), rel=1e-6)
    assert verdict_better(diff, hw) == NOT_SUPPORTED
    assert verdict_better(-diff, hw) == SUPPORTED


def test_welch_one_side_without_spread_by_hand():
    # a: mean 1, variance 3 -> va = 1; b: no spread -> df = n_a - 1 = 2, t = 4.303
    diff, hw, df = welch_diff([0, 0, 3], [5, 5])
    assert (diff, df) == (-4.0, pytest.approx(2.0)) and hw == pytest.approx(4.302653, rel=1e-6)
    assert verdict_better(diff, hw) == INCONCLUSIVE


def test_welch_drops_nan_and_has_no_interval_for_one_value():
    diff, hw, _ = welch_diff([2.0, float("nan")], [1.0, 1.5])
    assert diff == 0.75 and math.isnan(hw)
    row = compare("c", "s", "m", "a", [2.0], "b", [1.0, 1.5])
    assert row.verdict == f"{INCONCLUSIVE} (n = 1)" and "no interval" in row.measured
    never = compare("c", "s", "m", "a", [float("nan")] * 3, "b", [1.0, 1.5, 2.0], digits=1)
    assert never.measured == "a not reached vs b 1.5" and never.verdict == f"{INCONCLUSIVE} (n = 0)"


@pytest.mark.parametrize(
    ("diff", "hw", "verdict"),
    [(0.05, 0.1, SUPPORTED), (0.5, 0.2, NOT_SUPPORTED), (-0.5, 0.2, NOT_SUPPORTED),
     (0.15, 0.1, INCONCLUSIVE), (0.0, float("nan"), INCONCLUSIVE)],
)  # fmt: skip
def test_parity_rule(diff, hw, verdict):
    assert verdict_parity(diff, hw, 0.2) == verdict


def test_count_rule():
    assert [verdict_count(k, 3) for k in range(4)] == [
        NOT_SUPPORTED, INCONCLUSIVE, SUPPORTED, SUPPORTED,
    ]  # fmt: skip


def _curves():
    rows = []
    for seed, golds in ((0, [1.0, 2.0, 1.5]), (1, [1.0, 1.1, 1.2])):
        for n, g in zip((1, 2, 4), golds, strict=True):
            rows.append({"variant": "single", "seed": seed, "n": n, "gold": g, "gold_se": 0.1})
    return pd.DataFrame(rows)


def test_bon_turnover_and_final_by_hand():
    turned, n, desc = bon_turnover(_curves(), "single")
    assert (turned, n) == (1, 2)  # seed 0 drops 0.5 > 2 x 0.1; seed 1 never falls
    assert "s0: 2.00 at n=2 → 1.50 at n=4" in desc
    final = bon_final_table(_curves())
    assert final.to_dict("list") == {"variant": ["single"] * 2, "seed": [0, 1], "gold": [1.5, 1.2]}


ARMS = ["single", "ensemble_min", "ensemble_mean", "ensemble_uwo", "multihead_min",
        "multihead_mean", "multihead_uwo", "multihead-3ep_min", "multihead-authors_min"]  # fmt: skip


def _inputs():
    rng = np.random.default_rng(0)
    runs = pd.DataFrame(
        [
            {"variant": v, "seed": s, "overoptimised": v == "single",
             "gold_final": 1.0 + (v != "single") + 0.01 * rng.normal(),
             "gold_at_kl2": 2.0 + 0.01 * rng.normal(),
             # the 3-epoch multi-head arm's seed 2 never reaches KL 5
             "gold_at_kl5": float("nan") if (v, s) == ("multihead-3ep_min", 2)
             else 2.0 + 0.01 * rng.normal()}
            for v in ARMS for s in range(3)
        ]
    )  # fmt: skip
    ece = pd.DataFrame(
        [
            {"family": f, "seed": s, "method": m, "target": "clean",
             "ece": {"min": 0.05, "mean": 0.1, "max": 0.2}[m] + 0.001 * s}
            for f in ("multihead", "ensemble") for m in ("min", "mean", "max") for s in range(3)
        ]
    )  # fmt: skip
    cost = {"multihead_train_epoch_x": 1.0, "ensemble_train_total_x": 15.0,
            "multihead_extra_parameters": 516}  # fmt: skip
    curves = pd.concat([_curves().assign(variant=v) for v in ARMS], ignore_index=True)
    return runs, ece, cost, curves


def test_claims_table_reads_the_numbers():
    t = build_claims(*_inputs(), claims_kl=5.0, margin=0.2, kl_levels=[2.0, 5.0, 10.0])
    assert {"claim", "source", "measure", "measured", "seeds", "verdict", "design",
            "detectable", "seeds_needed"} <= set(t.columns)  # fmt: skip
    first = t.iloc[0]
    assert first["measured"] == "3 of 3 seeds" and first["verdict"] == SUPPORTED
    # every arm has its own rows against the single model and against the ensemble
    for arm in ("ensemble_min", "multihead_min", "multihead-3ep_min", "multihead-authors_min"):
        vs_single = t[
            t["measured"].str.startswith(f"{arm} ") & t["measured"].str.contains(" vs single ")
        ]
        assert set(vs_single["measure"]) == {"PPO gold at KL 2", "PPO gold at KL 5",
                                             "BoN gold at the largest n"}, arm  # fmt: skip
        if arm != "ensemble_min":
            vs_ens = t[t["measured"].str.startswith(f"{arm} ")
                       & t["measured"].str.contains(" vs ensemble_min ")]  # fmt: skip
            assert len(vs_ens) == 4, arm  # KL 2, KL 5, final gold, best-of-n
    ppo_rows = t[t["measure"].str.match(r"PPO (gold at KL \d+|final gold)$")]
    assert ppo_rows["design"].str.startswith("paired over").all()
    matched = t[t["claim"].str.contains("epoch-matched") & t["claim"].str.contains("as well")]
    verdicts = dict(zip(matched["measure"], matched["verdict"], strict=True))
    assert verdicts["PPO final gold"] == SUPPORTED  # 2.0 vs 2.0 within ±0.2, tiny spread
    assert verdicts["PPO gold at KL 2"] == SUPPORTED
    # one seed never reached KL 5: no verdict on the other two
    assert verdicts["PPO gold at KL 5"] == f"{INCONCLUSIVE} (level reached by 2/3 and 3/3 seeds)"
    mitigates = t[(t["measure"] == "PPO gold at KL 2") & t["measured"].str.contains(" vs single ")]
    assert set(mitigates["verdict"]) == {INCONCLUSIVE}  # 2.0 vs 2.0: no gain to see
    ece_rows = t[t["measure"].str.startswith("ECE")]
    assert len(ece_rows) == 4 and set(ece_rows["verdict"]) == {SUPPORTED}


def test_paired_values_align_by_seed():
    runs = pd.DataFrame({"variant": ["a", "a", "a", "b", "b"], "seed": [2, 0, 1, 0, 2],
                         "x": [12.0, 10.0, 11.0, 20.0, 22.0]})  # fmt: skip
    a, b = paired_values(runs, "a", "b", "x")
    assert a.tolist() == [10.0, 12.0] and b.tolist() == [20.0, 22.0]


def test_claims_table_names_a_missing_column():
    runs, ece, cost, curves = _inputs()
    with pytest.raises(KeyError, match="gold_at_kl5"):
        build_claims(runs.drop(columns="gold_at_kl5"), ece, cost, curves, 5.0, 0.2)
    with pytest.raises(KeyError, match=r"ece\.csv: missing column\(s\) ece"):
        build_claims(runs, ece.drop(columns="ece"), cost, curves, 5.0, 0.2)
    with pytest.raises(KeyError, match="ensemble_train_total_x"):
        build_claims(runs, ece, {"multihead_train_epoch_x": 1.0}, curves, 5.0, 0.2)


def test_with_overrides_checks_section_key_and_type():
    params = load_params(ROOT / "params.yaml", "smoke")
    changed = with_overrides(params, ["reward.k=8", "reward.epochs_multihead=3"])
    assert (changed.reward.k, changed.reward.epochs_multihead) == (8, 3)
    assert params.reward.k == 3  # the original is untouched
    for bad, match in (
        ("k=8", "section.key=value"),
        ("rewards.k=8", "section.key=value"),
        ("reward.heads=8", "unknown key"),
        ("reward.k=many", "expected int"),
    ):
        with pytest.raises(ConfigError, match=match):
            with_overrides(params, [bad])


def test_finding_states_the_paired_difference_and_its_verdict_by_hand():
    from scipy import stats

    from study.claims import finding

    runs = pd.DataFrame({"variant": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                         "gold_at_kl5": [2.0, 2.6, 3.1, 1.5, 2.0, 2.5]})  # fmt: skip
    d = np.array([0.5, 0.6, 0.6])  # a - b, seed by seed
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)  # 0.143
    assert f"{half:.2f}" == "0.14"
    assert finding(runs, "a", "b", "gold_at_kl5") == (
        "gold at KL 5: a 2.57 vs b 2.00: difference +0.57 ± 0.14 (paired over 3 seeds), supported"
    )
    # as a parity claim, the whole interval lies outside ±0.2
    assert finding(runs, "a", "b", "gold_at_kl5", margin=0.2).endswith(", not supported")
