"""Reward models of every family, trained by `study.bt_train`; their checkpoints; the stages.

A multi-head model is trained once, every head with its own BT loss on the same batches (the
losses averaged, `study.rewards.bt_loss`); a full ensemble is K single-head models trained one after
the other, each with its own seed (head initialisation and data order). Heads or members can be
kept apart by per-head resampling of the training pairs (`reward.resample`), a larger head
initialisation (`reward.head_init_std`) or a frozen encoder (`reward.freeze_encoder`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from study import data_parallel
from study.bt_train import EncodedPairs, encode_pairs, member_seed, train_reward_model
from study.cheap_ensembles import dropout_members, laplace_heads, lora_members
from study.config import Params, with_override
from study.config.reward import RewardConfig
from study.device import CPU, Placement, resolve
from study.hub import load_tokenizer
from study.io import atomic_path, provenance, write_json, write_table
from study.preferences import load_preferences, relabel
from study.reward_models import (
    FAMILIES,
    EnsembleRewardModel,
    RewardModel,
    build_reward_model,
    num_parameters,
    score_ids,
)
from study.rm_eval import accuracy_table, head_diversity, rewards_frame

TRAINING_FILE = "training.json"


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
