"""One PPO step of the actor-critic (`study.actor_critic`): the rollout and the update.

Rollout of one step, narrated as in the code:
  1. sample responses to a batch of prompts; 2. truncate at EOS (done by `study.generation`);
  3. score with the reward model(s), normalise per head, aggregate; 4. per-token log-probabilities
  of policy and reference, values; 5. KL-shaped rewards; 6. GAE, whitened advantages;
  7. PPO epochs over minibatches. `study.ppo_train` drives the steps of a run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from study import data_parallel
from study.actor_critic import ActorCritic, policy_forward
from study.aggregate import aggregate
from study.device import CPU, Placement, on
from study.generation import Samples
from study.optim import warmup_cosine
from study.ppo import (
    gae,
    kl_per_token,
    masked_mean,
    ppo_policy_loss,
    shaped_rewards,
    value_loss,
    whiten,
)
from study.proxy import HeadNormaliser, RewardFn, Scored, trim_responses


def make_optimizer(ac: ActorCritic, lr: float, value_lr: float) -> torch.optim.Adam:
    """One Adam over two groups, the policy's and the value function's own parameters, each with
    its peak learning rate under `peak_lr` (what the schedule scales)."""
    value_ids = {id(p) for p in ac.value_parameters()}
    policy_params = [p for p in ac.parameters() if id(p) not in value_ids]
    return torch.optim.Adam(
        [
            {"params": policy_params, "lr": lr, "peak_lr": lr},
            {"params": ac.value_parameters(), "lr": value_lr, "peak_lr": value_lr},
        ],
        eps=1e-5,
        fused=True,  # one kernel per parameter group, not a loop over its tensors
    )


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


@torch.no_grad()
def make_rollout(
    ac: ActorCritic,
    ref: PreTrainedModel,
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
    """Steps 3-6 of a PPO step on responses that `ac.policy` has just sampled: score, log-probs,
    values, shaping, GAE. Where the sampler kept its hidden states (`Samples.hidden`), the
    policy's log-probabilities, entropies and a shared head's values are read from them instead
    of from another forward of the trunk (as TRL reads them from the generation's logits)."""
    s = trim_responses(samples)
    q_ids, q_mask, r_ids, r_mask = s.query_ids, s.query_mask, s.response_ids, s.response_mask
    # 3. score query + response with every head, normalise per head, aggregate (on the CPU)
    ids, mask = torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1)
    head_rewards = normaliser(reward_fn(Scored(ids, mask, prompts, s.texts, s.finished)))  # (K, B)
    if not torch.isfinite(head_rewards).all():
        raise FloatingPointError("a proxy reward is not finite")
    scores = aggregate(head_rewards, method, uwo_lambda)  # (B,)
    # 4. per-token log-probabilities of policy and reference, and values, where the policy is
    q_ids, q_mask, r_ids, r_mask = on(ac, q_ids, q_mask, r_ids, r_mask)
    if s.hidden is not None:
        (hidden,) = on(ac, s.hidden)
        out = ac.read(hidden, q_ids, q_mask, r_ids, r_mask, temperature, with_entropy=True)
    else:
        out = ac(q_ids, q_mask, r_ids, r_mask, temperature, with_entropy=True)
    ref_logprobs = policy_forward(ref, q_ids, q_mask, r_ids, r_mask, temperature).logprobs
    maskf = r_mask.float()
    logprobs, ref_logprobs, values = out.logprobs * maskf, ref_logprobs * maskf, out.values * maskf
    # 5. KL-shaped per-token rewards
    (scores_here,) = on(ac, scores)
    rewards = shaped_rewards(scores_here, kl_per_token(logprobs, ref_logprobs), maskf, kl_coef)
    # 6. advantages
    advantages, returns = gae(rewards, values, maskf, gamma, lam)
    return Rollout(
        q_ids, q_mask, r_ids, r_mask, logprobs, ref_logprobs, values, head_rewards, scores,
        rewards, advantages, returns, out.entropy * maskf, s.texts, s.finished,
    )  # fmt: skip


LOSSES = ("pg_loss", "vf_loss", "entropy_loss", "pg_clipfrac", "vf_clipfrac", "approx_kl")


