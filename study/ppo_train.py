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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from study.aggregate import aggregate
from study.generation import Samples
from study.ppo import (
    entropy_from_logits,
    gae,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    ppo_policy_loss,
    shaped_rewards,
    value_loss,
    whiten,
)
from study.reward_models import Scorer, score_ids
from study.world.gold import GoldReward


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


@dataclass
class Scored:
    """What a reward function may read of a batch: token ids of query + response and the texts."""

    ids: torch.Tensor  # (B, L) left-padded query, then the response, then padding
    mask: torch.Tensor  # (B, L)
    prompts: list[str]
    texts: list[str]
    finished: Any  # (B,) bool


RewardFn = Callable[[Scored], torch.Tensor]
"""A batch -> rewards (K, B) (K = 1 for a single model or the gold control)."""


class HeadNormaliser:
    """Per-head affine normalisation of proxy rewards (K, B): z-scores on reference samples."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std  # (K,)

    @classmethod
    def identity(cls, k: int) -> HeadNormaliser:
        return cls(torch.zeros(k), torch.ones(k))

    @classmethod
    def fit(cls, rewards: torch.Tensor) -> HeadNormaliser:
        """From rewards (K, N) of reference (SFT) samples: each head to mean 0, std 1 on them."""
        return cls(rewards.mean(1), rewards.std(1).clamp_min(1e-6))

    def __call__(self, rewards: torch.Tensor) -> torch.Tensor:
        return (rewards - self.mean[:, None]) / self.std[:, None]


@dataclass
class Rollout:
    """One batch of experience; per-token tensors are (B, T) over response positions."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    head_rewards: torch.Tensor  # (K, B), normalised
    scores: torch.Tensor  # (B,), aggregated
    rewards: torch.Tensor  # (B, T), KL-shaped
    advantages: torch.Tensor
    returns: torch.Tensor
    entropy: torch.Tensor
    texts: list[str]
    finished: Any


def trim_responses(samples: Samples) -> Samples:
    """Drop response columns that are padding in every row (generation pads to max_new_tokens)."""
    width = max(1, int(samples.response_mask.sum(1).max()))
    return dataclasses.replace(
        samples,
        response_ids=samples.response_ids[:, :width],
        response_mask=samples.response_mask[:, :width],
    )


@torch.no_grad()
def make_rollout(
    policy: PreTrainedModel,
    ref: PreTrainedModel,
    critic: ValueModel,
    reward_fn: RewardFn,
    normaliser: HeadNormaliser,
    samples: Samples,
    prompts: list[str],
    method: str,
    uwo_lambda: float,
    kl_coef: float,
    gamma: float,
    lam: float,
    temperature: float,
) -> Rollout:
    """Steps 3-6 of a PPO step on sampled responses: score, log-probs, values, shaping, GAE."""
    s = trim_responses(samples)
    q_ids, q_mask, r_ids, r_mask = s.query_ids, s.query_mask, s.response_ids, s.response_mask
    # 3. score query + response with every head, normalise per head, aggregate
    ids, mask = torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1)
    head_rewards = normaliser(reward_fn(Scored(ids, mask, prompts, s.texts, s.finished)))  # (K, B)
    scores = aggregate(head_rewards, method, uwo_lambda)  # (B,)
    # 4. per-token log-probabilities of policy and reference, and values
    out = policy_forward(policy, q_ids, q_mask, r_ids, r_mask, temperature, with_entropy=True)
    ref_logprobs = policy_forward(ref, q_ids, q_mask, r_ids, r_mask, temperature).logprobs
    values = response_values(critic, q_ids, q_mask, r_ids, r_mask)
    maskf = r_mask.float()
    logprobs, ref_logprobs, values = out.logprobs * maskf, ref_logprobs * maskf, values * maskf
    # 5. KL-shaped per-token rewards
    rewards = shaped_rewards(scores, kl_per_token(logprobs, ref_logprobs), maskf, kl_coef)
    # 6. advantages
    advantages, returns = gae(rewards, values, maskf, gamma, lam)
    return Rollout(
        q_ids, q_mask, r_ids, r_mask, logprobs, ref_logprobs, values, head_rewards, scores,
        rewards, advantages, returns, out.entropy * maskf, s.texts, s.finished,
    )  # fmt: skip


