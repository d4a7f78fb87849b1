"""TRL's group-relative optimiser beside our PPO: the same proxy reward, through a reward callable.

The optimiser is TRL's **RLOOTrainer** (REINFORCE leave-one-out, Ahmadian et al. 2024), not its
GRPOTrainer, because RLOO's KL term is the one our PPO and the overoptimisation literature use
(Gao et al.; Coste et al.): the first-order estimator k1 = log π(y|x) − log π_ref(y|x), summed over
the response's tokens and subtracted from the reward, ``r − β·KL``, so ``beta`` means what
``ppo.kl_coef`` means, and the KL that TRL logs is measured on the very completions that were
scored, before the update. GRPOTrainer instead adds the k3 estimator (exp(Δ) − Δ − 1, Δ = log
π_ref − log π) to the per-token *loss*, not to the reward, logs it from the loss pass over each
minibatch, and by default divides each group's advantages by their standard deviation, which
rescales the rewards whose aggregation (min, mean, UWO) is what the study compares. RLOO keeps the reward's scale: the
advantage of a completion is its KL-penalised reward minus the mean of the other completions of
its prompt (``num_generations`` of them per prompt).

KL: TRL logs ``kl`` as the mean of k1 over every completion token of the batch (nats per token,
policy before the update against the SFT reference). Multiplied by the mean completion length
of the same batch it is exactly the mean over completions of the summed k1, the quantity TRL
subtracts from the reward and the ``kl`` column of our PPO table (nats per response); the table
keeps both (``kl``, ``kl_per_token``).

The reward TRL optimises is the public `study.trl_reward.RewardFunction` (what `study.reward_fn` returns)
over the variant's reward checkpoint: it tokenises each prompt as TRL does, appends the sampled
completion ids (through the end-of-sequence token, as TRL cut them), normalises per head with the
normaliser fitted as the PPO stage fits it and aggregates with `study.aggregate.aggregate`; the
gold control goes through `make_reward_callable`, the same layout over any reward function. Gold is computed on the same completions for the table only; it
is never returned to TRL unless the variant is ``gold``.

One fix to TRL's forward passes: TRL scores left-padded prompt + completion batches without
``position_ids``, so a model with absolute positions (GPT-2, our policy) numbers a padded row's
positions from the padding, while ``generate`` sampled it with positions counted from the first
real token. `count_positions_from_first_token` adds the position ids that ``generate`` used to
every call without them (policy and reference), so the log-probabilities TRL optimises and the
KL it logs belong to the distribution that sampled the completions.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from transformers.trainer_callback import PrinterCallback

from study.aggregate import aggregate
from study.config import ConfigError, Params
from study.config.policy import RLOOConfig
from study.device import Placement, resolve
from study.generation import format_queries, left_pad
from study.hf import load_bundle
from study.hub import load_tokenizer, make_gold
from study.io import atomic_path, load_prompts, require
from study.optim import warmup_cosine
from study.proxy import (
    HeadNormaliser,
    RewardFn,
    Scored,
    _seed,
    fit_normaliser,
    gold_reward_fn,
    proxy_reward_fn,
    variant_spec,
)
from study.reward_models import right_pad
from study.rloo_table import (
    RewardCall,
    StepTable,
    count_positions_from_first_token,
    table_call,
    untemplate,
)
from study.trl_reward import RewardFunction

# Seed offsets of this driver's random streams; 1 is the PPO stage's normaliser stream, reused so
# that both optimisers of a (variant, seed) see the same normalised reward.
SEED_NORMALISER, SEED_TRL = 1, 6


# ----------------------------------------------------------------------------- reward callable


TRLRewardFunc = Callable[..., list[float]]
"""TRL's reward-function signature: (prompts, completions, completion_ids, **kwargs) -> floats."""


