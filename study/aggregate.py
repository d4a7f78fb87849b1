"""Aggregation of K reward heads into one reward: the one place every stage aggregates."""

from __future__ import annotations

import torch

METHODS = ("mean", "min", "max", "uwo")


def aggregate(rewards: torch.Tensor, method: str, uwo_lambda: float = 0.5) -> torch.Tensor:
    """Aggregate rewards (K, B) over the K heads into (B,).

    mean, min and max over heads; `uwo` is uncertainty-weighted optimisation (Coste et al.):
    mean - uwo_lambda * variance over heads, with the *population* variance (ddof 0), so that
    K = 1 reduces every method to the identity.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (K, B), got {tuple(rewards.shape)}")
    if rewards.shape[0] < 1:
        raise ValueError("rewards has no heads (K = 0)")
    if method == "mean":
        return rewards.mean(dim=0)
    if method == "min":
        return rewards.min(dim=0).values
    if method == "max":
        return rewards.max(dim=0).values
    if method == "uwo":
        return rewards.mean(dim=0) - uwo_lambda * rewards.var(dim=0, unbiased=False)
    raise ValueError(f"unknown aggregation method {method!r} (known: {', '.join(METHODS)})")
