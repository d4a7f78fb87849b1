"""Learning-rate schedules shared by every trainer (SFT, reward models, PPO)."""

from __future__ import annotations

import math

import numpy as np


def warmup_cosine(step: int, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    """Learning rate at `step` (0-based): linear warm-up to `peak`, then cosine decay to floor·peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def length_grouped_batches(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    group: int = 32,
    drop_last: bool = True,
) -> list[np.ndarray]:
    """One epoch of shuffled batches whose rows have similar lengths (as HF's group_by_length).

    Rows are shuffled, cut into groups of `group` batches, sorted by length within a group and
    batched; the batch order is shuffled again. Padding, and so time per step, roughly halves.
    With `drop_last` the short batch at the end of each group is dropped (SFT); without it every
    row is used once per epoch (reward models).
    """
    order = rng.permutation(len(lengths))
    batches = []
    for s in range(0, len(order), batch_size * group):
        chunk = order[s : s + batch_size * group]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(
            chunk[i : i + batch_size]
            for i in range(0, len(chunk), batch_size)
            if not drop_last or i + batch_size <= len(chunk)
        )
    if not batches:  # fewer rows than one batch
        batches = [order]
    return [batches[i] for i in rng.permutation(len(batches))]
