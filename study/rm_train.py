"""Bradley–Terry training of reward models of every family, and their checkpoints.

A multi-head model is trained once, every head with its own BT loss on the same batches (the
losses averaged, `study.rewards.bt_loss`); a full ensemble is K single-head models trained one after
the other, each with its own seed (head initialisation and data order). Heads or members can be
kept apart by per-head resampling of the training pairs (`reward.resample`), a larger head
initialisation (`reward.head_init_std`) or a frozen encoder (`reward.freeze_encoder`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from study import data_parallel
from study.config import Params, RewardConfig, with_override
from study.device import CPU, Placement, on, resolve
from study.hub import load_tokenizer
from study.io import atomic_path, provenance, write_json, write_table
from study.optim import length_grouped_batches, warmup_cosine
from study.preferences import load_preferences, relabel
from study.reward_models import (
    FAMILIES,
    EnsembleRewardModel,
    MultiHeadRewardModel,
    RewardModel,
    build_reward_model,
    encode,
    num_parameters,
    right_pad,
    score_ids,
)
from study.rewards import bt_loss
from study.rm_eval import accuracy_table, head_diversity, rewards_frame

TRAINING_FILE = "training.json"
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


def member_seed(base_seed: int, seed: int, member: int) -> int:
    """The seed of one member (or of a multi-head model, member 0) of one replicate `seed`."""
    return int(np.random.SeedSequence([base_seed, seed, member]).generate_state(1)[0])


def train_family(
    family: str,
    cfg: RewardConfig,
    policy_dir: str | Path,
    pairs: EncodedPairs,
    base_seed: int,
    seed: int,
    pad_id: int,
    progress: bool = True,
    max_steps: int | None = None,
    placement: Placement = CPU,
) -> tuple[RewardModel, pd.DataFrame]:
    """Build and train one reward model of `family` ('single', 'multihead' or 'ensemble') on
    `placement` (weights initialised on the CPU, so the same on every device).

    Returns the model (its rewards are (K, B); K = 1 for 'single') and the training history with a
    `member` column (0 for the one-encoder families).
    """
    if family not in FAMILIES:
        raise ValueError(f"family: {family!r} is not one of {', '.join(FAMILIES)}")
    if cfg.uncertainty != "none":
        return _cheap_family(family, cfg, policy_dir, pairs, base_seed, seed, pad_id, progress,
                             max_steps, placement)  # fmt: skip
    epochs = cfg.epochs(family)
    n_members, k = {"single": (1, 1), "multihead": (1, cfg.k), "ensemble": (cfg.k, 1)}[family]
    members, histories = [], []
    for m in range(n_members):
        s = member_seed(base_seed, seed, m)
        model = build_reward_model(
            cfg.encoder, policy_dir, k, s, cfg.head_init_std, pad_id, cfg.head_init
        )
        placement.put(model)
        hist = train_reward_model(model, pairs, cfg, epochs, s, pad_id, progress, max_steps,
                                  placement)  # fmt: skip
        histories.append(hist.assign(member=m))
        members.append(model)
    if family == "ensemble":
        model = EnsembleRewardModel(
            members, cfg.vectorize_ensemble(placement.device.type == "cuda")
        )
    else:
        model = members[0]
    return model, pd.concat(histories, ignore_index=True)


def _cheap_family(
    family: str,
    cfg: RewardConfig,
    policy_dir: str | Path,
    pairs: EncodedPairs,
    base_seed: int,
    seed: int,
    pad_id: int,
    progress: bool,
    max_steps: int | None,
    placement: Placement = CPU,
) -> tuple[RewardModel, pd.DataFrame]:
    """K reward functions from one trained model (`reward.uncertainty`, study.cheap_ensembles):
    a single-head model trained for `epochs_single` epochs, then its Laplace heads (a multi-head
    model) or its dropout members (an ensemble); or K LoRA members on one frozen encoder."""
    from study.cheap_ensembles import dropout_members, laplace_heads, lora_members

    if cfg.uncertainty == "lora":
        return lora_members(cfg, policy_dir, pairs, base_seed, seed, pad_id, rank=cfg.lora_rank,
                            progress=progress, max_steps=max_steps, placement=placement)  # fmt: skip
    s = member_seed(base_seed, seed, 0)
    model = build_reward_model(cfg.encoder, policy_dir, 1, s, cfg.head_init_std, pad_id,
                               cfg.head_init)  # fmt: skip
    placement.put(model)
    hist = train_reward_model(model, pairs, cfg, cfg.epochs("single"), s, pad_id, progress,
                              max_steps, placement).assign(member=0)  # fmt: skip
    if cfg.uncertainty == "laplace":
        heads, _ = laplace_heads(model, pairs.chosen, pairs.rejected, pad_id, cfg.k,
                                 cfg.laplace_prior, s)  # fmt: skip
        return placement.put(heads), hist
    return dropout_members(model, cfg.k, cfg.dropout_rate, s), hist


def save_reward_model(
    model: RewardModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    training: dict[str, Any],
) -> None:
    """A Hugging Face directory (or one per ensemble member) with the tokenizer and the resolved
    parameters that made it (`training.json`)."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / TRAINING_FILE).write_text(json.dumps(training, indent=2, default=str))


