"""Best-of-n against every reward variant: SFT samples of held-out prompts scored by gold and by
every proxy (each family, each seed), and the curves of `study.bon` drawn from those scores.

Sampling and scoring happen once (`score_bon_samples`); a curve for any variant is a pure function
of the stored scores (`bon_curves`), so the report can recompute them without a model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from study.aggregate import METHODS, aggregate, head_correlation
from study.bon import bon_curve
from study.config import Params
from study.device import resolve
from study.generation import format_queries, sample
from study.hub import load_tokenizer, make_gold
from study.io import load_prompts, provenance, require, write_csv, write_json, write_table
from study.proxy import Scored, family_reward_fn, variant_spec


def bon_ns(n_samples: int) -> list[int]:
    """n = 1, 2, 4, ... up to N, and N itself: the points of a best-of-n curve."""
    ns = [2**i for i in range(int(np.log2(n_samples)) + 1)]
    return ns if ns[-1] == n_samples else [*ns, n_samples]


def head_columns(frame: pd.DataFrame) -> list[str]:
    return sorted((c for c in frame.columns if c.startswith("head")), key=lambda c: int(c[4:]))


def score_bon_samples(
    params: Params,
    world_dir: str | Path,
    rm_root: str | Path,
    families: Sequence[str],
    seeds: Sequence[int],
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Sample N responses for each of P held-out prompts from the SFT policy; score them.

    Returns (samples, proxy_scores, info): `samples` has one row per response (prompt_id,
    sample_id, prompt, response, finished, gold and its components); `proxy_scores` one row per
    (family, seed, response) with the raw (unnormalised) reward of every head in `head0..`.
    """
    cfg = params.bon
    torch.set_num_threads(params.run.threads)
    placement = resolve(params.placement)
    world = Path(world_dir)
    held_out = load_prompts(world, "eval")
    if len(held_out) < cfg.n_prompts:
        raise ValueError(
            f"bon.n_prompts = {cfg.n_prompts} but the world has only {len(held_out)} held-out "
            "prompts (world.n_eval_prompts)"
        )
    held_out = held_out[: cfg.n_prompts]
    tokenizer = load_tokenizer(str(world / "policy"), "world policy")
    policy = AutoModelForCausalLM.from_pretrained(
        require(world / "policy", "the world stage"), **placement.policy_kwargs()
    )
    placement.put(policy)
    repeated = [p for p in held_out for _ in range(cfg.n_samples)]  # prompt-major, (P * N,)
    t0 = time.perf_counter()
    s = sample(
        policy.eval(),
        tokenizer,
        format_queries(repeated, params.sources.prompt_template),
        params.sampling,
        seed=int(np.random.SeedSequence([params.run.seed, 7]).generate_state(1)[0]),
        progress=progress,
        decoder="auto",
        placement=placement,
    )
    sample_seconds = time.perf_counter() - t0
    samples = _sample_table(cfg.n_prompts, cfg.n_samples, repeated, s, make_gold(params))
    ids = torch.cat([s.query_ids, s.response_ids], 1)
    mask = torch.cat([s.query_mask, s.response_mask], 1)
    width = int(s.query_ids.shape[1] + s.response_mask.sum(1).max())
    every = Scored(ids[:, :width], mask[:, :width], repeated, s.texts, s.finished)
    frames, score_seconds = [], {}
    batch = params.reward.eval_batch_size
    for family in families:
        for seed in seeds:
            reward_fn = family_reward_fn(params, family, seed, tokenizer, rm_root, placement)
            t0 = time.perf_counter()
            heads = _score(reward_fn, every, batch, placement, f"scoring {family} s{seed}",
                           progress)  # fmt: skip
            score_seconds[f"{family}/seed{seed}"] = time.perf_counter() - t0
            frame = pd.DataFrame({f"head{h}": heads[h] for h in range(heads.shape[0])})
            frames.append(
                frame.assign(
                    family=family,
                    seed=seed,
                    prompt_id=samples["prompt_id"],
                    sample_id=samples["sample_id"],
                )
            )
    info = {
        "n_prompts": cfg.n_prompts,
        "n_samples": cfg.n_samples,
        "responses": len(samples),
        "sample_seconds": sample_seconds,
        "score_seconds": score_seconds,
        "responses_per_second_sampling": len(samples) / sample_seconds,
    }
    return samples, pd.concat(frames, ignore_index=True), info


