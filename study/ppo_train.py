"""PPO against an aggregated proxy reward: the driver over the pure functions of `study.ppo`.

`run_ppo_stage` is one cell of the optimisation grid (a variant of the reward, a seed), run by the
`ppo_*` DVC stages through `notebooks/03_optimise.ipynb`.

Value model: `ActorCritic`, either a scalar head on the policy's own trunk (`ppo.value_model:
shared`, the default: one forward and backward serve policy and value, half the arithmetic of a
step's update) or a separate critic with its own copy of the SFT trunk (`separate`, TRL's design);
its docstring says what each costs and risks.

Rollout of one step, narrated as in the code:
  1. sample responses to a batch of prompts; 2. truncate at EOS (done by `study.generation`);
  3. score with the reward model(s), normalise per head, aggregate; 4. per-token log-probabilities
  of policy and reference, values; 5. KL-shaped rewards; 6. GAE, whitened advantages;
  7. PPO epochs over minibatches.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm import tqdm
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from study import data_parallel
from study.aggregate import aggregate, head_correlation
from study.config import Params, SamplingConfig
from study.device import CPU, Placement, checkpoint_activations, on, resolve
from study.generation import Samples, format_queries, sample
from study.hub import load_tokenizer, make_gold
from study.io import (
    atomic_path,
    load_prompts,
    provenance,
    write_csv,
    write_json,
    write_table,
)
from study.optim import warmup_cosine
from study.ppo import (
    AdaptiveKLController,
    entropy_from_logits,
    gae,
    kl_k3,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    ppo_policy_loss,
    shaped_rewards,
    value_loss,
    whiten,
)
from study.proxy import (
    HeadNormaliser,
    RewardFn,
    Scored,
    _seed,
    fit_normaliser,
    trim_responses,
    variant_reward_fn,
    variant_spec,
)
from study.world.gold import GoldReward, GoldScores


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
        fused=True,  # one kernel per group: a quarter of the foreach step's time on a CPU
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
    clipped to `grad_clip`, one optimiser step.
    """
    shard = data_parallel.current()
    if shard is not None:
        return _ppo_update_shard(shard, ac, optimizer, ro, ppo_epochs, minibatches, cliprange,
                                 cliprange_value, vf_coef, grad_clip, whiten_advantages,
                                 temperature, generator, ent_coef, placement)  # fmt: skip
    b = ro.response_ids.shape[0]
    size = b // minibatches
    stats: dict[str, list[torch.Tensor]] = {
        k: []
        for k in ("pg_loss", "vf_loss", "entropy_loss", "pg_clipfrac", "vf_clipfrac", "approx_kl")
    }
    clip_groups = ac.clip_groups()
    ac.train()
    for _ in range(ppo_epochs):
        order = torch.randperm(b, generator=generator)
        for m in range(minibatches):
            idx = order[m * size : (m + 1) * size]
            mask = ro.response_mask[idx].float()
            adv = ro.advantages[idx]
            if whiten_advantages:
                adv = whiten(adv, mask)
            with placement.autocast():
                new = ac(
                    ro.query_ids[idx], ro.query_mask[idx], ro.response_ids[idx],
                    ro.response_mask[idx], temperature, with_entropy=ent_coef > 0,
                )  # fmt: skip
            new = new.float()
            pg_loss, pg_clipfrac = ppo_policy_loss(
                new.logprobs, ro.logprobs[idx], adv, mask, cliprange
            )
            vf_loss, vf_clipfrac = value_loss(
                new.values, ro.values[idx], ro.returns[idx], mask, cliprange_value
            )
            for name, loss in (("pg_loss", pg_loss), ("vf_loss", vf_loss)):
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"PPO: {name} is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            entropy_loss = (
                -masked_mean(new.entropy, mask)
                if new.entropy is not None
                else torch.zeros((), device=mask.device)
            )
            (pg_loss + vf_coef * vf_loss + ent_coef * entropy_loss).backward()
            for group in clip_groups:
                norm = torch.nn.utils.clip_grad_norm_(group, grad_clip)
                if not torch.isfinite(norm):  # clipping would write the NaN into every weight
                    raise FloatingPointError(f"PPO: the gradient norm is {norm.item()}")
            optimizer.step()
            with torch.no_grad():
                approx_kl = masked_mean(0.5 * (new.logprobs - ro.logprobs[idx]) ** 2, mask)
            for k, v in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("entropy_loss", entropy_loss),
                         ("pg_clipfrac", pg_clipfrac),
                         ("vf_clipfrac", vf_clipfrac), ("approx_kl", approx_kl)):  # fmt: skip
                stats[k].append(v.detach())
    ac.eval()
    return {k: torch.stack(v).mean().item() for k, v in stats.items()}


