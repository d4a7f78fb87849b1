"""PPO against an aggregated proxy reward: the driver of a run over the step of `study.ppo_step`.

`run_ppo_stage` is one cell of the optimisation grid (a variant of the reward, a seed), run by the
`ppo_*` DVC stages through `notebooks/03_optimise.ipynb`. A run resumes from its checkpoint
(`study.checkpoint`) when one made by the same parameters, code and inputs exists.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from study import data_parallel
from study.actor_critic import ActorCritic, policy_forward
from study.aggregate import aggregate, head_correlation
from study.checkpoint import load_checkpoint, run_fingerprint, tables_from_bytes, tables_to_bytes
from study.config import Params
from study.config.world import SamplingConfig
from study.device import checkpoint_activations, on, resolve
from study.generation import format_queries, sample
from study.hub import load_tokenizer, make_gold
from study.io import atomic_path, load_prompts, provenance, write_csv, write_json, write_table
from study.ppo import AdaptiveKLController, kl_k3, masked_mean
from study.ppo_step import (
    Rollout,
    TimedReward,
    make_optimizer,
    make_rollout,
    ppo_update,
    rollout_checksum,
    set_learning_rates,
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


class _PPORun:
    """One PPO run's models, reward, optimiser and tables so far, resumed from its checkpoint
    when one made by the same parameters, variant, seed, code and inputs exists; and the three
    things a run does: evaluate on the held-out prompts, take a step, save a checkpoint."""

    def __init__(self, params: Params, variant: str, seed: int, world_dir: str | Path,
                 rm_root: str | Path, run_dir: str | Path) -> None:  # fmt: skip
        cfg = self.cfg = params.ppo
        self.params, self.variant, self.seed = params, variant, seed
        placement = self.placement = resolve(params.placement)
        world = Path(world_dir)
        self.rl = load_prompts(world, "rl")  # the prompts are checked before any model loads
        self.held_out = load_prompts(world, "eval")
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = self.tokenizer = load_tokenizer(str(world / "policy"), "world policy")
        self.policy = AutoModelForCausalLM.from_pretrained(
            world / "policy", **placement.policy_kwargs()
        )
        ref = AutoModelForCausalLM.from_pretrained(world / "policy", **placement.policy_kwargs())
        self.ref = ref = ref.eval().requires_grad_(False)
        self.ac = placement.put(ActorCritic(self.policy, cfg.value_model).eval())
        placement.put(ref)
        if placement.gradient_checkpointing:
            checkpoint_activations(self.ac)
        self.gold = make_gold(params)
        self.reward_fn, self.method = variant_reward_fn(params, variant, seed, tokenizer, rm_root,
                                                        self.gold, placement)  # fmt: skip
        self.optimizer = make_optimizer(self.ac, cfg.lr, cfg.value_lr)
        self.kl_ctl = (
            AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
            if cfg.adaptive_kl
            else None
        )
        self.rows: list[dict] = []
        self.evals: list[dict] = []
        self.eval_samples: list[pd.DataFrame] = []
        self.start = 0
        self.ckpt = run_dir / "checkpoint.pt"
        inputs = [world / "policy"]
        if variant_spec(variant)[0] != "gold":
            inputs.append(Path(rm_root) / variant_spec(variant)[0] / f"seed{seed}")
        self.fingerprint = run_fingerprint(params, variant, seed, inputs)
        state = load_checkpoint(self.ckpt, self.fingerprint)
        if state is not None:
            self.ac.load_state_dict(state["actor_critic"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.kl_ctl is not None:
                self.kl_ctl.load_state_dict(state["kl_ctl"])
            self.normaliser = HeadNormaliser(state["norm_mean"], state["norm_std"])
            tables = tables_from_bytes(state["tables"])
            self.rows = tables["rows"].to_dict("records")
            self.evals = tables["evals"].to_dict("records")
            self.eval_samples = [g for _, g in tables["eval_samples"].groupby("step", sort=True)]
            self.start = int(state["step"]) + 1
        else:
            with placement.autocast():
                self.normaliser = fit_normaliser(
                    self.reward_fn, ref, tokenizer, self.rl, params.sources.prompt_template,
                    params.sampling, cfg.n_norm_samples, self._seed(1), cfg.normalise,
                )  # fmt: skip

    def _seed(self, *stream: int) -> int:
        return _seed(self.params.run.seed, self.seed, *stream)

    def evaluate(self, step: int) -> None:
        """The held-out evaluation after `step` steps, appended to the tables; a non-finite KL,
        proxy or gold stops the run."""
        with self.placement.autocast():
            row, per_sample = evaluate_policy(
                self.policy, self.ref, self.tokenizer, self.reward_fn, self.normaliser, self.gold,
                self.held_out, self.params.sources.prompt_template, self.params.sampling,
                self.method, self.params.reward.uwo_lambda, self._seed(4),
            )  # fmt: skip
        bad = {k: v for k, v in row.items() if isinstance(v, float) and not np.isfinite(v)
               and k in ("kl", "kl_k3", "proxy", "gold")}  # fmt: skip
        if bad:
            raise FloatingPointError(
                f"PPO held-out evaluation at step {step}: {', '.join(f'{k} = {v}' for k, v in bad.items())}; "
                f"nothing is written, and the last good checkpoint ({self.ckpt}) is kept"
            )
        self.evals.append({"variant": self.variant, "seed": self.seed, "step": step, **row})
        self.eval_samples.append(per_sample.assign(variant=self.variant, seed=self.seed, step=step))

    def save(self, step: int) -> None:
        """The checkpoint after `step`: weights, optimiser, KL controller, normaliser, tables."""
        tables = tables_to_bytes(
            rows=pd.DataFrame(self.rows), evals=pd.DataFrame(self.evals),
            eval_samples=pd.concat(self.eval_samples, ignore_index=True),
        )  # fmt: skip
        state = {
            "step": step, "actor_critic": self.ac.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict() if self.kl_ctl is not None else None,
            "norm_mean": self.normaliser.mean, "norm_std": self.normaliser.std, "tables": tables,
            "fingerprint": self.fingerprint,
        }  # fmt: skip
        with atomic_path(self.ckpt) as tmp:
            torch.save(state, tmp)

    def step(self, step: int) -> dict[str, Any]:
        """PPO step `step`, its row appended to the log and returned."""
        cfg, sampling, placement = self.cfg, self.params.sampling, self.placement
        t0 = time.perf_counter()
        lr = set_learning_rates(self.optimizer, step, cfg.steps, cfg.warmup_steps)
        beta = self.kl_ctl.value if self.kl_ctl is not None else cfg.kl_coef
        # 1-2. sample a batch of prompts and responses, cut at EOS
        rng = np.random.default_rng(self._seed(2, step))
        batch = [self.rl[i] for i in rng.integers(len(self.rl), size=cfg.batch_size)]
        queries = format_queries(batch, self.params.sources.prompt_template)
        samples = sample(self.policy, self.tokenizer, queries, sampling, self._seed(3, step),
                         decoder="auto", placement=placement)  # fmt: skip
        t_sampled = time.perf_counter()
        timer = TimedReward(self.reward_fn)
        try:
            # 3-6. score, log-probs, values, KL shaping, GAE
            with placement.autocast():
                ro = make_rollout(
                    self.ac, self.ref, timer, self.normaliser, samples, batch, self.method,
                    self.params.reward.uwo_lambda, beta, cfg.gamma, cfg.lam, sampling.temperature,
                )  # fmt: skip
            if data_parallel.current() is not None:  # every process must hold the same rollout
                data_parallel.current().agree(rollout_checksum(ro), f"the rollout of step {step}")
            # 7. PPO epochs
            stats = ppo_update(
                self.ac, self.optimizer, ro, cfg.ppo_epochs, cfg.minibatches, cfg.cliprange,
                cfg.cliprange_value, cfg.vf_coef, cfg.grad_clip, cfg.whiten_advantages,
                sampling.temperature, torch.Generator().manual_seed(self._seed(5, step)),
                cfg.ent_coef, placement,
            )  # fmt: skip
        except FloatingPointError as e:
            raise FloatingPointError(
                f"PPO step {step}: {e}; the last good checkpoint ({self.ckpt}) is kept"
            ) from None
        gold = self.gold.score(batch, ro.texts, ro.finished)
        row = _log_row(self.variant, self.seed, step, ro, gold, batch)
        _check_finite(step, kl=row["kl"], proxy=row["proxy"], gold=row["gold"], **stats)
        if self.kl_ctl is not None:
            self.kl_ctl.update(row["kl"], cfg.batch_size)
        placement.synchronize()
        seconds = time.perf_counter() - t0
        row.update(stats, kl_coef=beta, lr=lr, step_seconds=seconds,
                   sample_seconds=t_sampled - t0, score_seconds=timer.seconds)  # fmt: skip
        self.rows.append(row)
        return row

    def result(self) -> PPOResult:
        return PPOResult(pd.DataFrame(self.rows), pd.DataFrame(self.evals),
                         pd.concat(self.eval_samples, ignore_index=True), self.normaliser,
                         self.policy)  # fmt: skip


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
    run = _PPORun(params, variant, seed, world_dir, rm_root, run_dir)
    if run.start == 0:
        run.evaluate(0)
    bar = tqdm(range(run.start, cfg.steps), desc=f"ppo {variant} s{seed}", disable=not progress,
               mininterval=2.0)  # fmt: skip
    for done, step in enumerate(bar, start=1):
        row = run.step(step)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            run.evaluate(step + 1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            run.save(step)
        bar.set_postfix(kl=f"{row['kl']:.2f}", proxy=f"{row['proxy']:.2f}",
                        gold=f"{row['gold']:.2f}", refresh=False)  # fmt: skip
        if stop_after is not None and done >= stop_after:
            break
    return run.result()


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