def make_reward_callable(
    reward_fn: RewardFn,
    normaliser: HeadNormaliser,
    method: str,
    uwo_lambda: float,
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    on_batch: Callable[[RewardCall], None] | None = None,
    name: str = "proxy",
) -> TRLRewardFunc:
    """A TRL reward function over `reward_fn`: one aggregated, normalised reward per completion.

    TRL calls it as ``f(prompts=..., completions=..., completion_ids=..., trainer_state=..., ...)``
    with the dataset's ``prompt`` column (queries made by `template`) and each completion's token
    ids through its EOS. Each query is tokenised as TRL tokenised it for generation and left-padded,
    the completion ids follow, then padding: the layout of a PPO rollout (`study.proxy.Scored`).
    Returns ``aggregate(normaliser(reward_fn(batch)), method)`` as Python floats; `on_batch`, if
    given, sees every call (the driver scores gold there). ``__name__`` is `name`, which TRL logs
    as ``rewards/<name>/mean``.
    """
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    eos_id = tokenizer.eos_token_id

    def reward(
        prompts: Sequence[str],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        trainer_state: Any = None,
        **_: Any,
    ) -> list[float]:
        if not (len(prompts) == len(completions) == len(completion_ids)):
            raise ValueError(
                f"{len(prompts)} prompts, {len(completions)} completions, "
                f"{len(completion_ids)} completion_ids"
            )
        q_ids, q_mask = left_pad(tokenizer(list(prompts))["input_ids"], pad_id)  # (B, Tq)
        r_ids, r_mask = right_pad([list(c) for c in completion_ids], pad_id)  # (B, T)
        finished = np.array([len(c) > 0 and c[-1] == eos_id for c in completion_ids])
        texts = [
            tokenizer.decode(list(c), skip_special_tokens=True).strip() for c in completion_ids
        ]
        batch = Scored(
            ids=torch.cat([q_ids, r_ids], 1),  # (B, Tq + T)
            mask=torch.cat([q_mask, r_mask], 1),
            prompts=[untemplate(p, template) for p in prompts],
            texts=texts,
            finished=finished,
        )
        t0 = time.perf_counter()
        with torch.no_grad():
            heads = normaliser(reward_fn(batch))  # (K, B)
            scores = aggregate(heads, method, uwo_lambda)  # (B,)
        seconds = time.perf_counter() - t0
        if not torch.isfinite(scores).all():
            raise FloatingPointError(f"reward {name}: non-finite rewards {scores.tolist()}")
        if on_batch is not None:
            step = getattr(trainer_state, "global_step", None)
            on_batch(RewardCall(batch, heads, scores, r_mask.sum(1), step, seconds))
        return [float(s) for s in scores]

    reward.__name__ = reward.__qualname__ = name
    return reward


# ---------------------------------------------------------------------------------------- driver


def _placement(params: Params) -> Placement:
    """The placement, where TRL can honour it: TRL trains on cuda:0 and refuses several visible
    GPUs, whatever the placement says."""
    placement = resolve(params.placement)
    if placement.device.type == "cuda" and (
        torch.cuda.device_count() != 1 or placement.device.index not in (None, 0)
    ):
        raise ConfigError(
            f"placement.device: {str(placement.device)!r}, but RLOO (TRL) runs on the one CUDA "
            f"device it sees and this process sees {torch.cuda.device_count()}: show it one "
            "(CUDA_VISIBLE_DEVICES=<index>, as Ray does for a stage) and use placement.device: cuda"
        )
    return placement


def _reward(
    params: Params, variant: str, seed: int, rm_root: str | Path, tokenizer: Any, gold: Any,
    placement: Placement,
) -> tuple[Any, Any]:  # fmt: skip
    """The reward function (K, B) of `variant`, and the reward bundle it reads (None for gold):
    the checkpoint of stage rm, read as any user reads it (`study.reward_fn`)."""
    family = variant_spec(variant)[0]
    if family == "gold":
        return gold_reward_fn(gold), None
    rm_dir = require(Path(rm_root) / family / f"seed{seed}", f"stage rm@{family}-{seed}")
    bundle = load_bundle(
        rm_dir, vectorize=params.reward.vectorize_ensemble(placement.device.type == "cuda")
    )
    placement.put(bundle.model)
    if bundle.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"RLOO: the reward model at {rm_dir} reads another vocabulary than the policy; "
            "the normaliser is fitted on the policy's tokens, so RLOO needs a reward model "
            "on the policy's tokenizer (reward.encoder: policy or scratch)"
        )
    reward_fn = proxy_reward_fn(bundle.model, bundle.tokenizer, tokenizer, params.reward.max_length)
    return reward_fn, bundle


def _trl_config(
    config_class: Any, params: Params, cfg: RLOOConfig, seed: int, run_dir: Path,
    placement: Placement, total: int,
) -> Any:  # fmt: skip
    """TRL's RLOO arguments: `total` optimiser steps on the placement's device and precision, the
    rollout and loss of `cfg`, sampling as `params.sampling`, no saving, no evaluation."""
    sampling = params.sampling
    return config_class(
        output_dir=str(run_dir / "trl"),
        report_to=[],
        push_to_hub=False,
        use_cpu=placement.device.type == "cpu",
        bf16=placement.dtype == torch.bfloat16,
        fp16=False,
        # TRL 1.16 turns it on by default (as gradient_checkpointing): the placement decides
        activation_checkpointing=placement.gradient_checkpointing,
        seed=_seed(params.run.seed, seed, SEED_TRL) % 2**31,
        max_steps=total,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=cfg.num_generations,
        num_iterations=cfg.num_iterations,
        max_completion_length=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        max_grad_norm=cfg.grad_clip,
        normalize_advantages=cfg.normalize_advantages,
        disable_dropout=True,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        log_level="warning",
    )