def _sample_table(
    n_prompts: int, n_samples: int, repeated: list[str], s: Any, gold: Any
) -> pd.DataFrame:
    """One row per response, prompt-major: its prompt and sample ids, text, EOS flag and gold
    score by component."""
    g = gold.score(repeated, s.texts, s.finished)
    return pd.DataFrame(
        {
            "prompt_id": np.repeat(np.arange(n_prompts), n_samples),
            "sample_id": np.tile(np.arange(n_samples), n_prompts),
            "prompt": repeated,
            "response": s.texts,
            "finished": np.asarray(s.finished, dtype=bool),
            "gold": np.asarray(g.total, dtype=np.float64),
            **{f"gold_{k}": np.asarray(v, dtype=np.float64) for k, v in g.contributions.items()},
        }
    )


def _score(
    reward_fn: Any, every: Scored, batch: int, placement: Any, desc: str, progress: bool
) -> np.ndarray:
    """Every head's raw reward (K, B) of the responses of `every`, `batch` at a time."""
    out = []
    with torch.no_grad(), placement.autocast():
        for i in tqdm(range(0, len(every.prompts), batch), desc=desc, disable=not progress,
                      leave=False):  # fmt: skip
            sl = slice(i, i + batch)
            out.append(reward_fn(Scored(every.ids[sl], every.mask[sl], every.prompts[sl],
                                        every.texts[sl], every.finished[sl])))  # fmt: skip
    return torch.cat(out, dim=1).numpy()


def bon_variants(families: Sequence[str]) -> list[str]:
    """The variants best-of-n draws for these reward-model arms: every aggregation but the max of
    each multi-head or ensemble arm (its scores are computed once), the single model and gold."""
    out = ["single"] if "single" in families else []
    for arm in families:
        if arm != "single":
            out += [f"{arm}_{m}" for m in METHODS if m != "max"]
    return [*out, "gold"]


def arm_heads(frame: pd.DataFrame, normalise: str) -> np.ndarray:
    """The heads' rewards (K, P * N) of one arm and seed's proxy scores, prompt-major, z-scored
    per head over all the (SFT) responses when `normalise` is 'sft_zscore' (as PPO does)."""
    frame = frame.sort_values(["prompt_id", "sample_id"])
    heads = frame[head_columns(frame)].dropna(axis=1, how="all").to_numpy().T  # (K, P * N)
    if normalise == "sft_zscore":
        heads = (heads - heads.mean(1, keepdims=True)) / heads.std(1, ddof=1, keepdims=True)
    return heads


def variant_scores(
    proxy_scores: pd.DataFrame, variant: str, seed: int, normalise: str, uwo_lambda: float
) -> np.ndarray:
    """The aggregated proxy score of every response (prompt-major order) under `variant`.

    Heads are z-scored over all the (SFT) responses first when `normalise` is 'sft_zscore', as PPO
    does with its SFT samples, so that min, mean and UWO compare heads on one scale.
    """
    family, method = variant_spec(variant)
    frame = proxy_scores[(proxy_scores["family"] == family) & (proxy_scores["seed"] == seed)]
    if frame.empty:
        raise KeyError(f"no proxy scores of {family} seed {seed}")
    return aggregate(torch.as_tensor(arm_heads(frame, normalise)), method, uwo_lambda).numpy()


TOP_FRACTION = 1 / 16  # the top of each prompt's candidates: where a best-of-16 pick comes from


