"""One look for every figure: a colour per arm from the Okabe–Ito palette (safe for the common
colour-vision deficiencies), the same in every figure, and seaborn's theme.

An arm's colour follows its family (`single`, `multihead`, `ensemble`, the multi-head arms of
`reward.arms`, `gold`); an aggregation other than the minimum is a lighter or darker shade of it."""

from __future__ import annotations

import re

# Okabe & Ito (2008), "Color Universal Design"
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
    "grey": "#999999",
}  # fmt: skip
ARM_COLOURS = {
    "gold": OKABE_ITO["black"],
    "single": OKABE_ITO["grey"],
    "multihead": OKABE_ITO["blue"],
    "multihead-3ep": OKABE_ITO["green"],
    "multihead-authors": OKABE_ITO["purple"],
    "ensemble": OKABE_ITO["orange"],
    # cheap uncertainty (make study-cheap); indigo is Tol's, the palette's ninth colour being gold's
    "multihead-bootstrap": OKABE_ITO["sky"],
    "multihead-laplace": "#332288",
    "ensemble-dropout": OKABE_ITO["vermillion"],
    "ensemble-lora": OKABE_ITO["yellow"],
}
# the other aggregations of a family: its colour, lighter (mean) or darker (UWO)
SHADE = {"min": 1.0, "mean": 1.45, "uwo": 0.6, "max": 1.2}


def _shade(hex_colour: str, factor: float) -> str:
    """`hex_colour` lightened towards white (factor > 1) or darkened (factor < 1)."""
    rgb = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    if factor >= 1:
        rgb = [c + (1 - c) * (factor - 1) for c in rgb]
    else:
        rgb = [c * factor for c in rgb]
    return "#" + "".join(f"{round(min(max(c, 0.0), 1.0) * 255):02X}" for c in rgb)


def colour(variant: str) -> str:
    """The colour of an arm or PPO variant: 'ensemble_min', 'multihead-3ep', 'multihead-k8_mean',
    'single', 'gold'. A head-count arm of the sweep ('multihead-k8') takes its family's colour;
    any other arm without its own colour is an error (so that no figure silently gives it the
    colour another arm has)."""
    arm, _, agg = variant.partition("_")
    if agg and agg not in SHADE:
        raise ValueError(f"colour: unknown aggregation {agg!r} in {variant!r}")
    sweep = re.fullmatch(r"(.+)-k\d+", arm)  # a head-count arm of the sweep: its family's colour
    base = ARM_COLOURS.get(arm) or (ARM_COLOURS.get(sweep.group(1)) if sweep else None)
    if base is None:
        raise ValueError(f"colour: no colour for {variant!r} (families: {', '.join(ARM_COLOURS)})")
    return _shade(base, SHADE[agg]) if agg else base


def use_style() -> None:
    """seaborn's theme for every figure: white grid, the notebook's context, Okabe–Ito cycle."""
    import seaborn as sns

    sns.set_theme(
        context="notebook",
        style="whitegrid",
        palette=list(OKABE_ITO.values())[1:],
        rc={"figure.dpi": 100, "savefig.dpi": 150, "axes.titlesize": 10},
    )