def _ppo_update_shard(
    shard: data_parallel.Shard, ac: ActorCritic, optimizer: torch.optim.Optimizer, ro: Rollout,
    ppo_epochs: int, minibatches: int, cliprange: float, cliprange_value: float, vf_coef: float,
    grad_clip: float, whiten_advantages: bool, temperature: float, generator: torch.Generator,
    ent_coef: float, placement: Placement,
) -> dict[str, float]:  # fmt: skip
    """`ppo_update` as one of several data-parallel processes, each holding the whole rollout:
    the minibatches are drawn as one process draws them, each process runs the forward and
    backward passes of its share of a minibatch's rows, every masked mean taken over the whole
    minibatch's tokens (so the shares sum to the minibatch's loss), advantages whitened over the
    whole minibatch, and the gradients summed over the processes before clipping."""
    b = ro.response_ids.shape[0]
    size = b // minibatches
    names = ("pg_loss", "vf_loss", "entropy_loss", "pg_clipfrac", "vf_clipfrac", "approx_kl")
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in names}
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
            frac = mask.sum() / full_mask.sum().clamp_min(1.0)  # this share of the tokens
            with placement.autocast():
                new = ac(
                    ro.query_ids[rows], ro.query_mask[rows], ro.response_ids[rows],
                    ro.response_mask[rows], temperature, with_entropy=ent_coef > 0,
                )  # fmt: skip
            new = new.float()
            pg_loss, pg_clipfrac = ppo_policy_loss(
                new.logprobs, ro.logprobs[rows], adv, mask, cliprange
            )
            vf_loss, vf_clipfrac = value_loss(
                new.values, ro.values[rows], ro.returns[rows], mask, cliprange_value
            )
            entropy_loss = (
                -masked_mean(new.entropy, mask)
                if new.entropy is not None
                else torch.zeros((), device=mask.device)
            )
            optimizer.zero_grad(set_to_none=True)
            (frac * (pg_loss + vf_coef * vf_loss + ent_coef * entropy_loss)).backward()
            with torch.no_grad():
                approx_kl = masked_mean(0.5 * (new.logprobs - ro.logprobs[rows]) ** 2, mask)
            parts = dict(zip(names, (pg_loss, vf_loss, entropy_loss, pg_clipfrac, vf_clipfrac,
                                     approx_kl), strict=True))  # fmt: skip
            totals = {k: shard.total(frac * v.detach()) for k, v in parts.items()}
            for name in ("pg_loss", "vf_loss"):
                if not torch.isfinite(totals[name]):
                    raise FloatingPointError(f"PPO: {name} is {totals[name].item()}")
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


# ---------------------------------------------------------------------------------------- driver


LOG_KEYS = ("variant", "seed", "step", "kl", "proxy", "gold")


@dataclass
class PPOResult:
    """What a PPO run leaves: per-step log, held-out evaluations (means) and their responses."""

    log: pd.DataFrame  # one row per step: LOG_KEYS, each head, gold components, losses, timing
    evals: pd.DataFrame  # one row per evaluation (every ppo.eval_every steps, and step 0)
    eval_samples: pd.DataFrame  # one row per held-out response per evaluation
    normaliser: HeadNormaliser
    policy: PreTrainedModel


def _check_finite(step: int, **values: float) -> None:
    for name, v in values.items():
        if not np.isfinite(v):
            raise FloatingPointError(
                f"PPO step {step}: {name} is {v}; the last good checkpoint is kept"
            )


