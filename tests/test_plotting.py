"""The one palette: every arm of the study has a colour, distinct from every other arm's."""

from __future__ import annotations

import pytest

from study.plotting import ARM_COLOURS, OKABE_ITO, _shade, colour


def test_every_arm_and_aggregation_of_the_study_has_its_own_colour():
    variants = ["gold", "single"] + [
        f"{arm}_{agg}"
        for arm in ("multihead", "ensemble", "multihead-3ep", "multihead-authors")
        for agg in ("min", "mean", "uwo")
    ]
    colours = [colour(v) for v in variants]
    assert len(set(colours)) == len(colours)
    assert colour("ensemble_min") == colour("ensemble") == OKABE_ITO["orange"]
    assert colour("multihead-k8_min") == colour("multihead") == OKABE_ITO["blue"]
    assert set(ARM_COLOURS.values()) - set(OKABE_ITO.values()) == {"#332288"}
    cheap = [colour(a) for a in ("multihead-bootstrap", "multihead-laplace", "ensemble-dropout",
                                 "ensemble-lora", "single", "multihead", "ensemble")]  # fmt: skip
    assert len(set(cheap)) == len(cheap)


def test_shades_by_hand_and_unknown_names_are_errors():
    assert _shade("#000000", 1.5) == "#808080"  # halfway to white
    assert _shade("#FF8000", 0.5) == "#804000"
    assert _shade("#123456", 1.0) == "#123456"
    with pytest.raises(ValueError, match="no colour for 'bayes_min'"):
        colour("bayes_min")
    with pytest.raises(ValueError, match="no colour for 'multihead-2ep_min'"):
        colour("multihead-2ep_min")  # a new arm, not a sweep over K: it needs its own colour
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        colour("single_median")
