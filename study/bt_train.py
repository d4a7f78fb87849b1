"""Bradley–Terry training of one reward model: its pairs encoded, its optimiser step, its loop.

Every head of a model is trained at once, each with its own BT loss on the same batches (the
losses averaged, `study.rewards.bt_loss`); heads can be kept apart by per-head resampling of the
training pairs (`reward.resample`). `study.rm_train` trains the families built of such models and
runs the reward-model stages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from study import data_parallel
from study.config.reward import RewardConfig
from study.device import CPU, Placement, on
from study.optim import length_grouped_batches, warmup_cosine
from study.reward_models import (
    MultiHeadRewardModel,
    encode,
    right_pad,
)
from study.rewards import bt_loss

# pairs whose two sides read the same tokens after truncation carry no preference; at this share
# of the pairs the cut (reward.max_length) is an error, not a setting
MAX_IDENTICAL_SHARE = 0.5


@dataclass
class EncodedPairs:
    """Token ids of the chosen and rejected sides of N preference pairs, and their flags."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    flipped: np.ndarray  # (N,) bool: the label was flipped (chosen is gold-worse)

    def __len__(self) -> int:
        return len(self.chosen)


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, df: pd.DataFrame, template: str, max_length: int
) -> EncodedPairs:
    """Encode a validated preference table (prompt, chosen, rejected, *_finished, flipped)."""
    queries = [template.format(prompt=p) for p in df["prompt"]]
    chosen_fin = df["chosen_finished"] if "chosen_finished" in df else [True] * len(df)
    rejected_fin = df["rejected_finished"] if "rejected_finished" in df else [True] * len(df)
    flipped = df["flipped"].to_numpy(bool) if "flipped" in df else np.zeros(len(df), bool)
    pairs = EncodedPairs(
        chosen=encode(tokenizer, queries, df["chosen"].tolist(), list(chosen_fin), max_length),
        rejected=encode(
            tokenizer, queries, df["rejected"].tolist(), list(rejected_fin), max_length
        ),
        flipped=flipped,
    )
    same = sum(c == r for c, r in zip(pairs.chosen, pairs.rejected, strict=True))
    if len(pairs) and same / len(pairs) >= MAX_IDENTICAL_SHARE:
        raise ValueError(
            f"reward.max_length = {max_length}: {same} of {len(pairs)} pairs read the same tokens "
            f"on both sides once cut to it (the prompts alone take up to "
            f"{max(len(tokenizer(q)['input_ids']) for q in queries)} tokens); a reward model "
            "would learn nothing from them: raise reward.max_length"
        )
    return pairs


def member_seed(base_seed: int, seed: int, member: int) -> int:
    """The seed of one member (or of a multi-head model, member 0) of one replicate `seed`."""
    return int(np.random.SeedSequence([base_seed, seed, member]).generate_state(1)[0])