def _log_row(
    variant: str, seed: int, step: int, ro: Rollout, gold: GoldScores, prompts: list[str]
) -> dict[str, Any]:
    """The per-step row: KL (k1 and k3, summed over response tokens, mean over the batch), proxy,
    each head, their spread, gold and its components, length, entropy."""
    mask = ro.response_mask.float()
    kl_seq = ((ro.logprobs - ro.ref_logprobs) * mask).sum(1)
    k3_seq = (kl_k3(ro.logprobs, ro.ref_logprobs) * mask).sum(1)
    row: dict[str, Any] = {
        "variant": variant,
        "seed": seed,
        "step": step,
        "kl": kl_seq.mean().item(),
        "kl_k3": k3_seq.mean().item(),
        "proxy": ro.scores.mean().item(),
        "head_std": ro.head_rewards.std(0, unbiased=False).mean().item()
        if ro.head_rewards.shape[0] > 1
        else 0.0,
        "head_corr": head_correlation(ro.head_rewards),
        "gold": float(gold.total.mean()),
        "response_length": mask.sum(1).mean().item(),
        "finished": float(np.mean(ro.finished)),
        "entropy": masked_mean(ro.entropy, mask).item(),
    }
    for h in range(ro.head_rewards.shape[0]):
        row[f"proxy_head{h}"] = ro.head_rewards[h].mean().item()
    for name, v in gold.contributions.items():
        row[f"gold_{name}"] = float(v.mean())
    return row


@torch.no_grad()
def evaluate_policy(
    policy: PreTrainedModel, ref: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    reward_fn: RewardFn, normaliser: HeadNormaliser, gold: GoldReward, prompts: list[str],
    template: str, sampling: SamplingConfig, method: str, uwo_lambda: float, seed: int,
) -> tuple[dict[str, Any], pd.DataFrame]:  # fmt: skip
    """Gold, proxy and KL of the policy on held-out prompts (one sample each, fixed seed).

    Returns the means (one row) and the per-response table (prompt, response, KL, proxy, gold and
    its components), from which the report picks example responses at several KL levels.
    """
    queries = format_queries(prompts, template)
    s = trim_responses(sample(policy, tokenizer, queries, sampling, seed, decoder="auto"))
    ids = torch.cat([s.query_ids, s.response_ids], 1)
    mask = torch.cat([s.query_mask, s.response_mask], 1)
    heads = normaliser(reward_fn(Scored(ids, mask, prompts, s.texts, s.finished)))  # (K, B)
    t = sampling.temperature
    here = on(policy, s.query_ids, s.query_mask, s.response_ids, s.response_mask)
    lp = policy_forward(policy, *here, t).logprobs.float().cpu()
    ref_lp = policy_forward(ref, *here, t).logprobs.float().cpu()
    rmask = s.response_mask.float()
    g = gold.score(prompts, s.texts, s.finished)
    kl_seq = ((lp - ref_lp) * rmask).sum(1)  # (B,)
    proxy = aggregate(heads, method, uwo_lambda)  # (B,)
    per_sample = pd.DataFrame(
        {
            "prompt": prompts,
            "response": s.texts,
            "finished": np.asarray(s.finished, dtype=bool),
            "kl": kl_seq.numpy(),
            "proxy": proxy.numpy(),
            **{f"head{h}": heads[h].numpy() for h in range(heads.shape[0])},
            "gold": np.asarray(g.total, dtype=np.float64),
            **{f"gold_{k}": np.asarray(v, dtype=np.float64) for k, v in g.contributions.items()},
        }
    )
    row = {
        "kl": kl_seq.mean().item(),
        "kl_k3": (kl_k3(lp, ref_lp) * rmask).sum(1).mean().item(),
        "proxy": proxy.mean().item(),
        "head_std": heads.std(0, unbiased=False).mean().item() if heads.shape[0] > 1 else 0.0,
        "head_corr": head_correlation(heads),
        "gold": float(g.total.mean()),
        "response_length": rmask.sum(1).mean().item(),
    }
    row.update({f"gold_{k}": float(v.mean()) for k, v in g.contributions.items()})
    return row, per_sample