def ppo_update(
    policy: PreTrainedModel,
    critic: ValueModel,
    opt_policy: torch.optim.Optimizer,
    opt_value: torch.optim.Optimizer,
    ro: Rollout,
    ppo_epochs: int,
    minibatches: int,
    cliprange: float,
    cliprange_value: float,
    vf_coef: float,
    grad_clip: float,
    whiten_advantages: bool,
    temperature: float,
    generator: torch.Generator,
) -> dict[str, float]:
    """Step 7: PPO epochs over shuffled minibatches; returns the mean losses and clip fractions."""
    b = ro.response_ids.shape[0]
    size = b // minibatches
    stats: dict[str, list[float]] = {
        k: [] for k in ("pg_loss", "vf_loss", "pg_clipfrac", "vf_clipfrac", "approx_kl")
    }
    policy.train()
    critic.train()
    for _ in range(ppo_epochs):
        order = torch.randperm(b, generator=generator)
        for m in range(minibatches):
            idx = order[m * size : (m + 1) * size]
            mask = ro.response_mask[idx].float()
            adv = ro.advantages[idx]
            if whiten_advantages:
                adv = whiten(adv, mask)
            new = policy_forward(
                policy, ro.query_ids[idx], ro.query_mask[idx], ro.response_ids[idx],
                ro.response_mask[idx], temperature,
            )  # fmt: skip
            pg_loss, pg_clipfrac = ppo_policy_loss(
                new.logprobs, ro.logprobs[idx], adv, mask, cliprange
            )
            values = response_values(
                critic,
                ro.query_ids[idx],
                ro.query_mask[idx],
                ro.response_ids[idx],
                ro.response_mask[idx],
            )
            vf_loss, vf_clipfrac = value_loss(
                values, ro.values[idx], ro.returns[idx], mask, cliprange_value
            )
            for name, loss in (("pg_loss", pg_loss), ("vf_loss", vf_loss)):
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"PPO: {name} is {loss.item()}")
            opt_policy.zero_grad(set_to_none=True)
            opt_value.zero_grad(set_to_none=True)
            (pg_loss + vf_coef * vf_loss).backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
            torch.nn.utils.clip_grad_norm_(critic.parameters(), grad_clip)
            opt_policy.step()
            opt_value.step()
            with torch.no_grad():
                approx_kl = masked_mean(0.5 * (new.logprobs - ro.logprobs[idx]) ** 2, mask)
            for k, v in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("pg_clipfrac", pg_clipfrac),
                         ("vf_clipfrac", vf_clipfrac), ("approx_kl", approx_kl)):  # fmt: skip
                stats[k].append(float(v))
    policy.eval()
    critic.eval()
    return {k: sum(v) / len(v) for k, v in stats.items()}


# ---------------------------------------------------------------------------------------- driver


def variant_spec(variant: str) -> tuple[str, str]:
    """(reward source, aggregation) of a variant: 'multihead_min' -> ('multihead', 'min')."""
    if variant == "single":
        return "single", "mean"
    if variant == "gold":
        return "gold", "mean"
    family, _, method = variant.partition("_")
    if family not in ("multihead", "ensemble") or method not in ("min", "mean", "max", "uwo"):
        raise ValueError(
            f"variant {variant!r}: expected single, gold or <multihead|ensemble>_<min|mean|max|uwo>"
        )
    return family, method


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def proxy_reward_fn(
    rm: Scorer,
    rm_tokenizer: PreTrainedTokenizerBase,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
) -> RewardFn:
    """Rewards (K, B) of policy token ids under a reward model; re-tokenised only when the reward
    model reads with another vocabulary than the policy."""
    if rm_tokenizer.get_vocab() == tokenizer.get_vocab():
        return lambda b: rm.rewards(b.ids, b.mask)

    def retokenised(b: Scored) -> torch.Tensor:
        texts = [
            tokenizer.decode(i[m.bool()].tolist(), skip_special_tokens=False)
            for i, m in zip(b.ids, b.mask, strict=True)
        ]
        seqs = [rm_tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
        return score_ids(rm, seqs, rm_tokenizer.pad_token_id, batch_size=len(seqs))

    return retokenised


def gold_reward_fn(gold: GoldReward) -> RewardFn:
    """The gold reward itself as a one-head reward (the control that shows a fall is the proxy's)."""
    return lambda b: torch.as_tensor(
        gold.score(b.prompts, b.texts, b.finished).total, dtype=torch.float32
    )[None]