def _trl_reward(
    params: Params, variant: str, reward_fn: Any, bundle: Any, normaliser: HeadNormaliser,
    tokenizer: Any, table: StepTable,
) -> Any:  # fmt: skip
    """The reward TRL optimises, each call logged into `table`: for a reward model, the public
    reward function (`study.reward_fn`'s) with the normaliser fitted on SFT samples; for the gold
    control, the normalised gold."""
    method, template = variant_spec(variant)[1], params.sources.prompt_template
    if bundle is None:  # the gold control: no reward model to load
        return make_reward_callable(
            reward_fn, normaliser, method, params.reward.uwo_lambda, tokenizer, template,
            on_batch=table.on_batch, name=variant,
        )  # fmt: skip
    bundle.normaliser = (normaliser.mean, normaliser.std)
    reward = RewardFunction(
        bundle, method, True, params.reward.uwo_lambda, name=variant, policy_tokenizer=tokenizer
    )
    reward.on_call = lambda c: table.on_batch(table_call(c, tokenizer, template))
    return reward


def train_rloo(
    params: Params,
    variant: str,
    seed: int,
    world_dir: str | Path,
    rm_root: str | Path,
    run_dir: str | Path,
    progress: bool = True,
    steps: int | None = None,
    cfg: RLOOConfig | None = None,
) -> pd.DataFrame:
    """RLOO (TRL) of the SFT policy against `variant`'s reward; returns the per-rollout table.

    Columns: variant, seed, step, kl (nats per response), kl_per_token (TRL's log), proxy, head_std,
    proxy_head<h>, gold, gold_<component>, response_length, finished, entropy, grad_norm, lr,
    step_seconds, score_seconds. `cfg` defaults to ``params.rloo``; `steps` overrides
    ``cfg.steps``. The trained policy and its tokenizer are saved to ``run_dir/policy``; TRL's
    output directory is ``run_dir/trl``. No resuming: a killed run starts again.
    """
    from datasets import Dataset  # imported here: TRL and datasets take seconds to import
    from trl import RLOOConfig as TRLRLOOConfig
    from trl import RLOOTrainer

    if cfg is None:
        cfg = params.rloo
    if steps is not None:
        cfg = dataclasses.replace(cfg, steps=steps, warmup_steps=min(cfg.warmup_steps, steps - 1))
    torch.set_num_threads(params.run.threads)
    placement = _placement(params)
    world, run_dir = Path(world_dir), Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(str(world / "policy"), "world policy")
    policy = AutoModelForCausalLM.from_pretrained(world / "policy", **placement.policy_kwargs())
    placement.put(policy)
    gold = make_gold(params)
    reward_fn, bundle = _reward(params, variant, seed, rm_root, tokenizer, gold, placement)
    rl = load_prompts(world, "rl")
    template, sampling = params.sources.prompt_template, params.sampling

    # 1. per-head normalisation on SFT samples, exactly as the PPO stage fits it
    # outside autocast: TRL scores the rewards it normalises in float32
    normaliser = fit_normaliser(
        reward_fn, policy.eval(), tokenizer, rl, template, sampling, params.ppo.n_norm_samples,
        _seed(params.run.seed, seed, SEED_NORMALISER), params.ppo.normalise,
    )  # fmt: skip

    # 2. the reward TRL optimises, and the table that logs gold beside it
    total = cfg.steps * cfg.num_iterations  # optimiser steps

    def lr_at(opt_step: int) -> float:
        return warmup_cosine(opt_step, total, cfg.warmup_steps, cfg.lr)

    table = StepTable(variant, seed, gold, lr_at, cfg.steps, progress)
    reward = _trl_reward(params, variant, reward_fn, bundle, normaliser, tokenizer, table)

    # 3. TRL's RLOO on the placement's device and precision: one rollout of prompts_per_step x
    # num_generations completions per num_iterations optimiser steps; Adam and the warm-up +
    # cosine schedule of our PPO
    args = _trl_config(TRLRLOOConfig, params, cfg, seed, run_dir, placement, total)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s) / cfg.lr)
    dataset = Dataset.from_dict({"prompt": format_queries(rl, template)})
    trainer = RLOOTrainer(model=policy.train(), reward_funcs=reward, args=args,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[table],
                          optimizers=(opt, schedule))  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; `table` shows a bar
    for model in (trainer.model, trainer.ref_model):
        count_positions_from_first_token(model)
    with warnings.catch_warnings():  # TRL 1.16 reads an attribute that transformers 5 deprecates
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        trainer.train()

    # 4. the trained policy, for evaluation by later stages
    with atomic_path(run_dir / "policy") as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    rows = [r for r in table.rows if not math.isnan(r["kl"])]
    if len(rows) != cfg.steps:
        raise RuntimeError(f"RLOO: {len(rows)} complete rows for {cfg.steps} rollouts")
    return pd.DataFrame(rows)