def _digest(paths: list[Path]) -> str:
    """sha256 over the relative names and bytes of every file under `paths`, in a fixed order."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(f for f in Path(root).rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(str(f.relative_to(root.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def run_fingerprint(
    params: Params, variant: str, seed: int, inputs: list[Path] | tuple[Path, ...] = ()
) -> str:
    """What a checkpoint must match to be resumed: the resolved parameters, the run, the code of
    the package and the bytes of its `inputs` (the SFT policy and the reward model it optimises):
    a checkpoint made by other settings, older code or another reward model is discarded."""
    code = _digest(sorted(Path(__file__).parent.rglob("*.py")))
    data = _digest([Path(p) for p in inputs])
    blob = json.dumps([params.to_dict(), variant, seed, code, data], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tables_to_bytes(**tables: pd.DataFrame) -> dict[str, torch.Tensor]:
    """DataFrames as Parquet bytes in uint8 tensors: what `torch.load(weights_only=True)` reads
    back exactly (no pickled objects in a checkpoint)."""
    import io

    out = {}
    for name, df in tables.items():
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        out[name] = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    return out


def _tables_from_bytes(blobs: dict[str, torch.Tensor]) -> dict[str, pd.DataFrame]:
    import io

    return {n: pd.read_parquet(io.BytesIO(t.numpy().tobytes())) for n, t in blobs.items()}


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The state saved at `path` if it exists, is readable and was made by this `fingerprint`;
    otherwise None, with a message. A checkpoint that cannot be read (truncated, corrupt, or not
    ours: only tensors and plain containers are loaded, never pickled code) is moved aside to
    `<name>.corrupt` so that the run starts fresh and the file stays for inspection."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(state, dict) or "fingerprint" not in state:
            raise ValueError("not a PPO checkpoint of this study")
    except Exception as e:  # any unreadable file: the run must not stop on it
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        tqdm.write(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                   f"moved to {aside.name}, starting afresh")  # fmt: skip
        return None
    if state["fingerprint"] != fingerprint:
        tqdm.write(f"{path}: made by other parameters, code or reward model; starting afresh")
        return None
    return state


def train_ppo(
    params: Params,
    variant: str,
    seed: int,
    world_dir: str | Path,
    rm_root: str | Path,
    run_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> PPOResult:
    """PPO of the SFT policy against `variant`'s reward; returns the per-step log, the held-out
    evaluations and the held-out responses of every evaluation.

    Resumes from `run_dir/checkpoint.pt` when one exists and was made by the same parameters,
    variant, seed and code (another is discarded, with a message); `stop_after` ends the run after
    that many steps of this call (a stand-in for a killed run, in tests). Every random draw is
    seeded by (seed, step), so a resumed run ends with the same tables as an uninterrupted one.
    """
    cfg = params.ppo
    torch.set_num_threads(params.run.threads)
    placement = resolve(params.placement)
    world = Path(world_dir)
    rl, held_out = load_prompts(world, "rl"), load_prompts(world, "eval")  # checked first
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(str(world / "policy"), "world policy")
    policy = AutoModelForCausalLM.from_pretrained(world / "policy", **placement.policy_kwargs())
    ref = AutoModelForCausalLM.from_pretrained(world / "policy", **placement.policy_kwargs())
    ref = ref.eval().requires_grad_(False)
    ac = placement.put(ActorCritic(policy, cfg.value_model).eval())
    placement.put(ref)
    if placement.gradient_checkpointing:
        checkpoint_activations(ac)
    gold = make_gold(params)
    reward_fn, method = variant_reward_fn(params, variant, seed, tokenizer, rm_root, gold,
                                          placement)  # fmt: skip
    template, sampling = params.sources.prompt_template, params.sampling
    optimizer = make_optimizer(ac, cfg.lr, cfg.value_lr)
    kl_ctl = (
        AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.adaptive_kl
        else None
    )
    rows: list[dict] = []
    evals: list[dict] = []
    eval_samples: list[pd.DataFrame] = []
    start = 0
    ckpt = run_dir / "checkpoint.pt"
    inputs = [world / "policy"]
    if variant_spec(variant)[0] != "gold":
        inputs.append(Path(rm_root) / variant_spec(variant)[0] / f"seed{seed}")
    fingerprint = run_fingerprint(params, variant, seed, inputs)
    state = load_checkpoint(ckpt, fingerprint)
    if state is not None:
        ac.load_state_dict(state["actor_critic"])
        optimizer.load_state_dict(state["optimizer"])
        if kl_ctl is not None:
            kl_ctl.load_state_dict(state["kl_ctl"])
        normaliser = HeadNormaliser(state["norm_mean"], state["norm_std"])
        tables = _tables_from_bytes(state["tables"])
        rows = tables["rows"].to_dict("records")
        evals = tables["evals"].to_dict("records")
        eval_samples = [g for _, g in tables["eval_samples"].groupby("step", sort=True)]
        start = int(state["step"]) + 1
    else:
        with placement.autocast():
            normaliser = fit_normaliser(
                reward_fn, ref, tokenizer, rl, template, sampling, cfg.n_norm_samples,
                _seed(params.run.seed, seed, 1), cfg.normalise,
            )  # fmt: skip

    def evaluate(step: int) -> None:
        with placement.autocast():
            row, per_sample = evaluate_policy(
                policy, ref, tokenizer, reward_fn, normaliser, gold, held_out, template, sampling,
                method, params.reward.uwo_lambda, _seed(params.run.seed, seed, 4),
            )  # fmt: skip
        bad = {k: v for k, v in row.items() if isinstance(v, float) and not np.isfinite(v)
               and k in ("kl", "kl_k3", "proxy", "gold")}  # fmt: skip
        if bad:
            raise FloatingPointError(
                f"PPO held-out evaluation at step {step}: {', '.join(f'{k} = {v}' for k, v in bad.items())}; "
                f"nothing is written, and the last good checkpoint ({ckpt}) is kept"
            )
        evals.append({"variant": variant, "seed": seed, "step": step, **row})
        eval_samples.append(per_sample.assign(variant=variant, seed=seed, step=step))

    def save(step: int) -> None:
        tables = _tables_to_bytes(
            rows=pd.DataFrame(rows), evals=pd.DataFrame(evals),
            eval_samples=pd.concat(eval_samples, ignore_index=True),
        )  # fmt: skip
        state = {
            "step": step, "actor_critic": ac.state_dict(), "optimizer": optimizer.state_dict(),
            "kl_ctl": kl_ctl.state_dict() if kl_ctl is not None else None,
            "norm_mean": normaliser.mean, "norm_std": normaliser.std, "tables": tables,
            "fingerprint": fingerprint,
        }  # fmt: skip
        with atomic_path(ckpt) as tmp:
            torch.save(state, tmp)

    if start == 0:
        evaluate(0)
    bar = tqdm(
        range(start, cfg.steps),
        desc=f"ppo {variant} s{seed}",
        disable=not progress,
        mininterval=2.0,
    )
    done = 0
    for step in bar:
        t0 = time.perf_counter()
        lr = set_learning_rates(optimizer, step, cfg.steps, cfg.warmup_steps)
        beta = kl_ctl.value if kl_ctl is not None else cfg.kl_coef
        # 1-2. sample a batch of prompts and responses, cut at EOS
        rng = np.random.default_rng(_seed(params.run.seed, seed, 2, step))
        batch = [rl[i] for i in rng.integers(len(rl), size=cfg.batch_size)]
        samples = sample(
            policy,
            tokenizer,
            format_queries(batch, template),
            sampling,
            _seed(params.run.seed, seed, 3, step),
            decoder="auto",
            placement=placement,
        )
        t_sampled = time.perf_counter()
        timer = _Timer(reward_fn)
        try:
            # 3-6. score, log-probs, values, KL shaping, GAE
            with placement.autocast():
                ro = make_rollout(
                    ac, ref, timer, normaliser, samples, batch, method,
                    params.reward.uwo_lambda, beta, cfg.gamma, cfg.lam, sampling.temperature,
                )  # fmt: skip
            if data_parallel.current() is not None:  # every process must hold the same rollout
                data_parallel.current().agree(rollout_checksum(ro), f"the rollout of step {step}")
            # 7. PPO epochs
            stats = ppo_update(
                ac, optimizer, ro, cfg.ppo_epochs, cfg.minibatches, cfg.cliprange,
                cfg.cliprange_value, cfg.vf_coef, cfg.grad_clip, cfg.whiten_advantages,
                sampling.temperature,
                torch.Generator().manual_seed(_seed(params.run.seed, seed, 5, step)), cfg.ent_coef,
                placement,
            )  # fmt: skip
        except FloatingPointError as e:
            raise FloatingPointError(
                f"PPO step {step}: {e}; the last good checkpoint ({ckpt}) is kept"
            ) from None
        row = _log_row(variant, seed, step, ro, gold.score(batch, ro.texts, ro.finished), batch)
        _check_finite(step, kl=row["kl"], proxy=row["proxy"], gold=row["gold"], **stats)
        if kl_ctl is not None:
            kl_ctl.update(row["kl"], cfg.batch_size)
        placement.synchronize()
        seconds = time.perf_counter() - t0
        row.update(stats, kl_coef=beta, lr=lr, step_seconds=seconds,
                   sample_seconds=t_sampled - t0, score_seconds=timer.seconds)  # fmt: skip
        rows.append(row)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            evaluate(step + 1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save(step)
        bar.set_postfix(
            kl=f"{row['kl']:.2f}",
            proxy=f"{row['proxy']:.2f}",
            gold=f"{row['gold']:.2f}",
            refresh=False,
        )
        done += 1
        if stop_after is not None and done >= stop_after:
            break
    return PPOResult(
        pd.DataFrame(rows),
        pd.DataFrame(evals),
        pd.concat(eval_samples, ignore_index=True),
        normaliser,
        policy,
    )


def rollout_checksum(ro: Rollout) -> float:
    """A number that differs between two rollouts that differ in their tokens or rewards."""
    positions = torch.arange(1, ro.response_ids.shape[1] + 1, device=ro.response_ids.device)
    tokens = (ro.response_ids * positions).sum(1).double().cpu()
    rows = torch.arange(1, len(tokens) + 1, dtype=torch.float64)
    return float((tokens * rows).sum() + (ro.scores.double().cpu() * rows).sum())


class _Timer:
    """A reward function that records the seconds spent in it (the scoring share of a step)."""

    def __init__(self, fn: RewardFn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, batch: Scored) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.fn(batch)
        self.seconds += time.perf_counter() - t0
        return out


def run_ppo_stage(
    params: Params,
    variant: str,
    seed: int,
    world_dir: str | Path,
    rm_root: str | Path,
    results_dir: str | Path,
    policy_dir: str | Path,
    checkpoint_dir: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """One cell of the optimisation grid: PPO of `variant` for replicate `seed`, then write.

    Writes (each atomically) `log.parquet` / `log.csv` (one row per step), `evals.parquet` (held-out
    means), `eval_samples.parquet` (held-out responses at every evaluation) and `train.json` (time,
    scoring share) under `results_dir`, and the final policy as a Hugging Face directory. The
    checkpoint under `checkpoint_dir` lets a killed run resume; it is removed once all is written.
    """
    variant_spec(variant)  # a bad variant fails before any model is loaded
    if data_parallel.should_launch(params):
        rows = params.ppo.batch_size // params.ppo.minibatches
        data_parallel.check(params, rows, "a PPO minibatch (ppo.batch_size / ppo.minibatches)")
        resolve(params.placement)  # a device this machine lacks stops here, not in N processes
        data_parallel.launch("ppo", params, variant=variant, seed=seed, world_dir=world_dir,
                             rm_root=rm_root, results_dir=results_dir, policy_dir=policy_dir,
                             checkpoint_dir=checkpoint_dir)  # fmt: skip
        return json.loads((Path(results_dir) / "train.json").read_text())
    t0 = time.perf_counter()
    result = train_ppo(params, variant, seed, world_dir, rm_root, checkpoint_dir, progress)
    log = result.log
    info = {
        "variant": variant,
        "seed": seed,
        "steps": len(log),
        "seconds": time.perf_counter() - t0,
        "step_seconds_median": float(log["step_seconds"].median()),
        "sample_seconds_median": float(log["sample_seconds"].median()),
        "score_seconds_median": float(log["score_seconds"].median()),
        "score_share": float(log["score_seconds"].sum() / log["step_seconds"].sum()),
        "norm_mean": result.normaliser.mean.tolist(),
        "norm_std": result.normaliser.std.tolist(),
    }
    prov = provenance(params)
    results = Path(results_dir)
    write_table(results / "log.parquet", log, prov)
    write_csv(results / "log.csv", log)
    write_table(results / "evals.parquet", result.evals, prov)
    write_table(results / "eval_samples.parquet", result.eval_samples, prov)
    write_json(results / "train.json", info)
    with atomic_path(policy_dir) as tmp:
        result.policy.save_pretrained(tmp)
        load_tokenizer(str(Path(world_dir) / "policy"), "world policy").save_pretrained(tmp)
        write_json(tmp / "ppo.json", {**info, **prov})
    (Path(checkpoint_dir) / "checkpoint.pt").unlink(missing_ok=True)
    return info
