"""Reward-model objectives written once against the (K, B) convention."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss of K heads: mean over heads and batch of -log sigmoid(r_c - r_r).

    r_chosen, r_rejected: (K, B). Every head gets its own BT loss; averaging them trains each
    head on its own (the multi-head model of Ahmed et al.). Equal rewards give log 2.
    """
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 2:
        raise ValueError(
            f"r_chosen and r_rejected must both be (K, B), got {tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}"
        )
    return -F.logsigmoid(r_chosen - r_rejected).mean()