def candidate_head_diversity(
    proxy_scores: pd.DataFrame, top_fraction: float, normalise: str, uwo_lambda: float
) -> pd.DataFrame:
    """How alike the heads score best-of-n candidates, overall and where selection pushes.

    For every multi-head or ensemble arm and seed: the mean pairwise correlation of the heads
    (`study.aggregate.head_correlation`) and their spread (std over heads, mean over responses)
    over all candidates ('all'), and over each prompt's top `top_fraction` of candidates by the
    arm's minimum ('top'): the responses a best-of-(1 / top_fraction) pick comes from.
    """
    rows = []
    for (family, seed), frame in proxy_scores.groupby(["family", "seed"], sort=False):
        heads = arm_heads(frame, normalise)  # (K, P * N)
        if heads.shape[0] < 2:
            continue
        h = torch.as_tensor(heads)
        p = frame["prompt_id"].nunique()
        score = aggregate(h, "min", uwo_lambda).numpy().reshape(p, -1)  # (P, N)
        n_top = max(2, round(top_fraction * score.shape[1]))
        top = np.argsort(-score, axis=1)[:, :n_top] + np.arange(p)[:, None] * score.shape[1]
        for subset, idx in (("all", slice(None)), ("top", top.reshape(-1))):
            sub = h[:, idx]
            rows.append({"family": family, "seed": seed, "subset": subset, "k": h.shape[0],
                         "head_corr": head_correlation(sub),
                         "head_std": float(sub.std(0, unbiased=False).mean())})  # fmt: skip
    return pd.DataFrame(rows)


def bon_curves(
    samples: pd.DataFrame,
    proxy_scores: pd.DataFrame,
    variants: Sequence[str],
    seeds: Sequence[int],
    ns: Sequence[int],
    normalise: str,
    uwo_lambda: float,
) -> pd.DataFrame:
    """Best-of-n curves of every variant and seed: (variant, seed, n, kl, gold, gold_se, proxy,
    proxy_se, and the expected gold components of the pick). 'gold' selects by gold itself."""
    samples = samples.sort_values(["prompt_id", "sample_id"])
    p = samples["prompt_id"].nunique()
    gold = samples["gold"].to_numpy().reshape(p, -1)  # (P, N)
    components = [c for c in samples.columns if c.startswith("gold_")]
    rows = []
    for variant in variants:
        for seed in seeds if variant != "gold" else seeds[:1]:
            if variant == "gold":
                proxy = gold
            else:
                proxy = variant_scores(proxy_scores, variant, seed, normalise, uwo_lambda)
                proxy = proxy.reshape(p, -1)
            curve = bon_curve(proxy, gold, ns).assign(variant=variant, seed=seed)
            for c in components:
                comp = samples[c].to_numpy().reshape(p, -1)
                curve[c] = bon_curve(proxy, comp, ns)["gold"].to_numpy()
            rows.append(curve)
    out = pd.concat(rows, ignore_index=True)
    return out[["variant", "seed", *[c for c in out.columns if c not in ("variant", "seed")]]]


def run_bon_stage(
    params: Params,
    world_dir: str | Path,
    rm_root: str | Path,
    results_dir: str | Path,
    families: Sequence[str],
    seeds: Sequence[int],
    progress: bool = True,
) -> dict[str, Any]:
    """Sample, score and write `samples.parquet`, `proxy_scores.parquet`, `curves.parquet` (and
    CSV) and `info.json` under `results_dir`; returns the info."""
    variants = bon_variants(families)
    samples, proxy_scores, info = score_bon_samples(
        params, world_dir, rm_root, families, seeds, progress
    )
    curves = bon_curves(
        samples, proxy_scores, variants, list(seeds), bon_ns(params.bon.n_samples),
        params.ppo.normalise, params.reward.uwo_lambda,
    )  # fmt: skip
    prov = provenance(params)
    out = Path(results_dir)
    write_table(out / "samples.parquet", samples, prov)
    write_table(out / "proxy_scores.parquet", proxy_scores, prov)
    write_table(out / "curves.parquet", curves, prov)
    write_csv(out / "curves.csv", curves)
    write_json(out / "info.json", info)
    return info
