"""Preference pairs: gold labelling, seeded label noise, splits, and validation of rows.

A pair is two responses to one prompt. The gold reward decides which is chosen; then a seeded
Bernoulli(flip_rate) draw swaps a share of the labels (Coste et al. flip 25%), and the `flipped`
column records which, so the clean label can always be recovered: the clean chosen is `chosen`
where not flipped and `rejected` where flipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from study.io import read_table
from study.world.gold import GoldReward

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")


class PreferenceDataError(ValueError):
    """A malformed preference table; the message names the file, the row and the column."""


def label_pairs(
    prompts: Sequence[str],
    response_a: Sequence[str],
    response_b: Sequence[str],
    finished_a: Sequence[bool],
    finished_b: Sequence[bool],
    gold: GoldReward,
    flip_rate: float,
    rng: np.random.Generator,
    labels_from_gold: bool = True,
) -> pd.DataFrame:
    """Gold-label B pairs, flip a Bernoulli(flip_rate) share, and return one row per pair.

    With `labels_from_gold=False` (a dataset's own labels kept), `response_a` stays chosen and
    `flipped` marks the pairs where gold disagrees with the dataset's label.

    Exact gold ties carry no preference and are dropped (the returned frame is shorter).
    Columns: prompt, chosen, rejected, chosen_finished, rejected_finished, gold_chosen[_<component>],
    gold_rejected[_<component>], gold_margin (clean chosen minus clean rejected), flipped.
    """
    n = len(prompts)
    if not (len(response_a) == len(response_b) == len(finished_a) == len(finished_b) == n):
        raise ValueError("prompts, responses and finished flags must have the same length")
    ga = gold.score(prompts, response_a, finished_a).to_frame("gold")
    gb = gold.score(prompts, response_b, finished_b).to_frame("gold")
    a_better = (ga["gold"] > gb["gold"]).to_numpy()
    tie = (ga["gold"] == gb["gold"]).to_numpy()
    if labels_from_gold:
        flipped = rng.random(n) < flip_rate  # drawn for every pair, so ties do not shift the stream
        chosen_is_a = a_better ^ flipped
    else:
        flipped = ~a_better
        chosen_is_a = np.ones(n, dtype=bool)

    def pick(a: Sequence[str], b: Sequence[str], first: np.ndarray) -> np.ndarray:
        return np.where(first, np.asarray(a, dtype=object), np.asarray(b, dtype=object))

    df = pd.DataFrame(
        {
            "prompt": list(prompts),
            "chosen": pick(response_a, response_b, chosen_is_a),
            "rejected": pick(response_b, response_a, chosen_is_a),
            "chosen_finished": np.where(chosen_is_a, finished_a, finished_b).astype(bool),
            "rejected_finished": np.where(chosen_is_a, finished_b, finished_a).astype(bool),
        }
    )
    for col in ga.columns:
        df[col.replace("gold", "gold_chosen", 1)] = np.where(chosen_is_a, ga[col], gb[col])
        df[col.replace("gold", "gold_rejected", 1)] = np.where(chosen_is_a, gb[col], ga[col])
    df["gold_margin"] = np.abs(ga["gold"] - gb["gold"]).to_numpy()
    df["flipped"] = flipped
    return df.loc[~tie].reset_index(drop=True)


RELABEL_STREAM = 0x6E6F6973  # the label-noise sweep's own random stream, apart from the world's


def relabel(df: pd.DataFrame, rate: float, seed: int) -> pd.DataFrame:
    """The same pairs with a share `rate` of their labels flipped afresh from the clean ones.

    Each pair gets one uniform draw, keyed by its `pair_id` (so any split or order of the table
    draws the same), and is flipped where its draw is below `rate`: the pairs flipped at a lower
    rate are among those flipped at a higher one, so noise levels differ in one thing. Sides are
    swapped (responses, finished flags, gold columns) wherever the new label differs from the
    file's, and `flipped` records the new labels.
    """
    if not 0.0 <= rate < 0.5:
        raise ValueError(f"label-noise rate must be in [0, 0.5), got {rate}")
    missing = {"pair_id", "flipped", "chosen", "rejected"} - set(df.columns)
    if missing:
        raise PreferenceDataError(f"relabel: missing column(s) {', '.join(sorted(missing))}")
    ids = df["pair_id"].to_numpy()
    if len(ids) and (ids.min() < 0 or not np.issubdtype(ids.dtype, np.integer)):
        raise PreferenceDataError("relabel: pair_id must be non-negative integers")
    size = int(ids.max()) + 1 if len(ids) else 0
    draw = np.random.default_rng([seed, RELABEL_STREAM]).random(size)
    flipped = draw[ids] < rate
    swap = flipped != df["flipped"].to_numpy(bool)
    out = df.copy()
    for col in df.columns:
        if "chosen" in col and col.replace("chosen", "rejected", 1) in df.columns:
            other = col.replace("chosen", "rejected", 1)
            out[col] = np.where(swap, df[other], df[col])
            out[other] = np.where(swap, df[col], df[other])
    out["flipped"] = flipped
    return out


def assign_splits(n: int, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """'train' / 'val' for n rows, exactly round(val_fraction * n) of them 'val', at random."""
    n_val = max(1, round(val_fraction * n))
    split = np.array(["train"] * n, dtype=object)
    split[rng.permutation(n)[:n_val]] = "val"
    return split


def validate_preferences(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check a preference table row by row; raise PreferenceDataError naming `where`, row and column."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise PreferenceDataError(
            f"{where}: missing column(s) {', '.join(missing)} (have: {', '.join(map(str, df.columns))})"
        )
    if len(df) == 0:
        raise PreferenceDataError(f"{where}: no preference pairs (0 rows)")
    for col in REQUIRED_COLUMNS:
        for i, v in enumerate(df[col].tolist()):
            if not isinstance(v, str):
                raise PreferenceDataError(
                    f"{where}: row {i}: column '{col}' must be text, got {type(v).__name__} ({v!r})"
                )
            if not v.strip():
                raise PreferenceDataError(f"{where}: row {i}: column '{col}' is empty")
    same = (df["chosen"] == df["rejected"]).to_numpy()
    if same.any():
        i = int(np.flatnonzero(same)[0])
        raise PreferenceDataError(
            f"{where}: row {i}: 'chosen' and 'rejected' are the same response "
            f"({int(same.sum())} such row(s)): a pair must compare two responses"
        )
    for col in ("gold_chosen", "gold_rejected"):
        if col in df.columns:
            bad = ~np.isfinite(pd.to_numeric(df[col], errors="coerce").to_numpy(float))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise PreferenceDataError(
                    f"{where}: row {i}: column '{col}' is {df[col].iloc[i]}, not a finite number"
                )
    if "pair_id" in df.columns:
        dup = df["pair_id"].duplicated(keep="first").to_numpy()
        if dup.any():
            i = int(np.flatnonzero(dup)[0])
            raise PreferenceDataError(
                f"{where}: row {i}: pair_id {df['pair_id'].iloc[i]} appears more than once"
            )
    if "label" in df.columns:
        bad = ~df["label"].isin(["chosen", "rejected"])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise PreferenceDataError(
                f"{where}: row {i}: column 'label' is {df['label'].iloc[i]!r}, expected 'chosen' or 'rejected'"
            )
    if "flipped" in df.columns and df["flipped"].dtype != bool:
        raise PreferenceDataError(
            f"{where}: column 'flipped' must be boolean, got {df['flipped'].dtype}"
        )
    if {"gold_chosen", "gold_rejected", "flipped"} <= set(df.columns):
        expect = (df["gold_chosen"] < df["gold_rejected"]).to_numpy()
        bad = expect != df["flipped"].to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PreferenceDataError(
                f"{where}: row {i}: 'flipped' is {bool(df['flipped'].iloc[i])} but gold says "
                f"chosen={df['gold_chosen'].iloc[i]:.4f}, rejected={df['gold_rejected'].iloc[i]:.4f}"
            )
    return df


def load_preferences(world_dir: str | Path, split: str) -> pd.DataFrame:
    """A validated preference split ('train' or 'val') of a built world."""
    path = Path(world_dir) / "preferences" / f"{split}.parquet"
    return validate_preferences(read_table(path, "the world stage"), str(path))
