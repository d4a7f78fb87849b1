"""Reward-model objectives written once against the (K, B) convention."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bt_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley–Terry loss of K heads: mean over heads and batch of -log sigmoid(r_c - r_r).

    r_chosen, r_rejected: (K, B). Every head gets its own BT loss; averaging them trains each
    head on its own (the multi-head model of Ahmed et al.). Equal rewards give log 2.
    weight: optional (K, B) non-negative per-head weights of the pairs (bootstrap counts); each
    head's loss is then its weighted mean over the batch, and a head with zero total weight in the
    batch contributes 0.
    """
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 2:
        raise ValueError(
            f"r_chosen and r_rejected must both be (K, B), got {tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}"
        )
    losses = -F.logsigmoid(r_chosen - r_rejected)  # (K, B)
    if weight is None:
        return losses.mean()
    if weight.shape != losses.shape:
        raise ValueError(
            f"weight must be (K, B) = {tuple(losses.shape)}, got {tuple(weight.shape)}"
        )
    per_head = (weight * losses).sum(1) / weight.sum(1).clamp_min(1e-12)  # (K,)
    return per_head.mean()