def resample_weights(n: int, k: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Per-head weights (K, N) of the N training pairs.

    'none': all ones (heads see identical data); 'bootstrap': each head's multinomial counts of N
    draws with replacement (the classic bootstrap); 'poisson': independent Poisson(1) counts, the
    streaming approximation of the bootstrap.
    """
    if mode == "none":
        return torch.ones(k, n)
    if mode == "bootstrap":
        draws = torch.randint(n, (k, n), generator=generator)
        return torch.zeros(k, n).scatter_add_(1, draws, torch.ones(k, n))
    if mode == "poisson":
        return torch.poisson(torch.ones(k, n), generator=generator)
    raise ValueError(f"reward.resample: unknown mode {mode!r} (known: none, bootstrap, poisson)")


def bt_step(
    model: MultiHeadRewardModel,
    opt: torch.optim.Optimizer,
    trainable: list[torch.nn.Parameter],
    pairs: EncodedPairs,
    idx: Sequence[int] | torch.Tensor,
    pad_id: int,
    grad_clip: float,
    weight: torch.Tensor | None = None,
    step: int = 0,
    placement: Placement = CPU,
) -> tuple[float, float, float]:
    """One optimiser step of the Bradley–Terry loss on the pairs `idx`: (loss, accuracy, grad norm).

    The chosen and rejected sides go through the model in one forward pass, (2B, T) -> (K, 2B),
    where the model is and in `placement`'s precision; the loss is taken in float32.
    A non-finite loss raises before any weight moves.
    """
    shard = data_parallel.current()
    if shard is not None:
        return _bt_step_shard(shard, model, opt, trainable, pairs, list(idx), pad_id, grad_clip,
                              weight, step, placement)  # fmt: skip
    seqs = [pairs.chosen[i] for i in idx] + [pairs.rejected[i] for i in idx]
    ids, mask = on(model, *right_pad(seqs, pad_id))
    with placement.autocast():
        rewards = model.rewards(ids, mask).float()
    r_chosen, r_rejected = rewards.chunk(2, dim=1)  # (K, B) each
    if weight is not None:
        (weight,) = on(model, weight)
    loss = bt_loss(r_chosen, r_rejected, weight=weight)
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"reward-model training: loss is {loss.item()} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    if not torch.isfinite(grad_norm):  # clipping would write the NaN into every weight
        raise FloatingPointError(
            f"reward-model training: the gradient norm is {grad_norm.item()} at step {step}"
        )
    opt.step()
    with torch.no_grad():
        acc = (r_chosen > r_rejected).float().mean().item()
    return loss.item(), acc, float(grad_norm)


def _bt_step_shard(
    shard: data_parallel.Shard, model: MultiHeadRewardModel, opt: torch.optim.Optimizer,
    trainable: list[torch.nn.Parameter], pairs: EncodedPairs, idx: list[int], pad_id: int,
    grad_clip: float, weight: torch.Tensor | None, step: int, placement: Placement,
) -> tuple[float, float, float]:  # fmt: skip
    """`bt_step` as one of several data-parallel processes: this process scores its share of the
    pairs, its loss weighted so that the shares sum to the batch's `bt_loss`, and the gradients are
    summed over the processes before clipping."""
    n = len(idx)
    mine = shard.rows(n)
    own = [idx[i] for i in mine]
    opt.zero_grad(set_to_none=True)
    if own:
        seqs = [pairs.chosen[i] for i in own] + [pairs.rejected[i] for i in own]
        ids, mask = on(model, *right_pad(seqs, pad_id))
        with placement.autocast():
            rewards = model.rewards(ids, mask).float()
        r_chosen, r_rejected = rewards.chunk(2, dim=1)  # (K, b) each
        losses = -torch.nn.functional.logsigmoid(r_chosen - r_rejected)
        if weight is None:
            share = losses.sum() / (losses.shape[0] * n)
        else:
            (weight,) = on(model, weight)  # (K, n): the whole batch's, for each head's total
            share = ((weight[:, mine] * losses).sum(1) / weight.sum(1).clamp_min(1e-12)).mean()
        share.backward()
        correct = (r_chosen > r_rejected).float().sum().detach()
        k = losses.shape[0]
    else:  # fewer pairs in this batch than processes: this one adds nothing
        share = correct = torch.zeros((), device=trainable[0].device)
        k = model.k
    loss = shard.total(share).item()
    if not math.isfinite(loss):
        raise FloatingPointError(f"reward-model training: loss is {loss} at step {step}")
    shard.all_reduce_grads(trainable)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    if not torch.isfinite(grad_norm):  # clipping would write the NaN into every weight
        raise FloatingPointError(
            f"reward-model training: the gradient norm is {grad_norm.item()} at step {step}"
        )
    opt.step()
    return loss, shard.total(correct).item() / (k * n), float(grad_norm)


def head_moved(weight: torch.Tensor, start: torch.Tensor) -> float:
    """How far the heads (K, d) have moved from their start: ||W − W_0|| / ||W_0|| (Frobenius)."""
    with torch.no_grad():
        return float((weight - start).norm() / start.norm().clamp_min(1e-12))


def train_reward_model(
    model: MultiHeadRewardModel,
    pairs: EncodedPairs,
    cfg: RewardConfig,
    epochs: int,
    seed: int,
    pad_id: int,
    progress: bool = True,
    max_steps: int | None = None,
    placement: Placement = CPU,
) -> pd.DataFrame:
    """Train every head of `model` (where it is) with its own BT loss; returns the per-step history.

    Each step scores the chosen and rejected sides of a batch of pairs in one forward pass,
    (2B, T) -> rewards (K, 2B), and minimises `bt_loss` weighted by the heads' resampling weights.
    """
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    weights = resample_weights(len(pairs), model.k, cfg.resample, gen)  # (K, N)
    lengths = np.array(
        [max(len(c), len(r)) for c, r in zip(pairs.chosen, pairs.rejected, strict=True)]
    )
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    heads = {id(p) for p in model.score.parameters()}
    groups = [  # the heads' learning rate is reward.head_lr_mult times the encoder's
        {"params": [p for p in trainable if id(p) not in heads], "lr_mult": 1.0},
        {"params": [p for p in trainable if id(p) in heads], "lr_mult": cfg.head_lr_mult},
    ]
    opt = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    steps_per_epoch = len(
        length_grouped_batches(lengths, cfg.batch_size, np.random.default_rng(0), drop_last=False)
    )
    total = (
        steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    )
    warmup = int(cfg.warmup_fraction * total)
    w0 = model.score.weight.detach().clone()  # (K, d): how far the heads move from their start
    rows = []
    step = 0
    model.train()
    bar = tqdm(
        total=total, desc=f"reward model (K={model.k})", disable=not progress, mininterval=2.0
    )
    t0 = time.perf_counter()
    for epoch in range(epochs):
        # batches of similar lengths (half the padding), every pair once per epoch
        for batch in length_grouped_batches(lengths, cfg.batch_size, rng, drop_last=False):
            if step >= total:
                break
            idx = torch.as_tensor(batch)
            lr = warmup_cosine(step, total, warmup, cfg.lr)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_mult"]
            loss, acc, grad_norm = bt_step(
                model, opt, trainable, pairs, idx, pad_id, cfg.grad_clip, weights[:, idx], step,
                placement,
            )  # fmt: skip
            rows.append(
                {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss,
                    "acc_noisy": acc,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "head_moved": head_moved(model.score.weight, w0),
                    "seconds": time.perf_counter() - t0,
                }
            )
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    bar.close()
    model.eval()
    return pd.DataFrame(rows)
