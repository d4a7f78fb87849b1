"""The policy and its value function, read together at the response positions: `ActorCritic`,
with a critic that shares the policy's trunk (`ppo.value_model: shared`, the default: one forward
and backward serve policy and value, half the arithmetic of an update) or has its own copy of the
SFT trunk (`separate`, TRL's design); its docstring says what each costs and risks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from transformers import AutoModel, PreTrainedModel

from study.ppo import entropy_from_logits, logprobs_from_logits


class ValueModel(nn.Module):
    """A separate critic: an encoder and a scalar head read at every position, values (B, T)."""

    def __init__(self, backbone: PreTrainedModel):
        super().__init__()
        self.backbone = backbone
        self.head = zero_head(hidden_size(backbone.config))

    @classmethod
    def from_pretrained(cls, path: str) -> ValueModel:
        return cls(AutoModel.from_pretrained(path))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        h = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        return self.head(h).squeeze(-1)  # (B, Tq + T)


def hidden_size(config: Any) -> int:
    return getattr(config, "hidden_size", None) or config.n_embd


def zero_head(hidden: int) -> nn.Linear:
    """A scalar head that starts at 0 (every value 0 before the first update)."""
    head = nn.Linear(hidden, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


@dataclass
class Forward:
    """Per-token quantities of the response positions, each (B, T)."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def float(self) -> Forward:
        """Every tensor in float32 (the same tensors where they are already)."""
        f = lambda t: None if t is None else t.float()  # noqa: E731
        return Forward(f(self.logprobs), f(self.entropy), f(self.values))


def _joined(
    query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(ids, mask, position_ids), each (B, Tq + T): positions count from the first real token."""
    ids = torch.cat([query_ids, response_ids], dim=1)
    mask = torch.cat([query_mask, response_mask], dim=1)
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


def response_hidden(
    model: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """The policy trunk's final hidden states (B, T, H) at the positions that predict each response
    token (the last query token through the second-to-last response token)."""
    ids, mask, position_ids = _joined(query_ids, query_mask, response_ids, response_mask)
    h = model.base_model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state  # (B, Tq + T, H)
    return h[:, query_ids.shape[1] - 1 : -1]


def logits_forward(
    model: PreTrainedModel, hidden: torch.Tensor, response_ids: torch.Tensor, temperature: float,
    with_entropy: bool,
) -> Forward:  # fmt: skip
    """Log-probabilities (and entropies) of the response tokens from the hidden states (B, T, H):
    the output layer runs on response positions only (the query's logits are never needed)."""
    logits = model.get_output_embeddings()(hidden) / temperature  # (B, T, V)
    logprobs = logprobs_from_logits(logits, response_ids)
    return Forward(logprobs, entropy_from_logits(logits) if with_entropy else None)


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
    h = response_hidden(model, query_ids, query_mask, response_ids, response_mask)
    return logits_forward(model, h, response_ids, temperature, with_entropy)


def response_values(
    critic: ValueModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Values (B, T) of the states before each response token (the position that predicts it)."""
    ids, mask, _ = _joined(query_ids, query_mask, response_ids, response_mask)
    return critic(ids, mask)[:, query_ids.shape[1] - 1 : -1]


VALUE_MODELS = ("shared", "separate")


class ActorCritic(nn.Module):
    """The policy and its value function, read together at the response positions.

    `value_model` picks the critic's design (`ppo.value_model`):

    * ``shared``: a scalar head on the policy's own final hidden states, trained through the joint
      loss pg_loss + vf_coef * vf_loss (lm-human-preferences' vf_coef, TRL's legacy
      `AutoModelForCausalLMWithValueHead`). One trunk forward and backward serves both, so the
      update costs about half as much; the price is that the value loss also moves the policy's
      features (vf_coef = 0.1 keeps that pull small).
    * ``separate``: its own copy of the SFT trunk and a scalar head (TRL 1.x's PPOTrainer,
      summarize-from-feedback): no interference, twice the update arithmetic; vf_coef then only
      scales the critic's gradient.

    Both start from the SFT weights with a zero head, so every variant's critic starts the same.
    """

    def __init__(self, policy: PreTrainedModel, value_model: str = "shared"):
        super().__init__()
        if value_model not in VALUE_MODELS:
            raise ValueError(f"value_model {value_model!r}: expected one of {VALUE_MODELS}")
        self.policy = policy
        self.value_model = value_model
        if value_model == "shared":
            self.value_head = zero_head(hidden_size(policy.config))
        else:
            self.critic = ValueModel(copy.deepcopy(policy.base_model))

    def value_parameters(self) -> list[nn.Parameter]:
        """What only the value function owns (its own learning rate)."""
        owner = self.value_head if self.value_model == "shared" else self.critic
        return list(owner.parameters())

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter sets whose gradient norms are clipped one by one: one model, one norm."""
        if self.value_model == "shared":
            return [list(self.parameters())]
        return [list(self.policy.parameters()), list(self.critic.parameters())]

    def forward(
        self, query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor,
        response_mask: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
    ) -> Forward:  # fmt: skip
        """Log-probabilities, entropies (if asked) and values of the response tokens, each (B, T)."""
        h = response_hidden(self.policy, query_ids, query_mask, response_ids, response_mask)
        return self.read(h, query_ids, query_mask, response_ids, response_mask, temperature,
                         with_entropy)  # fmt: skip

    def read(
        self, hidden: torch.Tensor, query_ids: torch.Tensor, query_mask: torch.Tensor,
        response_ids: torch.Tensor, response_mask: torch.Tensor, temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> Forward:  # fmt: skip
        """As `forward`, from the policy's final hidden states (B, T, H) at the response
        positions (the trunk's, or the cached sampler's: `Samples.hidden`)."""
        out = logits_forward(self.policy, hidden, response_ids, temperature, with_entropy)
        if self.value_model == "shared":
            out.values = self.value_head(hidden).squeeze(-1)
        else:
            out.values = response_values(
                self.critic, query_ids, query_mask, response_ids, response_mask
            )
        return out
