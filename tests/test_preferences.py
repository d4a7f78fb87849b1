import numpy as np
import pandas as pd
import pytest

from study.config.world import GoldConfig
from study.preferences import (
    PreferenceDataError,
    assign_splits,
    label_pairs,
    validate_preferences,
)
from study.world.gold import EmbeddedGold, GoldScores


class LengthGold:
    """A hand-made gold for tests: the number of words."""

    def score(self, prompts, responses, finished=None):
        total = np.array([len(r.split()) for r in responses], dtype=float)
        return GoldScores(total=total, contributions={"words": total})


def test_labels_follow_gold_where_not_flipped():
    a = ["one two three", "one", "x y"]
    b = ["one", "one two", "p q"]  # the last pair ties and is dropped
    df = label_pairs(
        ["p"] * 3, a, b, [True] * 3, [True] * 3, LengthGold(), 0.0, np.random.default_rng(0)
    )
    assert df["chosen"].tolist() == ["one two three", "one two"]
    assert df["rejected"].tolist() == ["one", "one"]
    assert df["gold_chosen"].tolist() == [3.0, 2.0]
    assert df["gold_margin"].tolist() == [2.0, 1.0]
    assert not df["flipped"].any()


def test_flips_swap_the_labels_and_are_recorded():
    a, b = ["one two"] * 4, ["one"] * 4
    df = label_pairs(
        ["p"] * 4,
        a,
        b,
        [True, False, True, True],
        [True] * 4,
        LengthGold(),
        0.49,
        np.random.default_rng(3),
    )
    for _, row in df.iterrows():
        assert (row["chosen"] == "one") == row["flipped"]
        assert (row["gold_chosen"] < row["gold_rejected"]) == row["flipped"]
    # each finished flag travels with its response, whichever side the label put it on
    assert len(df) == 4
    for i, row in df.iterrows():
        side = "chosen" if row["chosen"] == "one two" else "rejected"
        assert row[f"{side}_finished"] == [True, False, True, True][i]
        assert row[f"{'rejected' if side == 'chosen' else 'chosen'}_finished"]


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.4])
def test_measured_flip_rate_is_within_two_points(rate):
    n = 20000
    a, b = ["one two"] * n, ["one"] * n
    df = label_pairs(
        ["p"] * n, a, b, [True] * n, [True] * n, LengthGold(), rate, np.random.default_rng(0)
    )
    assert abs(df["flipped"].mean() - rate) < 0.02


def test_splits_are_exact_and_seeded():
    s = assign_splits(1000, 0.15, np.random.default_rng(0))
    assert (s == "val").sum() == 150
    assert (s == assign_splits(1000, 0.15, np.random.default_rng(0))).all()


def good_frame():
    gold = EmbeddedGold(GoldConfig())
    p = "write a calm note about ocean ."
    return label_pairs(
        [p, p],
        ["the waves seems calm .", "i love the boat ."],
        ["waves waves", "the"],
        [True, True],
        [True, True],
        gold,
        0.0,
        np.random.default_rng(0),
    )


def test_a_well_formed_frame_validates():
    df = good_frame()
    assert validate_preferences(df, "mem") is df


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.drop(columns=["rejected"]), "missing column(s) rejected"),
        (lambda d: d.assign(chosen=["ok", ""]), "row 1: column 'chosen' is empty"),
        (lambda d: d.assign(rejected=["ok", "   "]), "row 1: column 'rejected' is empty"),
        (lambda d: d.assign(prompt=[None, "p"]), "row 0: column 'prompt' must be text"),
        (lambda d: d.assign(label=["chosen", "better"]), "row 1: column 'label' is 'better'"),
        (lambda d: d.assign(flipped=[0, 1]), "column 'flipped' must be boolean"),
        (lambda d: d.assign(flipped=[True, False]), "row 0: 'flipped' is True but gold says"),
        (lambda d: d.iloc[:0], "no preference pairs (0 rows)"),
        (lambda d: d.assign(rejected=d["chosen"]), "row 0: 'chosen' and 'rejected' are the same"),
        (lambda d: d.assign(gold_chosen=[1.0, float("nan")]), "row 1: column 'gold_chosen' is nan"),
        (lambda d: d.assign(pair_id=[7, 7]), "row 1: pair_id 7 appears more than once"),
    ],
)
def test_malformed_rows_are_named(mutate, fragment):
    with pytest.raises(PreferenceDataError) as err:
        validate_preferences(mutate(good_frame()), "data/train.parquet")
    assert fragment in str(err.value)
    assert "data/train.parquet" in str(err.value)


def test_frame_round_trips_through_parquet(tmp_path):
    df = good_frame()
    df.to_parquet(tmp_path / "p.parquet")
    back = pd.read_parquet(tmp_path / "p.parquet")
    validate_preferences(back, "p.parquet")
    assert back["flipped"].dtype == bool


def test_dataset_labels_can_be_kept_with_gold_disagreement_marked():
    a, b = ["one", "one two three"], ["one two", "one"]
    df = label_pairs(
        ["p"] * 2,
        a,
        b,
        [True] * 2,
        [True] * 2,
        LengthGold(),
        0.25,
        np.random.default_rng(0),
        labels_from_gold=False,
    )
    assert df["chosen"].tolist() == a and df["rejected"].tolist() == b
    assert df["flipped"].tolist() == [True, False]  # gold prefers b in the first pair
    validate_preferences(df, "kept")