def _losses(
    ac: ActorCritic, ro: Rollout, rows: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
    cliprange: float, cliprange_value: float, temperature: float, with_entropy: bool,
    placement: Placement,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The PPO losses of the rollout's `rows` (their response `mask` and advantages `adv`), each
    a masked mean over their tokens: clipped policy and value losses, minus the mean entropy,
    clip fractions and the approximate KL from the rollout's policy. The forward pass runs in
    `placement`'s precision, the losses in float32."""
    with placement.autocast():
        new = ac(
            ro.query_ids[rows], ro.query_mask[rows], ro.response_ids[rows],
            ro.response_mask[rows], temperature, with_entropy=with_entropy,
        )  # fmt: skip
    new = new.float()
    pg_loss, pg_clipfrac = ppo_policy_loss(new.logprobs, ro.logprobs[rows], adv, mask, cliprange)
    vf_loss, vf_clipfrac = value_loss(
        new.values, ro.values[rows], ro.returns[rows], mask, cliprange_value
    )
    entropy_loss = (
        -masked_mean(new.entropy, mask)
        if new.entropy is not None
        else torch.zeros((), device=mask.device)
    )
    with torch.no_grad():
        approx_kl = masked_mean(0.5 * (new.logprobs - ro.logprobs[rows]) ** 2, mask)
    values = (pg_loss, vf_loss, entropy_loss, pg_clipfrac, vf_clipfrac, approx_kl)
    return dict(zip(LOSSES, values, strict=True))


def ppo_update(
    ac: ActorCritic,
    optimizer: torch.optim.Optimizer,
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
    ent_coef: float = 0.0,
    placement: Placement = CPU,
) -> dict[str, float]:
    """Step 7: PPO epochs over shuffled minibatches; returns the mean losses and clip fractions.
    Forward passes in `placement`'s precision; losses and the backward pass outside autocast.

    Loss per minibatch: pg_loss + vf_coef * vf_loss - ent_coef * (mean entropy of the policy
    over response tokens), one backward through the actor-critic, each clip group's gradient norm
    clipped to `grad_clip`, one optimiser step. As one of several data-parallel processes
    (`study.data_parallel`), each holding the whole rollout, a process runs its share of every
    minibatch's rows, weighted by its share of the minibatch's tokens (advantages whitened over
    the whole minibatch), and the gradients are summed over the processes before clipping.
    """
    shard = data_parallel.current() or data_parallel.ALONE
    b = ro.response_ids.shape[0]
    size = b // minibatches
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in LOSSES}
    clip_groups = ac.clip_groups()
    params = [p for group in clip_groups for p in group]
    ac.train()
    for _ in range(ppo_epochs):
        order = torch.randperm(b, generator=generator)
        for m in range(minibatches):
            idx = order[m * size : (m + 1) * size]
            full_mask = ro.response_mask[idx].float()
            adv = ro.advantages[idx]
            if whiten_advantages:
                adv = whiten(adv, full_mask)
            mine = torch.as_tensor(shard.rows(len(idx)))
            rows, mask, adv = idx[mine], full_mask[mine], adv[mine]
            parts = _losses(ac, ro, rows, mask, adv, cliprange, cliprange_value, temperature,
                            ent_coef > 0, placement)  # fmt: skip
            loss = parts["pg_loss"] + vf_coef * parts["vf_loss"] + ent_coef * parts["entropy_loss"]
            if shard.world > 1:  # this process's share of the minibatch's tokens
                frac = mask.sum() / full_mask.sum().clamp_min(1.0)
                loss, parts = frac * loss, {k: frac * v for k, v in parts.items()}
            totals = {k: shard.total(v) for k, v in parts.items()}
            for name in ("pg_loss", "vf_loss"):
                if not torch.isfinite(totals[name]):
                    raise FloatingPointError(f"PPO: {name} is {totals[name].item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            shard.all_reduce_grads(params)
            for group in clip_groups:
                norm = torch.nn.utils.clip_grad_norm_(group, grad_clip)
                if not torch.isfinite(norm):  # clipping would write the NaN into every weight
                    raise FloatingPointError(f"PPO: the gradient norm is {norm.item()}")
            optimizer.step()
            for k, v in totals.items():
                stats[k].append(v)
    ac.eval()
    return {k: torch.stack(v).mean().item() for k, v in stats.items()}


def set_learning_rates(
    optimizer: torch.optim.Optimizer, step: int, steps: int, warmup: int
) -> float:
    """Every group's learning rate at `step` of `steps` (warm-up, then cosine, from its
    `peak_lr`); returns the policy group's."""
    for g in optimizer.param_groups:
        g["lr"] = warmup_cosine(step, steps, warmup, g["peak_lr"])
    return optimizer.param_groups[0]["lr"]


def rollout_checksum(ro: Rollout) -> float:
    """A number that differs between two rollouts that differ in their tokens or rewards."""
    positions = torch.arange(1, ro.response_ids.shape[1] + 1, device=ro.response_ids.device)
    tokens = (ro.response_ids * positions).sum(1).double().cpu()
    rows = torch.arange(1, len(tokens) + 1, dtype=torch.float64)
    return float((tokens * rows).sum() + (ro.scores.double().cpu() * rows).sum())


class TimedReward:
    """A reward function that records the seconds spent in it (the scoring share of a step)."""

    def __init__(self, fn: RewardFn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, batch: Scored) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.fn(batch)
        self.seconds += time.perf_counter() - t0
        return out
