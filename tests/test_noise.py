"""The label-noise sweep: labels redrawn from the clean ones (nested across rates, the same draw
for any order of the table), the arms that carry them, and the sweep's table and claims against
hand-computed cases."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from study.config import NOISE_RATES, ConfigError, load_params, with_override
from study.noise import noise_arm, noise_claims, noise_summary, rm_calibration
from study.preferences import PreferenceDataError, relabel, validate_preferences
from study.proxy import variant_spec


def pairs(n: int = 4000, flip_rate: float = 0.25, seed: int = 0) -> pd.DataFrame:
    """A table shaped like the world's preference split: gold scores, labels flipped at
    `flip_rate`, sides and gold columns consistent with `flipped`."""
    rng = np.random.default_rng(seed)
    g_a, g_b = rng.normal(size=n), rng.normal(size=n)
    better_a = g_a > g_b
    flipped = rng.random(n) < flip_rate
    chosen_is_a = better_a ^ flipped
    return pd.DataFrame(
        {
            "pair_id": np.arange(n),
            "prompt": [f"p{i}" for i in range(n)],
            "chosen": np.where(
                chosen_is_a, [f"a{i}" for i in range(n)], [f"b{i}" for i in range(n)]
            ),
            "rejected": np.where(
                chosen_is_a, [f"b{i}" for i in range(n)], [f"a{i}" for i in range(n)]
            ),
            "chosen_finished": chosen_is_a,
            "rejected_finished": ~chosen_is_a,
            "gold_chosen": np.where(chosen_is_a, g_a, g_b),
            "gold_rejected": np.where(chosen_is_a, g_b, g_a),
            "flipped": flipped,
        }
    )


def test_relabel_at_zero_gives_the_clean_labels():
    out = relabel(pairs(), 0.0, seed=0)
    assert not out["flipped"].any()
    assert (out["gold_chosen"] > out["gold_rejected"]).all()
    validate_preferences(out, "relabelled")  # sides, gold columns and flags agree


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.4])
def test_relabel_flips_the_share_it_is_given(rate):
    out = relabel(pairs(), rate, seed=0)
    n = len(out)
    # three binomial standard deviations
    assert abs(out["flipped"].mean() - rate) < 3 * np.sqrt(rate * (1 - rate) / n)
    assert ((out["gold_chosen"] < out["gold_rejected"]) == out["flipped"]).all()
    validate_preferences(out, "relabelled")


def test_relabel_keeps_every_pair_and_its_responses():
    df = pairs()
    out = relabel(df, 0.4, seed=3)
    assert out["pair_id"].tolist() == df["pair_id"].tolist()
    before = {frozenset(x) for x in zip(df["chosen"], df["rejected"], strict=True)}
    after = {frozenset(x) for x in zip(out["chosen"], out["rejected"], strict=True)}
    assert before == after
    # the finished flags travel with their response
    was = dict(zip(df["chosen"], df["chosen_finished"], strict=True)) | dict(
        zip(df["rejected"], df["rejected_finished"], strict=True)
    )
    assert all(was[r] == f for r, f in zip(out["chosen"], out["chosen_finished"], strict=True))


def test_noise_levels_are_nested():
    df = pairs()
    f10, f25, f40 = (relabel(df, r, seed=0)["flipped"].to_numpy() for r in (0.1, 0.25, 0.4))
    assert (f10 <= f25).all() and (f25 <= f40).all() and f10.sum() < f25.sum() < f40.sum()


def test_the_draw_belongs_to_the_pair_not_the_row():
    df = pairs()
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    a = relabel(df, 0.25, seed=0).set_index("pair_id")["flipped"]
    b = relabel(shuffled, 0.25, seed=0).set_index("pair_id")["flipped"]
    assert a.equals(b.loc[a.index])
    assert not relabel(df, 0.25, seed=1)["flipped"].equals(relabel(df, 0.25, seed=0)["flipped"])


def test_relabel_refuses_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 0\.5\)"):
        relabel(pairs(10), 0.5, seed=0)
    with pytest.raises(PreferenceDataError, match="pair_id"):
        relabel(pairs(10).drop(columns="pair_id"), 0.1, seed=0)


def test_the_noise_arms_carry_their_rate():
    reward = load_params("params.yaml", "default").reward
    for family in ("single", "multihead", "ensemble"):
        for rate in NOISE_RATES:
            arm = noise_arm(family, rate, world_rate=0.25)
            fam, cfg = reward.arm(arm)
            assert fam == family and cfg.label_noise == rate and cfg.k == reward.arm(family)[1].k
        assert noise_arm(family, 0.25, world_rate=0.25) == family
    assert reward.label_noise is None  # the headline keeps the world's labels
    with pytest.raises(ConfigError, match=r"reward\.label_noise"):
        with_override(reward, "label_noise=0.5")
    assert variant_spec("single-noise10_min") == ("single-noise10", "min")
    with pytest.raises(ValueError):
        variant_spec("single_min")


def test_rm_calibration_by_hand():
    # two heads, four pairs; the minimum's margin is (min chosen) - (min rejected)
    rc = np.array([[1.0, 0.0, 2.0, -1.0], [0.5, 1.0, 3.0, 0.0]])
    rr = np.array([[0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    val_rewards = pd.DataFrame(
        {
            "pair_id": np.tile(np.arange(4), 2),
            "head": np.repeat([0, 1], 4),
            "r_chosen": rc.ravel(),
            "r_rejected": rr.ravel(),
        }
    )
    flipped = np.array([False, False, True, False])
    val_pairs = pd.DataFrame({"pair_id": np.arange(4), "flipped": flipped})
    out = rm_calibration(val_rewards, val_pairs, n_bins=10, uwo_lambda=0.5)
    margin = rc.min(0) - rr.min(0)  # 0.5, -0.5, 2.0, -1.0
    assert out["acc_clean_min"] == pytest.approx(np.mean((margin > 0) != flipped))  # 0.25
    # ECE against the clean labels with every pair in both orders, by hand
    p = 1 / (1 + np.exp(-margin))
    prob = np.concatenate([p, 1 - p])
    y = np.concatenate([(~flipped).astype(float), flipped.astype(float)])
    bins = np.clip(np.digitize(prob, np.linspace(0, 1, 11)[1:-1]), 0, 9)
    ece = sum(
        (bins == b).mean() * abs(y[bins == b].mean() - prob[bins == b].mean())
        for b in np.unique(bins)
    )
    assert out["ece_clean_min"] == pytest.approx(ece)


def sweep_rows() -> pd.DataFrame:
    """Three seeds; the ensemble beats the single model by 0.1 at flip rate 0 and by 0.5 (+ a
    per-seed wobble) at 0.4; the multi-head model ties it."""
    rows = []
    wobble = [0.0, 0.1, -0.05]
    for seed in range(3):
        for rate in (0.0, 0.4):
            base = 2.0 - rate + 0.05 * seed
            gain = {"single": 0.0, "multihead": 0.0, "ensemble": 0.1 if rate == 0 else 0.5}
            for family in ("single", "multihead", "ensemble"):
                g = base + gain[family] + (wobble[seed] if family == "ensemble" and rate else 0)
                rows.append({"family": family, "flip_rate": rate, "seed": seed,
                             "gold_at_kl10": g, "gold_drop": 0.2, "ece_clean_min": 0.1,
                             "overoptimised": family == "single"})  # fmt: skip
    return pd.DataFrame(rows)


def test_noise_claims_against_a_hand_computed_case():
    claims = noise_claims(sweep_rows(), 10.0).set_index("claim")
    grows = claims.loc[
        "The ensemble minimum's advantage over a single RM grows with label noise "
        "(flip rate 0.4 against 0)"
    ]
    adv_hi = 0.5 + np.array([0.0, 0.1, -0.05])
    adv_lo = np.full(3, 0.1)
    d = adv_hi - adv_lo
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert f"difference {d.mean():+.2f} ± {half:.2f}" in grows["measured"]
    assert grows["design"] == "paired over 3 seeds"
    assert grows["verdict"] == "supported"  # 0.42 ± 0.19 excludes zero
    tie = claims.loc["At flip rate 0.4, the multihead minimum mitigates overoptimisation against "
                     "a single RM"]  # fmt: skip
    assert tie["verdict"].startswith("inconclusive") or tie["verdict"] == "not supported"


def test_noise_summary_counts_and_means():
    s = noise_summary(sweep_rows(), 10.0)
    assert s["family"].tolist() == ["single"] * 2 + ["multihead"] * 2 + ["ensemble"] * 2
    ens = s[(s["family"] == "ensemble") & (s["flip_rate"] == 0.4)].iloc[0]
    assert ens["gold"] == pytest.approx(np.mean([2.1, 2.25, 2.15]))
    assert ens["seeds"] == 3 and ens["overoptimised"] == 0
    assert s.loc[s["family"] == "single", "overoptimised"].tolist() == [3, 3]


def test_noise_summary_carries_the_win_rate_where_the_rows_have_it():
    rows = sweep_rows()
    assert "win_rate" not in noise_summary(rows, 10.0)
    rows["win_rate_at_kl10"] = np.where(rows["family"] == "ensemble", 0.6, 0.4)
    s = noise_summary(rows, 10.0).set_index(["family", "flip_rate"])
    assert s.loc[("ensemble", 0.4), "win_rate"] == pytest.approx(0.6)
    assert s.loc[("single", 0.0), "win_rate"] == pytest.approx(0.4)
