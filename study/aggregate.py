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


def head_correlation(rewards: torch.Tensor) -> float:
    """Mean pairwise Pearson correlation of K heads' rewards (K, B) over the B responses: how
    alike the heads rank the same samples (1: copies; NaN when K < 2 or a head is constant)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape (K, B), got {tuple(rewards.shape)}")
    k = rewards.shape[0]
    if k < 2 or rewards.shape[1] < 2:
        return float("nan")
    c = torch.corrcoef(rewards.double())  # (K, K)
    off = c[~torch.eye(k, dtype=torch.bool)]
    return float(off.mean()) if torch.isfinite(off).all() else float("nan")
