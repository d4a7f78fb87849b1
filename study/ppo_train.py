"""PPO against an aggregated proxy reward: the driver over the pure functions of `study.ppo`.

Work in progress for the optimisation issue: rollout, scoring, KL shaping, GAE and the clipped
updates are here and tested at toy size; the stage notebook, variants grid, best-of-n and the TRL
comparison are not yet written.

Value model: a **separate critic** (the SFT backbone plus a scalar head per token), not a value
head on the policy: with a shared trunk the value loss pulls the policy's features, and on a
policy this small that interference is not negligible (the design of lm-human-preferences and of
TRL's PPOTrainer, which initialises the critic from the reward model; we start it from the SFT
backbone so that every variant's critic starts from the same weights).

Rollout of one step, narrated as in the code:
  1. sample responses to a batch of prompts; 2. truncate at EOS (done by `study.generation`);
  3. score with the reward model(s), normalise per head, aggregate; 4. per-token log-probabilities
  of policy and reference, values; 5. KL-shaped rewards; 6. GAE, whitened advantages;
  7. PPO epochs over minibatches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import AutoModel, PreTrainedModel

from study.ppo import entropy_from_logits, logprobs_from_logits


class ValueModel(nn.Module):
    """A critic: an encoder and a scalar head read at every position, values (B, T)."""

    def __init__(self, backbone: PreTrainedModel):
        super().__init__()
        self.backbone = backbone
        hidden = getattr(backbone.config, "hidden_size", None) or backbone.config.n_embd
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(cls, path: str) -> ValueModel:
        return cls(AutoModel.from_pretrained(path))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        h = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.head(h).squeeze(-1)  # (B, Tq + T)


@dataclass
class Forward:
    """Per-token quantities of the response positions, each (B, T)."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None


def policy_forward(
    model: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> Forward:
    """Log-probabilities (B, T) of the sampled response tokens under `model` (and entropies).

    The query is left-padded and the response right-padded, so positions count from the first
    real token; logits are divided by the sampling temperature, as the sampler did.
    """
    ids = torch.cat([query_ids, response_ids], dim=1)  # (B, Tq + T)
    mask = torch.cat([query_mask, response_mask], dim=1)
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    logits = logits[:, query_ids.shape[1] - 1 : -1] / temperature  # (B, T, V): predicts response
    logprobs = logprobs_from_logits(logits, response_ids)
    return Forward(logprobs, entropy_from_logits(logits) if with_entropy else None)


def response_values(
    critic: ValueModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Values (B, T) of the states before each response token (the position that predicts it)."""
    ids = torch.cat([query_ids, response_ids], dim=1)
    mask = torch.cat([query_mask, response_mask], dim=1)
    return critic(ids, mask)[:, query_ids.shape[1] - 1 : -1]


RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(ids (B, L), mask (B, L)) -> rewards (K, B) of query + response."""
