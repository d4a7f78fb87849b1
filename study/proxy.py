"""The reward as the policy's optimisers see it: a reward function (K, B) per variant, per-head
normalisation on SFT samples, and the batch layout they read. Shared by PPO (`study.ppo_train`),
best-of-n (`study.bon_run`) and RLOO (`study.rloo`), so that none of them loads another's code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from study.aggregate import METHODS
from study.config import Params
from study.config.world import SamplingConfig
from study.device import CPU, Placement, on
from study.generation import Samples, format_queries, sample
from study.hub import load_tokenizer
from study.io import require
from study.reward_models import Scorer, load_reward_model, score_ids
from study.world.gold import GoldReward


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


def trim_responses(samples: Samples) -> Samples:
    """Drop response columns that are padding in every row (generation pads to max_new_tokens)."""
    width = max(1, int(samples.response_mask.sum(1).max()))
    return dataclasses.replace(
        samples,
        response_ids=samples.response_ids[:, :width],
        response_mask=samples.response_mask[:, :width],
        hidden=samples.hidden[:, :width] if samples.hidden is not None else None,
    )


def variant_spec(variant: str) -> tuple[str, str]:
    """(reward source, aggregation) of a variant: 'multihead_min' -> ('multihead', 'min'),
    'multihead-3ep_min' -> ('multihead-3ep', 'min')."""
    if variant == "single":
        return "single", "mean"
    if variant == "gold":
        return "gold", "mean"
    arm, _, method = variant.partition("_")
    family = arm.partition("-")[0]
    named = family == "single" and arm != "single"  # a named single arm (single-noise10)
    if (family not in ("multihead", "ensemble") and not named) or method not in METHODS:
        raise ValueError(
            f"variant {variant!r}: expected single, gold or <arm>_<min|mean|max|uwo>, where the "
            "arm is multihead, ensemble or a named arm of reward.arms (multihead-3ep, "
            "single-noise10, ...)"
        )
    return arm, method


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
        return lambda b: rm.rewards(*on(rm, b.ids, b.mask)).float().cpu()

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


def variant_reward_fn(
    params: Params,
    variant: str,
    seed: int,
    tokenizer: PreTrainedTokenizerBase,
    rm_root: str | Path,
    gold: GoldReward,
    placement: Placement = CPU,
) -> tuple[RewardFn, str]:
    """The reward function (K, B) of `variant` and its aggregation, as `train_ppo` builds them."""
    family, method = variant_spec(variant)
    if family == "gold":
        return gold_reward_fn(gold), method
    return family_reward_fn(params, family, seed, tokenizer, rm_root, placement), method


def family_reward_fn(
    params: Params,
    family: str,
    seed: int,
    tokenizer: PreTrainedTokenizerBase,
    rm_root: str | Path,
    placement: Placement = CPU,
) -> RewardFn:
    """The raw rewards (K, B) of the reward model `rm_root/<family>/seed<seed>` (stage
    rm@<family>-<seed>), frozen, on `placement`'s device, re-tokenised from the policy's
    `tokenizer` to its own; float32 on the CPU."""
    rm_dir = require(Path(rm_root) / family / f"seed{seed}", f"stage rm@{family}-{seed}")
    cuda = placement.device.type == "cuda"
    rm = load_reward_model(rm_dir, vectorize=params.reward.vectorize_ensemble(cuda))
    rm = placement.put(rm).requires_grad_(False)
    rm_tok = load_tokenizer(str(rm_dir), "reward model")  # saved beside the model(s)
    return proxy_reward_fn(rm, rm_tok, tokenizer, params.reward.max_length)


def fit_normaliser(
    reward_fn: RewardFn, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    prompts: list[str], template: str, sampling: SamplingConfig, n: int, seed: int, normalise: str,
) -> HeadNormaliser:  # fmt: skip
    """Per-head z-scores on `n` SFT samples of the RL prompts (or the identity)."""
    rng = np.random.default_rng(seed)
    batch = [prompts[i] for i in rng.integers(len(prompts), size=n)]
    queries = format_queries(batch, template)
    s = trim_responses(sample(policy, tokenizer, queries, sampling, seed, decoder="auto"))
    ids = torch.cat([s.query_ids, s.response_ids], 1)
    mask = torch.cat([s.query_mask, s.response_mask], 1)
    with torch.no_grad():
        raw = reward_fn(Scored(ids, mask, batch, s.texts, s.finished))
    if normalise == "none":
        return HeadNormaliser.identity(raw.shape[0])
    return HeadNormaliser.fit(raw)
