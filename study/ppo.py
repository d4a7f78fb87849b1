"""PPO for language models as small pure functions (the lineage of OpenAI's lm-human-preferences,
CleanRL and TRL), each a math object of its own so that it can be tested alone.

Shapes: B sequences, T response tokens; `mask` (B, T) is 1 on response tokens up to and including
the first end-of-sequence token and 0 on the padding after it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the entries where `mask` is 1 (over `dim`, or all)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over the masked entries (Bessel-corrected by default, as TRL and CleanRL)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        if n < 2:
            raise ValueError("masked_var: fewer than 2 unmasked entries")
        var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries, zero where `mask` is 0; `shift_mean=False` keeps the
    mean (only rescales), as lm-human-preferences does for rewards."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels) under `logits`: (B, T, V), (B, T) -> (B, T)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """The k1 estimator log pi - log pi_ref per sampled token (B, T); summed over a response it is
    an unbiased estimate of KL(pi || pi_ref) for that prompt."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator per token, (r - 1) - log r with r = pi_ref / pi: unbiased, >= 0."""
    log_ratio = ref_logprobs - logprobs
    return log_ratio.exp() - 1.0 - log_ratio


def shaped_rewards(
    score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-token rewards (B, T): -beta * KL on every response token, plus the sequence score (B,)
    on its last token (Ziegler et al., 2019)."""
    rewards = -beta * kl * mask
    last = (mask.sum(1) - 1).clamp(min=0).long()  # (B,): responses are left-aligned
    return rewards.scatter_add(1, last.unsqueeze(1), score.unsqueeze(1).to(rewards.dtype))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over response tokens.

    rewards, values, mask: (B, T). The value after a sequence's last token is 0 (the episode ends
    there). Returns (advantages, returns), both (B, T) and 0 where `mask` is 0;
    returns = advantages + values.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    lastgaelam = torch.zeros_like(values[:, 0])
    advantages_reversed = []
    t_len = rewards.shape[1]
    for t in reversed(range(t_len)):
        next_values = values[:, t + 1] if t < t_len - 1 else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        lastgaelam = (delta + gamma * lam * lastgaelam) * mask[:, t]
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = (advantages + values) * mask
    return advantages, returns


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss (Schulman et al., 2017), mean over response tokens.

    Returns (loss, clipfrac): clipfrac is the share of tokens where the clipped term was taken.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)
    clipfrac = masked_mean((pg_losses2 > pg_losses).float(), mask)
    return loss, clipfrac


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((v - R)^2, (clip(v, v_old ± c) - R)^2), mean over tokens.

    Returns (loss, clipfrac)."""
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses1 = (values - returns) ** 2
    vf_losses2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
    clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), mask)
    return loss, clipfrac


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al., 2019): beta moves so the KL tracks a target.

    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL: target and horizon must be > 0")
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if not math.isfinite(current_kl):
            raise FloatingPointError(f"adaptive KL controller got KL = {current_kl}")
        proportional_error = max(-0.2, min(0.2, current_kl / self.target - 1.0))
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.target, self.horizon = state["value"], state["target"], state["horizon"]