# ----------------------------------------------------------------------------------------- stage


def reward_tokenizer(cfg: RewardConfig, world_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer a reward model reads with: the policy's, or the named encoder's own."""
    if cfg.encoder in ("policy", "scratch"):
        return load_tokenizer(str(Path(world_dir) / "policy"), "reward.encoder")
    return load_tokenizer(cfg.encoder, "reward.encoder")


def load_pairs(
    params: Params, world_dir: str | Path, split: str, tokenizer: PreTrainedTokenizerBase
) -> tuple[pd.DataFrame, EncodedPairs]:
    """A validated preference split of the world and its encoding for the reward models. With
    `reward.label_noise` set, the training split's labels are redrawn at that rate from the clean
    ones (`relabel`); the validation split keeps the world's."""
    df = load_preferences(world_dir, split)
    if split == "train" and params.reward.label_noise is not None:
        df = relabel(df, params.reward.label_noise, params.run.seed)
    enc = encode_pairs(tokenizer, df, params.sources.prompt_template, params.reward.max_length)
    return df, enc


def run_reward_stage(
    params: Params,
    family: str,
    seed: int,
    world_dir: str | Path,
    model_dir: str | Path,
    results_dir: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one reward model of `family` for replicate `seed`, score the validation pairs, write.

    Writes (each atomically) the model directory, `history.parquet` (per-step loss), and
    `val_rewards.parquet` (pair_id, head, r_chosen, r_rejected) plus `train.json` (time, size).
    Returns the contents of `train.json`.
    """
    arm = family  # a family or a named arm of `reward.arms` (a family with overrides)
    family, cfg = params.reward.arm(arm)
    if data_parallel.should_launch(params):
        data_parallel.check(params, cfg.batch_size, "a reward-model batch (reward.batch_size)")
        resolve(params.placement)  # a device this machine lacks stops here, not in N processes
        data_parallel.launch("rm", params, family=arm, seed=seed, world_dir=world_dir,
                             model_dir=model_dir, results_dir=results_dir)  # fmt: skip
        return json.loads((Path(results_dir) / "train.json").read_text())
    params = dataclasses.replace(params, reward=cfg)
    torch.set_num_threads(params.run.threads)
    placement = resolve(params.placement)
    tokenizer = reward_tokenizer(cfg, world_dir)
    _, train = load_pairs(params, world_dir, "train", tokenizer)
    val_df, val = load_pairs(params, world_dir, "val", tokenizer)
    t0 = time.perf_counter()
    model, history = train_family(
        family,
        cfg,
        Path(world_dir) / "policy",
        train,
        params.run.seed,
        seed,
        tokenizer.pad_token_id,
        progress,
        placement=placement,
    )
    placement.synchronize()
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    with placement.autocast():
        r_chosen = score_ids(model, val.chosen, tokenizer.pad_token_id, cfg.eval_batch_size)
        r_rejected = score_ids(model, val.rejected, tokenizer.pad_token_id, cfg.eval_batch_size)
    score_seconds = time.perf_counter() - t0
    info = {
        "family": family,
        "arm": arm,
        "seed": seed,
        "k": model.k,
        "epochs": cfg.epochs("single" if cfg.uncertainty != "none" else family),
        "encoder_epochs": cfg.encoder_epochs(family),
        "train_pairs": len(train),
        "val_pairs": len(val),
        "parameters": num_parameters(model),
        "train_seconds": train_seconds,
        "val_score_seconds": score_seconds,
        "steps": len(history),
        # ||W − W_0|| / ||W_0|| of the heads at the end, mean over members
        "head_moved": float(history.groupby("member")["head_moved"].last().mean()),
    }
    prov = provenance(params)
    with atomic_path(model_dir) as tmp:
        save_reward_model(model, tokenizer, tmp, {**info, **prov})
    results = Path(results_dir)
    write_table(results / "history.parquet", history.assign(family=arm, seed=seed), prov)
    frame = rewards_frame(r_chosen, r_rejected, val_df["pair_id"].to_numpy())
    write_table(results / "val_rewards.parquet", frame.assign(family=arm, seed=seed), prov)
    write_json(results / "train.json", info)
    return info


def run_diversity_sweep(
    params: Params,
    world_dir: str | Path,
    options: Sequence[str],
    common: Sequence[str] = (),
    families: Sequence[str] = ("multihead", "ensemble"),
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Head diversity and accuracy of each 'key=value' option of the reward section, per family.

    `common` overrides are applied first, to every option.
    One row per (option, family): the diversity measures of `study.rm_eval.head_diversity` on the
    validation pairs, the mean head accuracy and the min-aggregate accuracy against clean labels,
    and the training time. Models are not kept.
    """
    torch.set_num_threads(params.run.threads)
    placement = resolve(params.placement)
    rows = []
    for option in options:
        cfg = params.reward
        for override in [*common, option]:
            cfg = with_override(cfg, override, "reward_eval.diversity_sweep")
        tokenizer = reward_tokenizer(cfg, world_dir)
        _, train = load_pairs(
            dataclasses.replace(params, reward=cfg), world_dir, "train", tokenizer
        )
        _, val = load_pairs(dataclasses.replace(params, reward=cfg), world_dir, "val", tokenizer)
        for family in families:
            t0 = time.perf_counter()
            model, _ = train_family(
                family,
                cfg,
                Path(world_dir) / "policy",
                train,
                params.run.seed,
                seed,
                tokenizer.pad_token_id,
                progress,
                placement=placement,
            )
            placement.synchronize()
            seconds = time.perf_counter() - t0
            with placement.autocast():
                r_c = score_ids(model, val.chosen, tokenizer.pad_token_id, cfg.eval_batch_size)
                r_r = score_ids(model, val.rejected, tokenizer.pad_token_id, cfg.eval_batch_size)
            acc = accuracy_table(r_c, r_r, val.flipped, uwo_lambda=cfg.uwo_lambda)
            heads = acc[acc["unit"] == "head"]
            agg = acc[acc["unit"] == "aggregate"].set_index("name")
            rows.append(
                {
                    "option": option,
                    "family": family,
                    "k": model.k,
                    "epochs": cfg.epochs("single" if cfg.uncertainty != "none" else family),
                    "encoder_epochs": cfg.encoder_epochs(family),
                    **head_diversity(r_c, r_r),
                    "head_acc_clean": heads["acc_clean"].mean(),
                    "min_acc_clean": agg.loc["min", "acc_clean"],
                    "mean_acc_clean": agg.loc["mean", "acc_clean"],
                    "train_seconds": seconds,
                    "seed": seed,
                }
            )
    return pd.DataFrame(rows)
